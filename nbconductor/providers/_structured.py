"""What OpenAI-compatible servers differ in: structured output, usage, error text.

Structured output has three modes, tried in this order until a server accepts one:

* ``json_schema`` — ``response_format`` ``json_schema`` (OpenAI, vLLM, llama.cpp's server);
* ``json_object`` — ``response_format`` ``json_object`` with the schema in the prompt
  (llama-cpp-python's server, which answers HTTP 500 ``Input should be 'text' or 'json_object'``);
* ``prompt`` — no ``response_format``: the prompt asks for JSON and the answer is parsed.

The executor validates the answer against the schema (pydantic) in every mode. A server's
refusal of a mode is remembered per base URL for the session and said once on stderr; an
alias can force a mode with ``structured = "json_object"``.
"""

from __future__ import annotations

import json
import re
import sys
import threading

from .._errors import ProviderError
from .._redact import redact

MODES = ("json_schema", "json_object", "prompt")

_learned: dict[str, str] = {}  # base URL -> the mode its server accepted
_said: set[tuple[str, str]] = set()
_lock = threading.Lock()

# A server that refuses a response_format answers 400/422 (vLLM, LM Studio) or 500
# (llama-cpp-python's pydantic error) naming the field or its allowed values.
_REFUSAL = re.compile(r"response_format|json_schema|json_object|'text'", re.IGNORECASE)


def mode_for(base_url: str | None, forced: str | None) -> str:
    """The structured mode to use with the server at ``base_url``."""
    if forced:
        return forced
    with _lock:
        return _learned.get(base_url or "", MODES[0])


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a server refusing the request's ``response_format``."""
    if not isinstance(exc, ProviderError):
        return False
    status = getattr(exc, "status", None)
    return status in (400, 415, 422, 500, 501) and bool(_REFUSAL.search(str(exc)))


def downgrade(base_url: str | None, mode: str, where: str) -> str | None:
    """The next mode after ``mode`` (now remembered for ``base_url``), or None after the last."""
    i = MODES.index(mode)
    if i + 1 >= len(MODES):
        return None
    nxt = MODES[i + 1]
    key = base_url or ""
    with _lock:
        _learned[key] = nxt
        first = (key, nxt) not in _said
        _said.add((key, nxt))
    if first:
        how = (
            "the schema in the prompt"
            if nxt == "prompt"
            else "json_object + the schema in the prompt"
        )
        print(
            redact(
                f"nbconductor: {where} does not accept response_format {mode}; structured output uses "
                f'{how} for this session (set structured = "{nxt}" in its alias to skip the probe)'
            ),
            file=sys.stderr,
        )
    return nxt


def forget() -> None:
    """Forget what servers accepted (tests; a restarted server may be another one)."""
    with _lock:
        _learned.clear()
        _said.clear()


def schema_instruction(schema: dict | None) -> str:
    """The system-prompt text asking for JSON (matching ``schema`` when given)."""
    if schema is None:
        return "Respond with a single JSON object only."
    return (
        "Respond with a single JSON object only, no other text, matching this JSON schema:\n"
        + json.dumps(schema, separators=(",", ":"))
    )


def estimate_tokens(text: str) -> int:
    """A rough token count of ``text``: about four characters a token (never 0 for some text)."""
    return (len(text) + 3) // 4


def cause_line(message: str) -> str:
    """The first meaningful line of a (multi-line) server error message.

    ``1 validation error:`` headers are skipped; a pydantic error dict repr becomes
    ``loc: msg``; surrounding whitespace goes.
    """
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and (
            line.endswith(":") or re.match(r"\d+ validation errors? ", line)
        ):
            continue  # a header: the cause is on the next line
        if re.fullmatch(r"[\w.\[\]]+", line) and i + 1 < len(lines):
            # pydantic's own layout: the field's location, then the message on the next line
            detail = re.sub(r" \[type=.*$", "", lines[i + 1])
            return f"{line}: {detail}"
        msg = re.search(r"""['"]msg['"]:\s*(['"])(.*?)\1""", line)
        if msg:
            loc = re.search(r"""['"]loc['"]:\s*\(([^)]*)\)""", line)
            parts = [p.strip(" '\"") for p in loc.group(1).split(",") if p.strip()] if loc else []
            parts = [p for p in parts if p != "body"]
            return f"{'.'.join(parts)}: {msg.group(2)}" if parts else msg.group(2)
        return line
    return lines[0]
