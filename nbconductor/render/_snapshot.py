"""A plain-dict picture of a pipeline and its results, for widgets, export and reports.

``snapshot(pipeline)`` is what the graph widget, the timeline and the static SVG draw: one
node per declared step (in topological order) with its latest state, model, attempts,
tokens, cost, latency, item count, gates, prompt and output, plus the edges and a run line.
Node states are the widget palette's: pending, running, cached, passed, flagged, failed,
skipped (a reviewed result shows as passed, a rejected one as failed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._states import (
    APPROVED,
    CACHED,
    EDITED,
    FAILED,
    FLAGGED,
    PASSED,
    PENDING,
    REJECTED,
    RUNNING,
    SKIPPED,
)
from .._types import Attempt, StepResult

#: review decisions kept in a result's state -> the state the graph shows
_DECIDED = {APPROVED: PASSED, EDITED: PASSED, REJECTED: FAILED}


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
        return json.dumps(out, indent=2, ensure_ascii=False, default=_plain), "json", None
    except (TypeError, ValueError):
        return repr(out), "text", None


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def _attempt_state(att: Attempt, last: bool, final: str) -> str:
    """An attempt's outcome in palette terms: a gate failure that ended a flagged step is
    ``flagged``, one that led to a retry is ``failed``."""
    if att.outcome == PASSED:
        return PASSED
    if att.outcome == SKIPPED:
        return SKIPPED
    if att.outcome == "gate" and last and final == FLAGGED:
        return FLAGGED
    return FAILED


def attempt_spans(result: StepResult | None) -> list[list[Any]]:
    """``[[start, end, state], ...]`` of a result's attempts, for the timeline.

    A cached result is one span at the moment it was served (its stored attempts belong to
    the run that produced it); a result without attempts (a Python step) is its own span.
    """
    if result is None or result.started is None:
        return []
    state = _DECIDED.get(result.state, result.state)
    if result.cached or state == CACHED:
        return [[result.started, result.ended, CACHED]]
    if not result.attempts:
        return [[result.started, result.ended, state]]
    last = len(result.attempts) - 1
    return [
        [a.started, a.ended, _attempt_state(a, i == last, state)]
        for i, a in enumerate(result.attempts)
    ]


def _awaiting_review(pipeline, result: StepResult) -> bool:
    """Whether a cached result is a flagged output nobody has decided on yet.

    The executor calls any cache hit ``cached``; the graph shows one still waiting in the
    review queue as ``flagged``, so the signal is not lost on the next run.
    """
    if not result.cache_key or result.items is not None or all(g.passed for g in result.gates):
        return False
    hit = pipeline.memory.get(result.cache_key)
    if hit is None:
        try:
            hit = pipeline.store.lookup(result.cache_key)
        except Exception:  # noqa: BLE001 - a closed or missing store: show what the run said
            return False
    return hit is not None and hit.state == FLAGGED


def node(
    name: str, step, result: StepResult | None, state: str | None = None, model: str | None = None
) -> dict:
    """One graph node in the widget snapshot format."""
    text, kind, image = _output(result)
    r = result
    return {
        "id": name,
        "label": name,
        "kind": "python" if step.kind == "function" else step.kind,
        "state": state or (_DECIDED.get(r.state, r.state) if r else PENDING),
        "model": (r.model if r and r.model else model),
        "attempts": len(r.attempts) if r and r.attempts else None,
        "tokens": r.usage.total if r else None,
        "tokens_estimated": bool(r and r.usage.estimated),
        "cost": r.cost if r else None,
        "latency": r.latency if r else None,
        "items": r.items if r else None,
        "gates": [
            {"name": g.name, "passed": g.passed, "score": g.score, "feedback": g.feedback}
            for g in (r.gates if r else [])
        ],
        "prompt": r.prompt if r else None,
        "output": text,
        "output_kind": kind,
        "image_b64": image,
        "error": r.error if r else None,
        "started": r.started if r else None,
        "ended": r.ended if r else None,
        "attempt_spans": attempt_spans(r),
    }


def _running_node(
    name: str, step, model: str | None, started: float, attempts: Sequence[Attempt]
) -> dict:
    n = node(name, step, None, RUNNING, model)
    done = list(attempts)
    tokens = [a.usage.total for a in done if a.usage.total is not None]
    costs = [a.cost for a in done]
    n.update(
        started=started,
        attempts=len(done) + 1,  # the one in flight
        tokens=sum(tokens) if tokens else None,
        cost=sum(costs) if done and None not in costs else None,
        model=done[-1].model if done else model,
        attempt_spans=[
            [a.started, a.ended, FAILED if a.outcome != PASSED else PASSED] for a in done
        ]
        + [[done[-1].ended if done else started, None, RUNNING]],
    )
    return n


def step_model(pipeline, step) -> str | None:
    """The model spec a step's node shows before it runs: its alias resolved, when it has one."""
    if step.kind not in ("llm", "image"):
        return None
    try:
        return pipeline.pool.resolve(step.model).spec
    except Exception:  # noqa: BLE001 - an unresolvable alias still draws
        return step.model


def step_node(
    pipeline,
    name: str,
    step,
    model: str | None,
    result: StepResult | None,
    started: float | None = None,
    attempts: Sequence[Attempt] = (),
) -> dict:
    """One step's node: running (since ``started``, with its finished ``attempts``) or its
    ``result``'s state. What `snapshot` draws for each step, for callers that redraw one."""
    if started is not None:
        return _running_node(name, step, model, started, attempts)
    flagged = result is not None and result.state == CACHED and _awaiting_review(pipeline, result)
    return node(name, step, result, FLAGGED if flagged else None, model)


def run_line(pipeline) -> dict[str, Any]:
    """The snapshot's run dict for the pipeline's last run (empty if it never ran)."""
    last = pipeline.last_run
    if not last:
        return {}
    return {"id": last.run_id, "status": last.status, "cost": last.cost, "tokens": last.usage.total}


def snapshot(
    pipeline,
    results: Mapping[str, StepResult] | None = None,
    running: Mapping[str, float] | None = None,
    run: Mapping[str, Any] | None = None,
    *,
    attempts: Mapping[str, Sequence[Attempt]] | None = None,
    steps: Sequence[str] | None = None,
    graph=None,
) -> dict:
    """The pipeline's graph with each step's latest state, in the widgets' snapshot format.

    ``results`` default to the pipeline's latest; a step in ``running`` (name -> start time)
    is drawn running, with its finished ``attempts`` so far. ``steps`` keeps only those
    nodes (and the edges between them). ``run`` defaults to the pipeline's last run.
    ``graph`` is the pipeline's graph when the caller already has it (building it parses
    every step).
    """
    graph = pipeline.graph if graph is None else graph
    results = pipeline.results if results is None else results
    running = running or {}
    attempts = attempts or {}
    keep = set(graph.steps) if steps is None else set(steps)
    nodes = []
    for name in graph.order():
        if name not in keep:
            continue
        step = graph.steps[name]
        nodes.append(
            step_node(
                pipeline,
                name,
                step,
                step_model(pipeline, step),
                results.get(name),
                running.get(name),
                attempts.get(name, ()),
            )
        )
    run = run_line(pipeline) if run is None else run
    edges = [list(e) for e in graph.edges if e[0] in keep and e[1] in keep]
    return {"nodes": nodes, "edges": edges, "run": dict(run)}
