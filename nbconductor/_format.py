"""One formatting vocabulary for every surface: state glyphs, cost, tokens, durations, Markdown
table cells and fenced model answers. Text in a footer, a table, the graph widget, the timeline
and an exported header is spelled the same way because it comes from here.
"""

from __future__ import annotations

import math
from typing import Any

from ._states import CACHED, FAILED, FLAGGED, PASSED, PENDING, RUNNING, SKIPPED

__all__ = [
    "FAIL_MARK",
    "GLYPHS",
    "PASS_MARK",
    "clip",
    "fmt_cost",
    "fmt_seconds",
    "fmt_tokens",
    "gate_mark",
    "md_cell",
    "md_table",
    "strip_fence",
]

#: one glyph per step state (the README's and the graph widget's): colour is never the only cue
GLYPHS = {
    PENDING: "○",
    RUNNING: "◐",
    CACHED: "↺",
    PASSED: "✓",
    FLAGGED: "⚑",
    FAILED: "✕",
    SKIPPED: "–",
}
PASS_MARK, FAIL_MARK = GLYPHS[PASSED], GLYPHS[FAILED]


def gate_mark(passed: Any) -> str:
    """``✓`` for a gate that passed, ``✕`` for one that did not."""
    return PASS_MARK if passed else FAIL_MARK


def fmt_cost(cost: Any, unknown: str = "?") -> str:
    """A cost in US$ with two significant digits (``$0.0031``, ``$0.25``, ``$12.40``, ``$0``);
    ``unknown`` (default ``?``) when it is not known: an unknown cost never shows as 0."""
    if cost is None:
        return unknown
    cost = float(cost)
    if cost == 0:
        return "$0"
    digits = max(2, min(6, 1 - math.floor(math.log10(abs(cost)))))
    text = f"{cost:.{digits}f}"
    if digits > 2:
        text = text.rstrip("0")
    return f"${text}"


def fmt_tokens(n: Any, *, short: bool = False, unknown: str = "?", estimated: bool = False) -> str:
    """A token count: ``12,345``; ``short``: a caption's ``12.3k tok`` / ``532 tok``;
    ``estimated`` (the server sent no usage): ``~12,345``."""
    if n is None:
        return unknown
    n = int(n)
    mark = "~" if estimated else ""
    if short:
        return mark + (f"{n / 1000:.1f}k tok" if n >= 10_000 else f"{n} tok")
    return f"{mark}{n:,}"


def fmt_seconds(s: Any, unknown: str = "") -> str:
    """A duration like ``840 ms``, ``1.24 s`` or ``2m 05s``."""
    if s is None:
        return unknown
    s = float(s)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.2f} s"
    return f"{int(s // 60)}m {int(s % 60):02d}s"


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def md_cell(value: Any) -> str:
    """A value safe inside a Markdown table cell: one line, ``|`` escaped, and ``$`` too
    (Jupyter's Markdown would typeset the text between two dollar signs as LaTeX)."""
    return str(value).replace("\n", " ").replace("|", "\\|").replace("$", "\\$")


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table (every cell through `md_cell`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]


def strip_fence(text: str) -> str:
    """A model's answer without the Markdown code fence it may wrap JSON in (```json … ```)."""
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = cleaned.split("\n", 1)[1] if "\n" in cleaned else ""
        cleaned = cleaned.rsplit("```", 1)[0]
    return cleaned.strip()
