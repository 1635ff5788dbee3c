"""A plain-dict picture of a pipeline and its results, for widgets, export and reports."""

from __future__ import annotations

import base64
import json
from typing import Any

from ._types import StepResult


def _output(result: StepResult | None) -> tuple[str, str, str | None]:
    if result is None or result.output is None:
        return "", "none", None
    out = result.output
    if isinstance(out, (bytes, bytearray)):
        return "", "image", base64.b64encode(bytes(out)).decode()
    if isinstance(out, str):
        return out, "markdown", None
    if hasattr(out, "model_dump_json"):
        return out.model_dump_json(indent=2), "json", None
    if isinstance(out, list) and out and all(isinstance(x, str) for x in out):
        return "\n\n---\n\n".join(out), "markdown", None
    try:
        return json.dumps(out, indent=2, ensure_ascii=False, default=str), "json", None
    except (TypeError, ValueError):
        return repr(out), "text", None


def node(name: str, step, result: StepResult | None, state: str | None = None, model: str | None = None) -> dict:
    """One graph node in the widget snapshot format."""
    text, kind, image = _output(result)
    r = result
    return {
        "id": name, "label": name, "kind": "python" if step.kind == "function" else step.kind,
        "state": state or (r.state if r else "pending"),
        "model": (r.model if r and r.model else model),
        "attempts": len(r.attempts) if r and r.attempts else None,
        "tokens": r.usage.total if r else None, "cost": r.cost if r else None,
        "latency": r.latency if r else None, "items": r.items if r else None,
        "gates": [{"name": g.name, "passed": g.passed, "score": g.score, "feedback": g.feedback} for g in (r.gates if r else [])],
        "prompt": r.prompt if r else None, "output": text, "output_kind": kind, "image_b64": image,
        "error": r.error if r else None, "started": r.started if r else None, "ended": r.ended if r else None,
        "attempt_spans": [[a.started, a.ended, a.outcome] for a in (r.attempts if r else [])],
    }


def snapshot(pipeline, results: dict[str, StepResult] | None = None, running: dict[str, float] | None = None,
             run: dict[str, Any] | None = None) -> dict:
    """The pipeline's graph with each step's latest state, in the widgets' snapshot format."""
    graph = pipeline.graph
    results = pipeline.results if results is None else results
    running = running or {}
    nodes = []
    for name in graph.order():
        step = graph.steps[name]
        model = None
        if step.kind in ("llm", "image"):
            try:
                model = pipeline.pool.resolve(step.model).spec
            except Exception:  # noqa: BLE001 - an unresolvable alias still draws
                model = step.model
        r = results.get(name)
        if name in running:
            n = node(name, step, None, "running", model)
            n["started"] = running[name]
        else:
            n = node(name, step, r, None, model)
        nodes.append(n)
    if run is None:
        last = pipeline.last_run
        run = {"id": last.run_id, "status": last.status, "cost": last.cost, "tokens": last.usage.total} if last else {}
    return {"nodes": nodes, "edges": [list(e) for e in graph.edges], "run": run}
