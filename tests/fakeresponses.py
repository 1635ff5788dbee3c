"""OpenAI's Responses API on the loopback fake (`tests.fakeapi`): ``POST /v1/responses``.

Its replies come from the ``"openai"`` script queue and default, like Chat Completions: a
`Text` is an ``output_text`` message, a `ToolCall` a ``function_call`` output item, usage in
the Responses form (``input_tokens``, ``output_tokens``, ``input_tokens_details``). With
``"stream": true`` the answer is a server-sent event stream (``response.created``, one
``response.output_text.delta`` per piece, a function call's ``output_item.added``,
``function_call_arguments.delta`` ×2, ``.done`` and ``output_item.done``, then
``response.completed`` with the whole response);
otherwise the response object. ``tests.fakebatch`` uses `response_body` for batch lines
whose ``url`` is ``/v1/responses``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

URL = "/v1/responses"


@dataclass
class Failed:
    """A response that failed on the provider's side: streamed, ``response.created`` then
    ``response.failed``; otherwise the response object. Either has ``"status": "failed"`` and
    ``"error": {"code": code, "message": message}``, no output and no usage."""

    code: str = "server_error"
    message: str = "The model failed to generate a response."


def is_responses(path: str) -> bool:
    return path.split("?", 1)[0].rstrip("/").endswith("/responses")


def response_body(handler: Any, rec: Any, reply: Any) -> dict:
    """The Responses API object for ``reply`` to the request ``rec``."""
    blocks, u, stop = handler._blocks(reply, rec)
    fake = handler.fake
    output: list[dict] = []
    text = "".join(b[1] for b in blocks if b[0] == "text")
    if text:
        output.append(
            {
                "type": "message",
                "id": f"msg_fake{next(fake._counter):06d}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for b in blocks:
        if b[0] == "tool":
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_fake{next(fake._counter):06d}",
                    "call_id": b[1],
                    "name": b[2],
                    "arguments": json.dumps(b[3]),
                    "status": "completed",
                }
            )
    cut = stop == "max_tokens"
    body = rec.json if isinstance(rec.json, dict) else {}
    cached = getattr(u, "cache_read", 0)
    return {
        "id": f"resp_fake{next(fake._counter):06d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "metadata": {},
        "model": handler._model(rec),
        "output": output,
        "parallel_tool_calls": True,
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": u.input_tokens,  # cached ones included, as OpenAI counts them
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.input_tokens + u.output_tokens,
        },
    }


def render(handler: Any, reply: Any, rec: Any) -> None:
    """Answer ``POST /v1/responses`` with ``reply`` (streamed when the request asks)."""
    if isinstance(reply, Failed):
        from fakeapi import Text

        body = response_body(handler, rec, Text(""))
        body.update(
            status="failed",
            output=[],
            usage=None,
            error={"code": reply.code, "message": reply.message},
        )
    else:
        body = response_body(handler, rec, reply)
    if not rec.stream:
        return handler._send_json(200, body)
    seq = iter(range(1_000_000))
    handler._start_stream()
    created = {**body, "status": "in_progress", "output": [], "usage": None}
    handler._sse(
        "response.created",
        {"type": "response.created", "response": created, "sequence_number": next(seq)},
    )
    for index, item in enumerate(body["output"]):
        if item["type"] == "function_call":
            _stream_call(handler, seq, index, item)
            continue
        if item["type"] != "message":
            continue
        text = item["content"][0]["text"]
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            if piece:
                handler._sse(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                        "sequence_number": next(seq),
                    },
                )
    done = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        body["status"], "response.completed"
    )
    handler._sse(done, {"type": done, "response": body, "sequence_number": next(seq)})
    handler._end_stream()


def _stream_call(handler: Any, seq: Any, index: int, item: dict) -> None:
    """A ``function_call`` output item as the API streams it: added with empty arguments, the
    arguments in two deltas, then done."""
    args = item["arguments"]
    handler._sse(
        "response.output_item.added",
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "arguments": "", "status": "in_progress"},
            "sequence_number": next(seq),
        },
    )
    for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
        handler._sse(
            "response.function_call_arguments.delta",
            {
                "type": "response.function_call_arguments.delta",
                "item_id": item["id"],
                "output_index": index,
                "delta": piece,
                "sequence_number": next(seq),
            },
        )
    handler._sse(
        "response.function_call_arguments.done",
        {
            "type": "response.function_call_arguments.done",
            "item_id": item["id"],
            "output_index": index,
            "name": item["name"],
            "arguments": args,
            "sequence_number": next(seq),
        },
    )
    handler._sse(
        "response.output_item.done",
        {
            "type": "response.output_item.done",
            "output_index": index,
            "item": item,
            "sequence_number": next(seq),
        },
    )
