"""When each step ran: one row per step, one bar per attempt (pure Python, static SVG).

Overlapping bars across rows are the parallelism; a retried step shows its failed attempts
before the one that passed. ``TimelineView(snapshot)`` displays as SVG with a text
fallback; ``render_timeline_svg`` / ``render_timeline_text`` are the functions behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from .._format import fmt_seconds
from .._states import CACHED, FAILED, FLAGGED, PASSED, PENDING, RUNNING
from ._layout import FONT, PALETTE

__all__ = ["TimelineView", "render_timeline_svg", "render_timeline_text", "timeline_rows"]

LABEL_W, CHART_W, ROW_H, BAR_H, TOP = 150.0, 640.0, 26.0, 16.0, 58.0


def timeline_rows(snapshot: Mapping[str, Any]) -> tuple[list[dict[str, Any]], float, float]:
    """Return ``(rows, t0, t1)``: per step its label, state and attempt spans, by start time.

    Each span is ``(start, end, state, open)``; ``open`` marks a running attempt, drawn up to
    ``snapshot["run"]["now"]`` if given, else the latest time in the snapshot. Steps that never started have no spans and sort last.
    """
    rows = []
    for node in snapshot.get("nodes") or []:
        spans = [list(s) + [None] * (3 - len(s)) for s in node.get("attempt_spans") or []]
        if not spans and node.get("started") is not None:
            spans = [[node["started"], node.get("ended"), node.get("state")]]
        rows.append(
            {
                "id": str(node["id"]),
                "label": str(node.get("label") or node["id"]),
                "state": node.get("state") or PENDING,
                "spans": [(float(a), None if b is None else float(b), s) for a, b, s in spans],
            }
        )
    times = [t for r in rows for a, b, _ in r["spans"] for t in (a, b) if t is not None]
    t0, t1 = (min(times), max(times)) if times else (0.0, 0.0)
    now = (snapshot.get("run") or {}).get("now")
    if now is not None and times:
        t1 = max(t1, float(now))
    for r in rows:
        r["spans"] = [
            (a, t1 if b is None else b, s if s in PALETTE else r["state"], b is None)
            for a, b, s in r["spans"]
        ]
    rows.sort(key=lambda r: (not r["spans"], r["spans"][0][0] if r["spans"] else 0.0))
    return rows, t0, t1


def _peak(rows: list[dict[str, Any]]) -> int:
    events = []
    for r in rows:
        if r["spans"]:
            events += [(r["spans"][0][0], 1), (max(b for _, b, _, _ in r["spans"]), -1)]
    peak = level = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        peak = max(peak, level)
    return peak


def _lanes(spans: list) -> tuple[list[int], int]:
    """A lane per span so that overlapping spans (a ``--map`` step's items, run in
    parallel) sit one above the other: ``(lane of each span, number of lanes)``."""
    ends: list[float] = []
    lane = []
    for a, b, _, _ in spans:
        free = next((i for i, end in enumerate(ends) if end <= a + 1e-9), None)
        if free is None:
            free = len(ends)
            ends.append(b)
        else:
            ends[free] = b
        lane.append(free)
    return lane, max(len(ends), 1)


def _tick_step(span: float) -> float:
    raw = span / 6 if span > 0 else 1.0
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def _headline(snapshot: Mapping[str, Any], rows: list, t0: float, t1: float) -> str:
    run = snapshot.get("run") or {}
    parts = ["Timeline"]
    if run.get("id"):
        parts.append(f"run {run['id']}")
    if t1 > t0:
        parts.append(f"{fmt_seconds(t1 - t0)} wall")
    parts.append(f"peak {_peak(rows)} in parallel")
    return " · ".join(parts)


def render_timeline_svg(snapshot: Mapping[str, Any]) -> str:
    """Return an SVG Gantt chart of the snapshot: one ``rect.nbc-attempt`` per attempt.

    Bars carry ``data-node``, ``data-attempt`` (1-based) and ``data-state``; text is escaped.
    """
    rows, t0, t1 = timeline_rows(snapshot)
    span = max(t1 - t0, 1e-9)
    scale = CHART_W / span
    width = LABEL_W + CHART_W + 40
    height = TOP + ROW_H * max(len(rows), 1) + 12
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="nbc-timeline" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" font-family="{escape(FONT)}">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#FFFFFF"/>',
        f'<text x="12" y="20" font-size="13" font-weight="600" fill="#1B1B1B">'
        f"{escape(_headline(snapshot, rows, t0, t1))}</text>",
    ]
    for i in range(0, len(rows), 2):  # zebra rows, under the grid
        out.append(
            f'<rect x="0" y="{TOP + i * ROW_H:.0f}" width="{width:.0f}" height="{ROW_H:.0f}" '
            f'fill="#F6F6F6"/>'
        )
    if t1 > t0:
        step = _tick_step(span)
        k = 0
        while k * step <= span + 1e-9:
            x = LABEL_W + k * step * scale
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 12:.0f}" y2="{height - 8:.0f}" '
                f'stroke="#E3E3E3"/><text x="{x:.1f}" y="{TOP - 16:.0f}" font-size="10" '
                f'text-anchor="middle" fill="#6A6A6A">{k * step:g}s</text>'
            )
            k += 1
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        muted = "" if row["spans"] else ' fill-opacity="0.55"'
        label = row["label"] if len(row["label"]) <= 22 else row["label"][:21] + "…"
        out.append(
            f'<g class="nbc-row" data-node="{escape(row["id"])}">'
            f'<text x="{LABEL_W - 10:.0f}" y="{y + 15:.0f}" font-size="12" text-anchor="end" '
            f'fill="#1B1B1B"{muted}>{escape(label)}</text>'
        )
        if not row["spans"]:
            out.append(
                f'<text x="{LABEL_W + 4:.0f}" y="{y + 15:.0f}" font-size="11" fill="#8C8C8C">'
                f"{escape(str(row['state']))}</text>"
            )
        lane, lanes = _lanes(row["spans"])
        gap = 2.0 if lanes <= 4 else 0.0  # many parallel items: a solid band
        bar_h = BAR_H if lanes == 1 else max((ROW_H - 6 - gap * (lanes - 1)) / lanes, 1.0)
        for n, (a, b, state, is_open) in enumerate(row["spans"], 1):
            x, w = LABEL_W + (a - t0) * scale, max((b - a) * scale, 4.0)
            top = y + (ROW_H - BAR_H) / 2 if lanes == 1 else y + 3 + lane[n - 1] * (bar_h + gap)
            c = PALETTE.get(state, PALETTE[PENDING])
            dash = ' stroke-dasharray="4 2"' if is_open else ""
            out.append(
                f'<rect class="nbc-attempt" data-node="{escape(row["id"])}" data-attempt="{n}" '
                f'data-state="{escape(str(state))}" x="{x:.1f}" y="{top:.1f}" '
                f'width="{w:.1f}" height="{bar_h:.1f}" rx="{min(3.0, bar_h / 2):.1f}" fill="{c["fill"]}" '
                f'stroke="{c["stroke"]}" stroke-width="{1.5 if lanes == 1 else 1}"{dash}>'
                f"<title>{escape(row['label'])} attempt {n}: {escape(str(state))}, "
                f"{fmt_seconds(b - a)}</title></rect>"
            )
            if w > 26 and lanes == 1:
                out.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + 17:.0f}" font-size="10" '
                    f'text-anchor="middle" fill="#1B1B1B">{c["glyph"]} {n}</text>'
                )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


_BAR_CHAR = {PASSED: "█", CACHED: "█", FLAGGED: "▓", FAILED: "░", RUNNING: "▒"}


def render_timeline_text(snapshot: Mapping[str, Any], width: int = 40) -> str:
    """Return the timeline as text: one line per step with an ASCII bar and its times."""
    rows, t0, t1 = timeline_rows(snapshot)
    lines = [_headline(snapshot, rows, t0, t1)]
    span = max(t1 - t0, 1e-9)
    w = max([len(r["label"]) for r in rows] + [4])
    for row in rows:
        cells = [" "] * width
        for a, b, state, _ in row["spans"]:
            lo = min(int((a - t0) / span * width), width - 1)
            hi = max(lo + 1, math.ceil((b - t0) / span * width))
            for i in range(lo, min(hi, width)):
                cells[i] = _BAR_CHAR.get(state, "▒")
        if row["spans"]:
            start, end = row["spans"][0][0] - t0, max(b for _, b, _, _ in row["spans"]) - t0
            n = len(row["spans"])
            tail = f"{start:.2f}–{end:.2f} s  {n} attempt{'s' if n != 1 else ''}"
        else:
            tail = str(row["state"])
        lines.append(f"{row['label']:<{w}} |{''.join(cells)}| {tail}")
    return "\n".join(lines)


class TimelineView:
    """The last run's timeline; displays as SVG (``image/svg+xml``) with a text fallback."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snapshot = snapshot

    def update(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the snapshot shown (re-display or update a display handle to redraw)."""
        self.snapshot = snapshot

    def to_svg(self) -> str:
        """Return the timeline as a standalone SVG document."""
        return render_timeline_svg(self.snapshot)

    def to_text(self) -> str:
        """Return the timeline as plain text."""
        return render_timeline_text(self.snapshot)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.to_svg(), "text/plain": self.to_text()}

    def __repr__(self) -> str:
        return self.to_text()
