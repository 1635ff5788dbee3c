"""Plain-text and Markdown summaries of runs."""

from __future__ import annotations

import json
from typing import Any

from ._format import clip, fmt_cost, fmt_tokens, md_cell, md_table
from ._states import FAILED, SKIPPED


def preview(value: Any, width: int = 60) -> str:
    if value is None:
        return "—"
    if hasattr(value, "model_dump_json"):
        text = value.model_dump_json()
    elif isinstance(value, (bytes, bytearray)):
        return f"<image, {len(value):,} bytes>"
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return clip(" ".join(text.split()), width)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pngs(output: Any) -> list[bytes]:
    """The PNG images in a step output: an image step's bytes, or each item of an image map."""
    if isinstance(output, (bytes, bytearray)):
        return [bytes(output)] if bytes(output[:8]) == PNG_MAGIC else []
    if (
        isinstance(output, list)
        and output
        and all(isinstance(x, (bytes, bytearray)) for x in output)
    ):
        return [bytes(x) for x in output if bytes(x[:8]) == PNG_MAGIC]
    return []


def run_images(run) -> list[tuple[str, list[bytes]]]:
    """``[(step, [png, ...]), ...]`` for the run's steps whose output is one or more images."""
    out = []
    for name, r in run.results.items():
        images = pngs(r.output) if r.state not in (FAILED, SKIPPED) else []
        if images:
            out.append((name, images))
    return out


def summary_rows(run) -> list[list[str]]:
    rows = []
    for name, r in run.results.items():
        gates = ", ".join(
            f"{g.name}{' ✓' if g.passed else ' ✗'}"
            + (f" {g.score:.2f}" if g.score is not None and g.name == "rubric" else "")
            for g in r.gates
        )
        rows.append(
            [
                name,
                r.state,
                r.model or "—",
                str(len(r.attempts)) if r.attempts else "—",
                fmt_tokens(r.usage.total, estimated=r.usage.estimated),
                fmt_cost(r.cost),
                f"{r.latency:.2f}s" if r.latency is not None else "—",
                gates or "—",
                _image_note(r) or preview(r.error or r.output),
            ]
        )
    return rows


def _image_note(r) -> str:
    images = pngs(r.output) if not r.error else []
    if not images:
        return ""
    n = len(images)
    return f"{n} image{'s' if n != 1 else ''} ({sum(map(len, images)):,} bytes), below"


HEADER = ["step", "state", "model", "attempts", "tokens", "cost", "time", "gates", "output"]


def summary_table(run) -> str:
    """A Markdown table of a run, one row a step, with totals."""
    rows = summary_rows(run)
    lines = md_table(HEADER, rows)
    total = run.usage.total
    lines.append(
        f"\n**run {run.run_id}**: {run.status} · {len(rows)} steps · "
        f"{fmt_tokens(total)} tokens · {md_cell(fmt_cost(run.cost))} · {run.ended - run.started:.2f}s"
    )
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table for terminals."""
    widths = (
        [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
        if rows
        else [len(h) for h in header]
    )
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*map(str, row)) for row in rows]
    return "\n".join(out)
