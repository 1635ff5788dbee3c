"""One compare cell's figures, from the results of its run (also what `_eval` counts per step)."""

from __future__ import annotations

import json
from typing import Any

from ._redact import redact
from ._states import CACHED, FAILED, PASSED, PENDING
from ._types import StepResult


def cell_figures(results: dict[str, StepResult], step: str, targets: list[str]) -> dict[str, Any]:
    """One cell's figures from its run: STEP's state, gates and score; tokens, cost and latency
    of STEP and its downstream."""
    res = results[step]
    ran = [results[n] for n in targets if n in results]
    first = res.state in (PASSED, CACHED) and not any(a.quality_failure for a in res.attempts)
    rubric = next((g for g in res.gates if g.name == "rubric" and g.score is not None), None)
    if rubric is not None:
        score = rubric.score
    elif res.gates:
        score = 1.0 if all(g.passed for g in res.gates) else 0.0
    else:
        score = 0.0 if res.state == FAILED else None
    costs = [r.cost for r in ran]
    return {
        "result_id": res.result_id,
        "state": res.state,
        "first_pass": first,
        "accepted": res.state in (PASSED, CACHED),
        "failed": any(r.state in (FAILED, PENDING) for r in ran),
        "score": score,
        "tokens": sum(r.usage.total or 0 for r in ran),
        "cost": None if any(c is None for c in costs) else sum(costs),
        "latency": sum(r.latency or 0.0 for r in ran if not r.cached),
        "gates": [{"name": g.name, "passed": g.passed, "score": g.score} for g in res.gates],
        "output": None if res.output is None else redact(_text(res.output) or ""),
    }


def _text(output: Any) -> str | None:
    if output is None or isinstance(output, (bytes, bytearray)):
        return None if output is None else f"<image, {len(output):,} bytes>"
    if isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return output.model_dump_json()
    return json.dumps(output, ensure_ascii=False, default=str)
