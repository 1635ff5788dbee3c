"""``anthropic:MODEL`` — Claude through the Messages API, with the official async SDK.

Every call streams (``messages.stream``): text deltas reach `Request.on_text`, and the read
timeout catches a stream that stalls half-way, which a single non-streamed read cannot tell
from a long answer. The SDK's own retries are off (``max_retries=0``); nbconductor's ladder
owns retries. The key and base URL come from the environment as the SDK reads them
(``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``), or from an alias's ``api_key_env`` /
``base_url``.

Context blocks become system text blocks marked ``cache_control: ephemeral``, placed before
the step's own system text so steps sharing a context share the cached prefix. ``--schema``
uses native structured outputs (``output_config.format``); ``--json`` asks for JSON in the
system prompt (the Messages API has no schema-less JSON mode) and parses the answer.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

from .._errors import AuthError, TransportError, missing_dependency
from .._redact import redact
from .._tools import ToolCall, Turn, run_tool_loop
from .._types import Request, Response, Usage
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

DEFAULT_MAX_TOKENS = 8192
# The API accepts at most four cache breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4
JSON_INSTRUCTION = "Respond with valid JSON only: no prose before or after it and no code fences."


class AnthropicProvider(Provider):
    name = "anthropic"
    supports_batch = True

    def __init__(self, ref, *, timeout: float = 600.0, read_timeout: float = 120.0):
        super().__init__(ref, timeout=timeout, read_timeout=read_timeout)
        self.sdk = missing_dependency("anthropic", "anthropic", "`anthropic:` models")
        self.key_env = ref.api_key_env or "ANTHROPIC_API_KEY"
        # Parameters this SDK version lacks go in extra_body (the wire format is the same).
        try:
            stream_params = inspect.signature(
                self.sdk.resources.messages.AsyncMessages.stream
            ).parameters
        except (AttributeError, TypeError, ValueError):
            stream_params = {}
        self._native_temperature = "temperature" in stream_params
        self._native_output_config = "output_config" in stream_params
        self._clients = LoopClients(self._new_client)

    @classmethod
    def warm(cls) -> None:
        with contextlib.suppress(Exception):
            import anthropic

            # a first client loads the HTTP stack (httpcore, h11, anyio); it opens no connection
            anthropic.AsyncAnthropic(api_key="unused", max_retries=0)

    # clients ---------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        key = os.environ.get(self.key_env)
        kwargs: dict[str, Any] = {
            "max_retries": 0,
            "timeout": self.sdk.Timeout(
                self.timeout, connect=min(self.timeout, 30.0), read=self.read_timeout
            ),
        }
        if key:
            kwargs["api_key"] = key
        elif self.ref.api_key_env or not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
            raise AuthError(
                f"{self.key_env} is not set: export {self.key_env}=sk-ant-... before starting Jupyter "
                "(nbconductor reads keys from the environment only)",
                provider=self.name,
                model=self.ref.model,
            )
        if self.ref.base_url:
            kwargs["base_url"] = self.ref.base_url
        shared = http_client(self.sdk)
        if shared is not None:
            kwargs["http_client"] = shared
        return self.sdk.AsyncAnthropic(**kwargs)

    async def aclose(self) -> None:
        await self._clients.aclose()

    # requests --------------------------------------------------------------------------------
    def params(self, request: Request) -> dict:
        """The keyword arguments of ``messages.stream`` for ``request`` (without ``messages``)."""
        params: dict[str, Any] = {
            "model": request.model or self.ref.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        system = self.system_blocks(request)
        if system:
            params["system"] = system
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            if self._native_temperature:
                params["temperature"] = request.temperature
            else:
                extra["temperature"] = request.temperature
        if request.schema is not None:
            output_config = {
                "format": {"type": "json_schema", "schema": self._schema(request.schema)}
            }
            if self._native_output_config:
                params["output_config"] = output_config
            else:
                extra["output_config"] = output_config
        if request.tools:
            params["tools"] = [
                {
                    "name": t["name"],
                    "description": t["description"],
                    "input_schema": t["parameters"],
                }
                for t in request.tools
            ]
        if extra:
            params["extra_body"] = extra
        return params

    def system_blocks(self, request: Request) -> list[dict]:
        """The system prompt as text blocks: cacheable context blocks first, then the step's own."""
        contexts = [text for _, text in request.contexts if text.strip()]
        marked = set(range(len(contexts)))
        if len(contexts) > MAX_CACHE_BREAKPOINTS:
            # The first blocks let steps that share leading contexts share a cached prefix;
            # the last one caches the whole context.
            marked = set(range(MAX_CACHE_BREAKPOINTS - 1)) | {len(contexts) - 1}
        blocks: list[dict] = []
        for i, text in enumerate(contexts):
            block: dict[str, Any] = {"type": "text", "text": text}
            if i in marked:
                block["cache_control"] = {"type": "ephemeral"}
            blocks.append(block)
        if request.system and request.system.strip():
            blocks.append({"type": "text", "text": request.system})
        if request.json and request.schema is None:
            blocks.append({"type": "text", "text": JSON_INSTRUCTION})
        return blocks

    def _schema(self, schema: dict) -> dict:
        transform = getattr(self.sdk, "transform_schema", None)
        if transform is not None:
            return transform(schema)
        return strict_schema(schema) or schema

    # calls -----------------------------------------------------------------------------------
    async def complete(self, request: Request) -> Response:
        return await guarded(
            self._complete(request),
            self.sdk,
            provider=self.name,
            model=request.model or self.ref.model,
            key_env=self.key_env,
            timeout=self.timeout if self.batch is None else None,  # a batch may take hours
            read_timeout=self.read_timeout,
        )

    async def _complete(self, request: Request) -> Response:
        client = await self._clients.get()
        params = self.params(request)
        messages: list[dict] = list(request.messages())
        if request.tools:

            async def send(final: bool) -> Turn:
                extra = {"tool_choice": {"type": "none"}} if final else {}
                return await self._turn(client, {**params, **extra, "messages": messages}, request)

            def add_results(turn: Turn, results: list) -> None:
                messages.append({"role": "assistant", "content": turn.raw})
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": call.id,
                                "content": text,
                                "is_error": failed,
                            }
                            for call, text, failed in results
                        ],
                    }
                )

            turn, usage = await run_tool_loop(send, add_results, request.tools, request.max_turns)
        else:
            turn = await self._turn(client, {**params, "messages": messages}, request)
            usage = turn.usage
        truncated = f"max_tokens ({params['max_tokens']})" if turn.stop == "max_tokens" else None
        return final_response(
            self.name, turn.model or params["model"], request, turn.text, usage, truncated
        )

    async def _turn(self, client: Any, params: dict, request: Request) -> Turn:
        if self.batch is not None:  # --provider-batch: one request of a Message Batch, not streamed
            body = {k: v for k, v in params.items() if k != "extra_body"}
            body.update(params.get("extra_body") or {})
            result = await self.batch.call(self.name, self.batch_group(params["model"]), body)
            message = self.sdk.types.Message.model_validate(
                batch_body(result, provider=self.name, model=params["model"], key_env=self.key_env)
            )
        else:
            on_text = request.on_text
            async with client.messages.stream(**params) as stream:
                async for event in stream:
                    if event.type == "text" and on_text is not None and event.text:
                        on_text(redact(event.text))
                message = await stream.get_final_message()
        model = message.model or params["model"]
        usage = _usage(message.usage)
        if message.stop_reason is None:
            raise TransportError(
                f"{self.name}:{model} stream ended before the message was complete",
                provider=self.name,
                model=model,
            )
        if message.stop_reason == "refusal":
            raise output_error(
                f"{self.name}:{model} declined to answer (stop_reason: refusal)",
                provider=self.name,
                model=model,
                usage=usage,
            )
        text_parts: list[str] = []
        calls: list[ToolCall] = []
        raw: list[dict] = []
        for block in message.content:
            if block.type == "text":
                text_parts.append(block.text)
                raw.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                calls.append(ToolCall(block.id, block.name, block.input))
                raw.append(
                    {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
                )
        # An empty text block is rejected when the turn is replayed in a tool-use conversation.
        raw = [b for b in raw if b.get("text") != ""]
        return Turn("".join(text_parts), calls, usage, model, raw, message.stop_reason)

    # provider batches (the broker's side) -----------------------------------------------------
    def batch_group(self, model: str) -> dict:
        """How the broker reaches this provider; one Message Batch may mix models."""
        return {"base_url": self.ref.base_url, "key_env": self.ref.api_key_env}

    async def submit_batch(self, items: list[tuple[str, dict]]) -> str:
        """Submit ``(custom_id, body)`` requests as one Message Batch; returns its id."""
        return await self._batch_call(self._submit(items))

    async def _submit(self, items: list[tuple[str, dict]]) -> str:
        client = await self._clients.get()
        batch = await client.messages.batches.create(
            requests=[{"custom_id": cid, "params": body} for cid, body in items]
        )
        return batch.id

    async def batch_ended(self, batch_id: str) -> bool:
        """Whether the batch has finished processing (ended, every request has its result)."""
        return await self._batch_call(self._ended(batch_id))

    async def _ended(self, batch_id: str) -> bool:
        client = await self._clients.get()
        batch = await client.messages.batches.retrieve(batch_id)
        return batch.processing_status == "ended"

    async def batch_results(self, batch_id: str) -> dict[str, dict]:
        """custom_id -> result (`nbconductor._batchcall` form) of an ended batch."""
        return await self._batch_call(self._results(batch_id))

    async def _results(self, batch_id: str) -> dict[str, dict]:
        client = await self._clients.get()
        out: dict[str, dict] = {}
        async for item in await client.messages.batches.results(batch_id):
            r = item.result
            if r.type == "succeeded":
                out[item.custom_id] = {
                    "type": "succeeded",
                    "body": r.message.model_dump(mode="json"),
                }
            elif r.type == "errored":
                out[item.custom_id] = {"type": "errored", "error": r.error.model_dump(mode="json")}
            else:
                out[item.custom_id] = {"type": r.type}
        return out

    def _batch_call(self, call: Any) -> Any:
        return guarded(
            call,
            self.sdk,
            provider=self.name,
            model="batches",
            key_env=self.key_env,
            timeout=self.timeout,
            read_timeout=self.read_timeout,
        )


def _usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    return Usage(
        getattr(u, "input_tokens", None),
        getattr(u, "output_tokens", None),
        getattr(u, "cache_read_input_tokens", None),
        getattr(u, "cache_creation_input_tokens", None),
    )
