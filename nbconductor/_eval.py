"""Regression eval: the whole pipeline over a dataset, per-step figures, and a baseline check.

`evaluate` runs every step for each data row (concurrently, through the cache, so an unchanged
pipeline costs nothing) and returns per step: first-pass yield, final yield, mean score (the
rubric's, else 1/0 for gates passed; None for a step without gates), cost, and each row's
values. `regressions` pairs a new eval with a saved baseline by row (the same parameters) and
names each step whose first-pass yield or mean score dropped by more than ``max_drop`` *and*
significantly (an exact sign test over the paired rows, p < 0.05): a CI gate that ignores noise.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from . import _stats
from ._compare_cells import cell_figures
from ._executor import RunOptions, Session, execute
from ._loop import run_sync
from ._redact import redact


def evaluate(pipeline, rows: list[dict[str, Any]], *, workers: int = 8) -> dict[str, Any]:
    """Per-step figures of the pipeline over ``rows`` (JSON-ready; `save` writes it)."""
    return run_sync(_evaluate(pipeline, rows, workers))


async def _evaluate(pipeline, rows, workers: int) -> dict[str, Any]:
    graph = pipeline.graph
    order = graph.order()
    gate = asyncio.Semaphore(max(1, workers))

    async def one(row):
        async with gate:
            session = Session(
                graph,
                {**pipeline.namespace, **row},
                pipeline.contexts,
                pipeline.store,
                pipeline.pool,
                pipeline.memory,
            )
            run = await execute(session, None, RunOptions(notebook=pipeline.notebook))
            return {n: cell_figures(run.results, n, [n]) for n in order if n in run.results}

    per_row = await asyncio.gather(*(one(row) for row in rows))
    steps: dict[str, Any] = {}
    for name in order:
        cells = [(key(row), r[name]) for row, r in zip(rows, per_row, strict=True) if name in r]
        n = len(cells)
        scores = [c["score"] for _, c in cells if c["score"] is not None]
        costs = [c["cost"] for _, c in cells]
        steps[name] = {
            "rows": n,
            "first_pass_yield": _r(sum(c["first_pass"] for _, c in cells) / n) if n else None,
            "final_yield": _r(sum(c["accepted"] for _, c in cells) / n) if n else None,
            "mean_score": _r(_stats.mean(scores)),
            "cost": None if any(c is None for c in costs) else round(sum(costs), 6),
            "per_row": {k: {"first_pass": c["first_pass"], "score": c["score"]} for k, c in cells},
        }
    return {"rows": len(rows), "steps": steps}


def key(row: dict[str, Any]) -> str:
    """A row's identity for pairing: its parameters as canonical JSON."""
    return redact(json.dumps(row, sort_keys=True, default=str))  # --save writes it to a file


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def regressions(
    current: dict[str, Any], baseline: dict[str, Any], max_drop: float = 0.05
) -> list[str]:
    """One sentence per significant drop beyond ``max_drop``; empty when none."""
    out = []
    for name, base in baseline.get("steps", {}).items():
        now = current["steps"].get(name)
        if now is None:
            continue
        for figure, field, label in (
            ("first_pass_yield", "first_pass", "first-pass yield"),
            ("mean_score", "score", "mean score"),
        ):
            before, after = base.get(figure), now.get(figure)
            if before is None or after is None or before - after <= max_drop + 1e-12:
                continue
            pairs = {
                k: (float(base["per_row"][k][field]), float(now["per_row"][k][field]))
                for k in base.get("per_row", {}).keys() & now["per_row"].keys()
                if base["per_row"][k][field] is not None and now["per_row"][k][field] is not None
            }
            wins, losses, ties, p = _stats.paired(
                {k: a for k, (_, a) in pairs.items()}, {k: b for k, (b, _) in pairs.items()}
            )
            if losses > wins and p < _stats.ALPHA:
                out.append(
                    f"step `{name}`: {label} dropped {_shown(before, figure)} → "
                    f"{_shown(after, figure)} (by {before - after:.2f}, more than {max_drop:g}; "
                    f"worse on {losses} of {len(pairs)} rows, {_stats.p_text(p)}, sign test)"
                )
    return out


def _shown(x: float, figure: str) -> str:
    return f"{x:.0%}" if figure.endswith("yield") else f"{x:.2f}"


def eval_text(result: dict[str, Any]) -> str:
    from ._summary import fmt_cost, text_table

    rows = [
        [
            name,
            str(s["rows"]),
            "—" if s["first_pass_yield"] is None else f"{s['first_pass_yield']:.0%}",
            "—" if s["final_yield"] is None else f"{s['final_yield']:.0%}",
            "—" if s["mean_score"] is None else f"{s['mean_score']:.2f}",
            fmt_cost(s["cost"]),
        ]
        for name, s in result["steps"].items()
    ]
    header = ["step", "rows", "first-pass", "final", "mean score", "cost"]
    return text_table(header, rows)
