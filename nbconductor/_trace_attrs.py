"""What nbconductor's spans carry besides their names: token usage and cost as GenAI and
``nbconductor.*`` attributes, and — only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
is ``true`` — prompts, answers and tool calls as the conventions' message JSON, always redacted
(`_trace` builds the spans; nothing here imports OpenTelemetry)."""

from __future__ import annotations

import json
import os
from typing import Any

CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def capture_content() -> bool:
    """Whether prompts and outputs go on the spans (the conventions' opt-in switch)."""
    return os.environ.get(CONTENT_ENV, "").strip().lower() == "true"


def _input_messages(request: Any) -> tuple[list, list]:
    """(system instructions, input messages) of a request, redacted, as the conventions' JSON."""
    system = request.system_text()
    messages = [
        {"role": m["role"], "parts": [{"type": "text", "content": _redact(m["content"])}]}
        for m in request.messages()
    ]
    return ([{"type": "text", "content": _redact(system)}] if system else []), messages


def _turn_message(turn: Any) -> dict:
    """A tool-use turn's answer as an assistant message: its text and its tool calls, redacted."""
    parts: list[dict] = []
    if turn.text:
        parts.append({"type": "text", "content": _redact(turn.text)})
    for c in turn.calls:
        arguments = _redact(_json_text(c.arguments))
        try:  # the conventions' arguments are the object; redaction kept it JSON in practice
            arguments = json.loads(arguments)
        except ValueError:
            pass
        parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": arguments})
    return {"role": "assistant", "parts": parts, "finish_reason": str(turn.stop or "")}


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _usage(span: Any, usage: Any) -> None:
    if usage is not None:
        span.set_attributes(_usage_attrs(usage))


def _usage_attrs(usage: Any) -> dict[str, int]:
    pairs = (
        ("gen_ai.usage.input_tokens", usage.input_tokens),
        ("gen_ai.usage.output_tokens", usage.output_tokens),
        ("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens),
    )
    return {k: v for k, v in pairs if v is not None}


def _cost(ref: Any, response: Any, pool: Any, image: bool) -> float | None:
    if response.cost is not None:
        return response.cost
    if pool is None:
        return None
    from ._pricing import cost_of

    try:
        return cost_of(ref, response.usage, pool.config, images=1 if image else 0)
    except Exception:  # noqa: BLE001 - a price we cannot work out is no attribute, not a failure
        return None


def _redact(text: str) -> str:
    from ._redact import redact

    return redact(text)
