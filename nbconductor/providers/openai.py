"""``openai:MODEL`` and ``openai-compatible:MODEL`` — Chat Completions (or the Responses API,
for an alias with ``api = "responses"``: `providers._responses`) and Images through the
official async SDK.

Chat calls always stream (with ``stream_options.include_usage`` so usage still arrives):
text deltas reach `Request.on_text`, and the read timeout catches a stream that stalls.
The SDK's own retries are off; nbconductor's ladder owns retries. ``openai:`` reads
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` as the SDK does. ``openai-compatible:`` (Ollama,
vLLM, LM Studio, …) needs an alias with ``base_url`` and sends the key named by the alias's
``api_key_env`` — never ``OPENAI_API_KEY``, which must not leak to another server — or a
placeholder when the server needs none.

``--schema`` uses ``response_format`` ``json_schema`` (strict when the schema allows it),
``--json`` uses ``json_object``. Usage is normalised to Anthropic's convention:
``input_tokens`` excludes cached prompt tokens, which are counted in ``cache_read_tokens``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from typing import Any

from .._errors import AuthError, ProviderError, RequestError, TransportError, missing_dependency
from .._redact import redact
from .._tools import ToolCall, Turn, run_tool_loop
from .._types import Request, Response, Usage
from . import _responses
from ._base import Provider
from ._batch import batch_body
from ._common import (
    LoopClients,
    final_response,
    guarded,
    http_client,
    output_error,
    strict_schema,
)
from ._openai_batch import OpenAIBatches
from ._structured import downgrade, estimate_tokens, mode_for, refused, schema_instruction

JSON_INSTRUCTION = "Respond with a single JSON object only."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class OpenAIProvider(OpenAIBatches, Provider):
    name = "openai"
    supports_batch = True
    #: the request field that caps the answer's length
    max_tokens_param = "max_completion_tokens"

    def __init__(self, ref, *, timeout: float = 600.0, read_timeout: float = 120.0):
        super().__init__(ref, timeout=timeout, read_timeout=read_timeout)
        self.sdk = missing_dependency("openai", "openai", f"`{self.name}:` models")
        self.key_env = ref.api_key_env or "OPENAI_API_KEY"
        self.responses = getattr(ref, "api", None) == "responses"  # else Chat Completions
        self._clients = LoopClients(self._new_client)

    @classmethod
    def warm(cls) -> None:
        with contextlib.suppress(Exception):
            import openai

            # a first client loads the HTTP stack (httpcore, h11, anyio); it opens no connection
            openai.AsyncOpenAI(api_key="unused", max_retries=0)

    # clients ---------------------------------------------------------------------------------
    def client_options(self) -> dict[str, Any]:
        """``api_key`` / ``base_url`` for the client; raises `AuthError` when the key is missing."""
        key = os.environ.get(self.key_env)
        if not key:
            raise AuthError(
                f"{self.key_env} is not set: export {self.key_env}=sk-... before starting Jupyter "
                "(nbconductor reads keys from the environment only)",
                provider=self.name,
                model=self.ref.model,
            )
        options: dict[str, Any] = {"api_key": key}
        if self.ref.base_url:
            options["base_url"] = self.ref.base_url
        return options

    def _new_client(self) -> Any:
        timeout = self.sdk.Timeout(
            self.timeout, connect=min(self.timeout, 30.0), read=self.read_timeout
        )
        options = self.client_options()
        shared = http_client(self.sdk)
        if shared is not None:
            options["http_client"] = shared
        return self.sdk.AsyncOpenAI(max_retries=0, timeout=timeout, **options)

    async def aclose(self) -> None:
        await self._clients.aclose()

    def _guard(self, call: Any, model: str) -> Any:
        return guarded(
            call,
            self.sdk,
            provider=self.name,
            model=model,
            key_env=self.key_env,
            timeout=self.timeout if self.batch is None else None,  # a batch may take hours
            read_timeout=self.read_timeout,
        )

    # chat ------------------------------------------------------------------------------------
    def params(self, request: Request, mode: str = "json_schema") -> dict:
        """The keyword arguments of ``chat.completions.create`` for ``request`` (without history).

        ``mode``: how structured output is asked for (`_structured.MODES`)."""
        params: dict[str, Any] = {
            "model": request.model or self.ref.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens:
            params[self.max_tokens_param] = request.max_tokens
        if mode == "prompt" and (request.json or request.schema is not None):
            pass  # the prompt asks for JSON (`messages`); the answer is parsed and validated
        elif request.schema is not None and mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        elif request.schema is not None:
            strict = strict_schema(request.schema)
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(request.schema_name),
                    "schema": strict if strict is not None else request.schema,
                    "strict": strict is not None,
                },
            }
        elif request.json:
            params["response_format"] = {"type": "json_object"}
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t["description"],
                        "parameters": t["parameters"],
                    },
                }
                for t in request.tools
            ]
        return params

    def messages(self, request: Request, mode: str = "json_schema") -> list[dict]:
        """System message (context blocks first, so steps sharing them share a cached prefix), user turn."""
        parts = [text for _, text in request.contexts if text.strip()]
        if request.system and request.system.strip():
            parts.append(request.system)
        if request.schema is not None and mode != "json_schema":
            parts.append(schema_instruction(request.schema))  # the server does not take it
        elif request.json and request.schema is None:
            parts.append(JSON_INSTRUCTION)  # JSON mode requires the word JSON in the messages
        system = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
        return system + request.messages()

    async def complete(self, request: Request) -> Response:
        model = request.model or self.ref.model
        structured = request.json or request.schema is not None
        mode = mode_for(self.server, self.ref.structured)
        if request.schema is None and mode == "json_schema":
            mode = "json_object"  # what --json asks for; no schema to probe with
        while True:
            try:
                return await self._guard(self._complete(request, mode), model)
            except TransportError as exc:
                raise _cut_hint(exc, self.ref, getattr(self, "concurrency", 1)) from None
            except ProviderError as exc:
                # A server that refuses this response_format: the next mode, at once (this is
                # the server's capability, not a failed attempt), unless the alias forced it.
                if not structured or self.ref.structured or not refused(exc):
                    raise
                mode = downgrade(self.server, mode, self.server or f"{self.name}:{model}")
                if mode is None:
                    raise

    @property
    def server(self) -> str | None:
        """The base URL calls go to (None: the SDK's default)."""
        return self.ref.base_url or os.environ.get("OPENAI_BASE_URL") or None

    async def _complete(self, request: Request, mode: str = "json_schema") -> Response:
        client = await self._clients.get()
        params = self.params(request, mode)
        messages = self.messages(request, mode)
        if self.responses:
            return await self._complete_responses(client, request, params, messages)
        if request.tools:

            async def send(final: bool) -> Turn:
                extra = {"tool_choice": "none"} if final else {}
                return await self._turn(client, {**params, **extra, "messages": messages}, request)

            def add_results(turn: Turn, results: list) -> None:
                messages.append(
                    {
                        "role": "assistant",
                        "content": turn.text or None,
                        "tool_calls": [
                            {
                                "id": call.id,
                                "type": "function",
                                "function": {
                                    "name": call.name,
                                    "arguments": call.arguments
                                    if isinstance(call.arguments, str)
                                    else json.dumps(call.arguments),
                                },
                            }
                            for call in turn.calls
                        ],
                    }
                )
                for call, text, failed in results:
                    messages.append(
                        {
                            "role": "tool",
                            "tool_call_id": call.id,
                            "content": f"ERROR: {text}" if failed else text,
                        }
                    )

            turn, usage = await run_tool_loop(send, add_results, request.tools, request.max_turns)
        else:
            turn = await self._turn(client, {**params, "messages": messages}, request)
            usage = turn.usage
        truncated = "the token limit" if turn.stop == "length" else None
        return final_response(
            self.name, turn.model or params["model"], request, turn.text, usage, truncated
        )

    async def _complete_responses(
        self, client: Any, request: Request, params: dict, messages: list[dict]
    ) -> Response:
        """The Responses API: the same request as Chat Completions would get, in its form."""
        body = _responses.body(params, messages, self.max_tokens_param)
        if request.tools:

            async def send(final: bool) -> Turn:
                extra = {"tool_choice": "none"} if final else {}
                return await self._response_turn(client, {**body, **extra}, request)

            def add_results(turn: Turn, results: list) -> None:
                _responses.add_tool_results(body["input"], turn, results)

            turn, usage = await run_tool_loop(send, add_results, request.tools, request.max_turns)
        else:
            turn = await self._response_turn(client, body, request)
            usage = turn.usage
        truncated = "the token limit" if turn.stop == "length" else None
        return final_response(
            self.name, turn.model or body["model"], request, turn.text, usage, truncated
        )

    async def _response_turn(self, client: Any, body: dict, request: Request) -> Turn:
        model = body["model"]
        if self.batch is not None:  # --provider-batch: one line of an OpenAI Batch, not streamed
            sent = {k: v for k, v in body.items() if k != "stream"}
            result = await self.batch.call(self.name, self.batch_group(model), sent)
            data = batch_body(result, provider=self.name, model=model, key_env=self.key_env)
        else:
            data = None
            stream = await client.responses.create(**body)
            try:
                async for event in stream:
                    kind = getattr(event, "type", "")
                    if kind == "response.output_text.delta" and request.on_text is not None:
                        request.on_text(redact(event.delta))
                    elif kind in ("response.completed", "response.incomplete", "response.failed"):
                        data = event.response.model_dump(mode="json")
            finally:
                await stream.close()
        failed = _responses.failure(data or {}, provider=self.name, model=model)
        if failed is not None:
            raise failed
        turn, refusal = _responses.turn_of(data or {}, model)
        if refusal or turn.stop == "content_filter":
            raise output_error(
                f"{self.name}:{turn.model} declined to answer: {refusal or 'content filter'}",
                provider=self.name,
                model=turn.model,
                usage=turn.usage,
            )
        if turn.stop is None:
            raise TransportError(
                f"{self.name}:{turn.model} response ended before the answer was complete",
                provider=self.name,
                model=turn.model,
            )
        return turn

    async def _turn(self, client: Any, params: dict, request: Request) -> Turn:
        if self.batch is not None:
            return await self._batch_turn(params)
        on_text = request.on_text
        text: list[str] = []
        refusal: list[str] = []
        calls: dict[int, dict] = {}
        finish = model = usage = None
        stream = await client.chat.completions.create(**params)
        try:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    if delta is not None:
                        if delta.content:
                            text.append(delta.content)
                            if on_text is not None:
                                on_text(redact(delta.content))
                        if getattr(delta, "refusal", None):
                            refusal.append(delta.refusal)
                        for tc in delta.tool_calls or []:
                            slot = calls.setdefault(
                                tc.index, {"id": None, "name": "", "arguments": ""}
                            )
                            slot["id"] = tc.id or slot["id"]
                            if tc.function is not None:
                                slot["name"] = tc.function.name or slot["name"]
                                slot["arguments"] += tc.function.arguments or ""
                    finish = choice.finish_reason or finish
        finally:
            await stream.close()
        model = model or params["model"]
        spent = _usage(usage) if usage is not None else _estimated(params, "".join(text), calls)
        if finish is None:
            raise TransportError(
                f"{self.name}:{model} stream ended before the answer was complete",
                provider=self.name,
                model=model,
            )
        if refusal or finish == "content_filter":
            reason = "".join(refusal) or "content filter"
            raise output_error(
                f"{self.name}:{model} declined to answer: {reason}",
                provider=self.name,
                model=model,
                usage=spent,
            )
        tool_calls = [
            ToolCall(slot["id"] or f"call_{i}", slot["name"], slot["arguments"])
            for i, slot in sorted(calls.items())
        ]
        return Turn("".join(text), tool_calls, spent, model, None, finish)

    async def _batch_turn(self, params: dict) -> Turn:
        """--provider-batch: the turn as one request of an OpenAI Batch (not streamed)."""
        body = {k: v for k, v in params.items() if k not in ("stream", "stream_options")}
        model = params["model"]
        result = await self.batch.call(self.name, self.batch_group(model), body)
        data = batch_body(result, provider=self.name, model=model, key_env=self.key_env)
        completion = self.sdk.types.chat.ChatCompletion.model_validate(data)
        model = completion.model or model
        spent = _usage(completion.usage)
        choice = next((c for c in completion.choices if c.index == 0), None)
        if choice is None or choice.finish_reason is None:
            raise TransportError(
                f"{self.name}:{model} batch result holds no complete answer",
                provider=self.name,
                model=model,
            )
        message = choice.message
        if getattr(message, "refusal", None) or choice.finish_reason == "content_filter":
            raise output_error(
                f"{self.name}:{model} declined to answer: {message.refusal or 'content filter'}",
                provider=self.name,
                model=model,
                usage=spent,
            )
        calls = [
            ToolCall(tc.id, tc.function.name, tc.function.arguments)
            for tc in message.tool_calls or []
        ]
        return Turn(message.content or "", calls, spent, model, None, choice.finish_reason)

    # images ----------------------------------------------------------------------------------
    async def image(self, request: Request) -> Response:
        """One image from ``images.generate`` as PNG bytes in `Response.data`."""
        model = request.model or self.ref.model
        return await self._guard(self._image(request, model), model)

    async def _image(self, request: Request, model: str) -> Response:
        client = await self._clients.get()
        prompt = request.messages()[0]["content"]
        params: dict[str, Any] = {"model": model, "prompt": prompt, "n": 1}
        if model.startswith("dall-e"):
            params["response_format"] = "b64_json"  # GPT image models always answer in base64
        result = await client.images.generate(**params)
        usage = _image_usage(getattr(result, "usage", None))
        item = (result.data or [None])[0]
        if item is None or not getattr(item, "b64_json", None):
            raise output_error(
                f"{self.name}:{model} returned no image data",
                provider=self.name,
                model=model,
                usage=usage,
            )
        try:
            png = base64.b64decode(item.b64_json, validate=True)
        except ValueError:
            raise output_error(
                f"{self.name}:{model} returned image data that is not base64",
                provider=self.name,
                model=model,
                usage=usage,
            ) from None
        if not png.startswith(PNG_MAGIC):
            raise output_error(
                f"{self.name}:{model} returned an image that is not a PNG",
                provider=self.name,
                model=model,
                usage=usage,
            )
        text = getattr(item, "revised_prompt", None) or prompt
        return Response(text=text, usage=usage, model=f"{self.name}:{model}", data=png)


class OpenAICompatibleProvider(OpenAIProvider):
    """An OpenAI-compatible server (Ollama, vLLM, LM Studio, …) reached through an alias's base URL."""

    name = "openai-compatible"
    supports_batch = False  # local servers have no batch API: their calls go direct
    max_tokens_param = "max_tokens"  # what the compatible servers understand

    def __init__(self, ref, *, timeout: float = 600.0, read_timeout: float = 120.0):
        super().__init__(ref, timeout=timeout, read_timeout=read_timeout)
        self.key_env = ref.api_key_env or "the alias's api_key_env"

    def client_options(self) -> dict[str, Any]:
        if not self.ref.base_url:
            raise RequestError(
                f"model `{self.ref.spec}` needs a server address: define an alias in nbconductor.toml, e.g. "
                f'[aliases] local = {{ model = "{self.ref.spec}", base_url = "http://localhost:11434/v1" }}',
                provider=self.name,
                model=self.ref.model,
            )
        key = None
        if self.ref.api_key_env:
            key = os.environ.get(self.ref.api_key_env)
            if not key:
                raise AuthError(
                    f"{self.ref.api_key_env} is not set (the api_key_env of the alias for {self.ref.spec}): "
                    f"export {self.ref.api_key_env}=... before starting Jupyter",
                    provider=self.name,
                    model=self.ref.model,
                )
        # The SDK insists on a key; a local server without authentication ignores this one.
        return {"api_key": key or "not-needed", "base_url": self.ref.base_url}


def _schema_name(name: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name or "output")[:64]
    return cleaned or "output"


def _usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    written = getattr(details, "cache_write_tokens", None) if details is not None else None
    prompt = getattr(u, "prompt_tokens", None)
    # prompt_tokens counts every prompt token; cached and newly cached ones are reported apart.
    uncached = max(0, prompt - (cached or 0) - (written or 0)) if prompt is not None else None
    return Usage(uncached, getattr(u, "completion_tokens", None), cached, written)


_CUT = ("stream ended before", "incomplete chunked read", "peer closed", "stream broke off")


def _cut_hint(exc: TransportError, ref: Any, concurrency: int) -> TransportError:
    """``exc``, saying what to lower when a server at a base URL cut a stream while several
    calls were allowed at once."""
    if not ref.base_url or concurrency <= 1 or not any(s in str(exc) for s in _CUT):
        return exc
    return TransportError(
        f"{exc} — a server that serves one request at a time cuts a stream when another "
        f"arrives: set concurrency = 1 in the alias of {ref.base_url}",
        provider=exc.provider,
        model=exc.model,
    )


def _estimated(params: dict, text: str, calls: dict) -> Usage:
    """Usage estimated from the text, for a server that sent none (marked ``estimated``)."""
    sent = json.dumps(params.get("messages", []), ensure_ascii=False)
    answer = text + "".join(c["name"] + c["arguments"] for c in calls.values())
    return Usage(estimate_tokens(sent), estimate_tokens(answer), estimated=True)


def _image_usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    return Usage(getattr(u, "input_tokens", None), getattr(u, "output_tokens", None))
