"""OpenAI's Responses API for ``openai:`` aliases with ``api = "responses"``: bodies and answers.

The adapter (`providers.openai`) builds its Chat Completions parameters and messages as usual;
`body` turns them into a ``responses.create`` body (system text as ``instructions``, the
turns as ``input`` items, ``response_format`` as ``text.format``, function tools flattened,
``max_completion_tokens`` as ``max_output_tokens``), and `turn_of` reads a response object
(a plain dict: from a batch's output file, or a stream's ``response.completed`` event) into
the tool loop's `Turn`. Tool results go back as ``function_call`` / ``function_call_output``
input items (`add_tool_results`). Nothing here sends anything.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ProviderError, RateLimitError, RequestError, ServerError
from .._redact import redact
from .._tools import ToolCall, Turn
from .._types import Usage

URL = "/v1/responses"
#: what a Responses API finish means in the tool loop's terms
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def body(params: dict, messages: list[dict], max_tokens_param: str) -> dict:
    """The ``responses.create`` body for chat ``params`` and ``messages`` (streaming as given)."""
    out: dict[str, Any] = {"model": params["model"]}
    if params.get("stream"):
        out["stream"] = True
    if "temperature" in params:
        out["temperature"] = params["temperature"]
    if max_tokens_param in params:
        out["max_output_tokens"] = params[max_tokens_param]
    fmt = params.get("response_format")
    if fmt and fmt.get("type") == "json_schema":
        out["text"] = {"format": {"type": "json_schema", **fmt["json_schema"]}}
    elif fmt:
        out["text"] = {"format": {"type": fmt["type"]}}
    if params.get("tools"):
        out["tools"] = [{"type": "function", **t["function"]} for t in params["tools"]]
    if params.get("tool_choice"):
        out["tool_choice"] = params["tool_choice"]
    system = [m["content"] for m in messages if m.get("role") == "system"]
    if system:
        out["instructions"] = "\n\n".join(system)
    out["input"] = [m for m in messages if m.get("role") != "system"]
    return out


def add_tool_results(items: list[dict], turn: Turn, results: list) -> None:
    """Append a tool turn's calls and their results to the ``input`` items."""
    for call in turn.calls:
        arguments = (
            call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        )
        items.append(
            {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": arguments}
        )
    for call, text, failed in results:
        items.append(
            {
                "type": "function_call_output",
                "call_id": call.id,
                "output": f"ERROR: {text}" if failed else text,
            }
        )


def turn_of(response: dict, model: str) -> tuple[Turn, str | None]:
    """(the turn, a refusal's text or None) of a Responses API response object."""
    text: list[str] = []
    refusal: list[str] = []
    calls: list[ToolCall] = []
    for item in response.get("output") or []:
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusal.append(part.get("refusal") or "refused")
        elif kind == "function_call":
            calls.append(
                ToolCall(item.get("call_id") or item.get("id"), item["name"], item["arguments"])
            )
    status = response.get("status")
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        stop = _INCOMPLETE.get(str(reason), "length")
    elif status == "completed":
        stop = "tool_calls" if calls else "stop"
    else:
        stop = None  # failed, cancelled, still in progress: no complete answer
    spent = usage(response.get("usage"))
    turn = Turn("".join(text), calls, spent, response.get("model") or model, None, stop)
    return turn, ("".join(refusal) or None)


#: ``error.code`` of a failed response that the same request would meet again
_REQUEST_CODES = ("invalid_prompt", "invalid_image", "image_too_large", "image_parse_error")


def failure(response: dict, *, provider: str, model: str) -> ProviderError | None:
    """The error a ``"status": "failed"`` response stands for (``response.failed`` when
    streamed), classified as the same failure of an HTTP call would be: a rate limit and a
    server error are retried, an invalid prompt or image is not; None if it did not fail."""
    if response.get("status") != "failed":
        return None
    error = response.get("error") or {}
    code = str(error.get("code") or "server_error")
    message = redact(str(error.get("message") or "no message"))
    text = f"{provider}:{model} response failed ({code}): {message}"
    if code == "rate_limit_exceeded":
        kind = RateLimitError
    elif code in _REQUEST_CODES or code.startswith("invalid_"):
        kind = RequestError
    else:
        kind = ServerError
    return kind(text, provider=provider, model=model)


def usage(u: dict | None) -> Usage:
    """Responses usage in Anthropic's convention (``input_tokens`` without the cached ones)."""
    if not u:
        return Usage()
    cached = (u.get("input_tokens_details") or {}).get("cached_tokens") or 0
    given = u.get("input_tokens")
    uncached = max(0, given - cached) if given is not None else None
    return Usage(uncached, u.get("output_tokens"), cached or None, None)
