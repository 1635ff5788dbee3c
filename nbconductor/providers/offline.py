"""``offline:NAME`` — a deterministic local provider: no key, no network, same input → same output.

It makes the demo and the tests run anywhere. Its text is labelled ``[offline:NAME]``; a
``--json`` step gets valid JSON shaped after the example in the prompt (or the schema), and an
image step gets a small PNG. ``NBCONDUCTOR_OFFLINE_LATENCY`` (seconds) adds a fixed delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
import zlib
from typing import Any

from .._types import Request, Response, Usage
from ._base import Provider

_NUMBERS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "ten": 10,
}
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OfflineProvider(Provider):
    name = "offline"

    async def complete(self, request: Request) -> Response:
        latency = float(os.environ.get("NBCONDUCTOR_OFFLINE_LATENCY", "0") or 0)
        if latency:
            await asyncio.sleep(latency)
        seed = _seed(self.ref.model, request.system_text() or "", request.messages()[0]["content"])
        if request.schema is not None and _is_verdict(request.schema):
            data = _verdict(self.ref.model, request.prompt)
            text = json.dumps(data, ensure_ascii=False)
        elif request.schema is not None:
            data = _from_schema(request.schema, seed, request.prompt)
            text = json.dumps(data, ensure_ascii=False)
        elif request.json:
            data = _from_prompt(request.prompt, seed)
            text = json.dumps(data, ensure_ascii=False)
        else:
            data = None
            text = _prose(self.ref.model, request, seed)
        if request.on_text:
            for i in range(0, len(text), 64):
                request.on_text(text[i : i + 64])
        usage = Usage(_tokens((request.system_text() or "") + request.prompt), _tokens(text), 0, 0)
        return Response(
            text=text, usage=usage, model=f"offline:{self.ref.model}", data=data, cost=0.0
        )

    async def image(self, request: Request) -> Response:
        seed = _seed(self.ref.model, request.prompt)
        png = _png(seed)
        return Response(
            text=f"[offline:{self.ref.model}] image for: {request.prompt[:80]}",
            usage=Usage(_tokens(request.prompt), 0),
            model=f"offline:{self.ref.model}",
            data=png,
            cost=0.0,
        )


_STOP = frozenset(
    "this that with from into your their about what which when where while have will would should could "
    "there these those them they then than also only just each every more most other some such very "
    "keep keeping write list json name names".split()
)


def _key_terms(text: str, n: int = 5) -> list[str]:
    """The prompt's most frequent content words, first-seen order breaking ties."""
    counts: dict[str, int] = {}
    for word in _WORD.findall(text):
        w = word.lower().strip("'-")
        if len(w) > 3 and w not in _STOP:
            counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:n]


def _prose(model: str, request: Request, seed: int) -> str:
    prompt = request.prompt
    first = prompt.strip().splitlines()[0] if prompt.strip() else ""
    terms = _key_terms(prompt) or ["nothing in particular"]
    body = (
        "This is the offline provider's stand-in for a model's answer: deterministic, no network, no key. "
        f"The request ({len(prompt.split())} words) is mostly about {', '.join(terms)}. "
        "Set ANTHROPIC_API_KEY or OPENAI_API_KEY to get real text."
    )
    tail = ""
    if request.contexts:
        tail = f"\n\n(Written with context: {', '.join(n for n, _ in request.contexts)}.)"
    if request.feedback:
        tail += "\n\n(Revised after feedback.)"
    return f"[offline:{model}] {first[:120]}\n\n{body}{tail}"


def _is_verdict(schema: dict) -> bool:
    return {"score", "feedback", "suggested_edit"} <= set(schema.get("properties", {}))


_WORD_LIMIT = re.compile(
    r"(?:under|at most|fewer than|no more than|less than|max(?:imum)?(?: of)?)\s+(\d+)\s+words",
    re.I,
)


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start) : j].strip() if i >= 0 and j >= 0 else ""


def _verdict(model: str, prompt: str) -> dict:
    """A rubric judge's verdict: a score from a hash of rubric and output, so the same output
    always gets the same score and roughly a third of first drafts fall below 0.8. A revised
    output scores a little higher; a rubric line with a word limit is actually checked."""
    rubric = _between(prompt, "<rubric>", "</rubric>")
    output = _between(prompt, "<output>", "</output>") or prompt
    lines = [ln.strip().lstrip("-*•0123456789.) ").strip() for ln in rubric.splitlines()]
    lines = [ln for ln in lines if ln] or ["the rubric"]
    h = _seed("verdict", model, rubric, output)
    score = 0.45 + 0.55 * (h % 1000) / 1000
    if "(Revised after feedback.)" in output:
        score += 0.1
    weakest = lines[(h >> 16) % len(lines)]
    reason = "make the output meet it more clearly"
    words = len(output.split())
    for line in lines:
        m = _WORD_LIMIT.search(line)
        if m and words > int(m.group(1)):
            score, weakest, reason = min(score, 0.4), line, f"the output has {words} words"
    score = round(min(score, 1.0), 2)
    return {
        "score": score,
        "feedback": f'[offline judge] weakest rubric line: "{weakest}" — {reason}.',
        "suggested_edit": f'Revise the output so that it clearly meets "{weakest}".',
    }


def _from_prompt(prompt: str, seed: int) -> Any:
    """JSON shaped like the example in the prompt: ``[{"name": ..., "angle": ...}]`` etc."""
    keys = list(dict.fromkeys(re.findall(r'"(\w+)"\s*:', prompt)))
    count = 3
    m = re.search(r"\b(\d{1,2}|" + "|".join(_NUMBERS) + r")\b", prompt, re.I)
    if m:
        count = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1).lower()]
    if not keys:
        return {
            "text": f"offline answer {seed % 1000}",
            "items": [f"item {i + 1}" for i in range(count)],
        }
    make = lambda i: {k: f"{k} {i + 1}" for k in keys}  # noqa: E731
    if "[{" in prompt.replace(" ", "") or "list" in prompt.lower():
        return [make(i) for i in range(count)]
    return make(0)


def _from_schema(schema: dict, seed: int, prompt: str, defs: dict | None = None) -> Any:
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].split("/")[-1]], seed, prompt, defs)
    for combo in ("anyOf", "oneOf", "allOf"):
        if combo in schema:
            return _from_schema(schema[combo][0], seed, prompt, defs)
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _from_schema(v, _seed(str(seed), k), prompt, defs) for k, v in props.items()}
    if kind == "array":
        n = max(schema.get("minItems", 3), 1)
        return [_from_schema(schema.get("items", {}), seed + i, prompt, defs) for i in range(n)]
    if kind == "number":
        lo, hi = schema.get("minimum", 0.0), schema.get("maximum", 1.0)
        return round(lo + (hi - lo) * (0.7 + 0.3 * ((seed % 1000) / 1000)), 2)
    if kind == "integer":
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 100)
        return int(lo + (seed % (hi - lo + 1)))
    if kind == "boolean":
        return True
    return f"offline {schema.get('title', 'text').lower()} {seed % 1000}"


def _png(seed: int, size: int = 64) -> bytes:
    """A small deterministic gradient PNG."""
    r, g, b = seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
    rows = b"".join(
        b"\x00" + b"".join(bytes(((r + x * 2) % 256, (g + y * 2) % 256, b)) for x in range(size))
        for y in range(size)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
