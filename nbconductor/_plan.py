"""``--dry-run``: what a run would send, with estimated tokens and cost. Sends nothing."""

from __future__ import annotations

from typing import Any

from ._executor import Session, _params, check_names
from ._pricing import cost_of
from ._request import build_request
from ._template import parse_map, template_names
from ._types import Usage
from .gates._judge import JUDGE_MAX_TOKENS, JUDGE_SYSTEM

DEFAULT_OUTPUT_TOKENS = 500
JUDGE_OUTPUT_TOKENS = 200  # a verdict: a score and a few sentences of feedback


def _tokens(text: str | None) -> int:
    return len(text or "") // 4 + 1


def plan(pipeline, namespace: dict[str, Any], targets: list[str] | None) -> list[dict]:
    """One dict per step: step, model, cached, calls, input_tokens, output_tokens, cost.

    ``calls`` counts the judge's calls of a step with a rubric too (one per answer)."""
    graph = pipeline.graph
    names = graph.order(graph.upstream(targets) if targets else None)
    check_names(graph, names, namespace)
    session = Session(
        graph,
        namespace,
        pipeline.contexts,
        pipeline.store,
        pipeline.pool,
        pipeline.memory,
        params=_params(namespace, graph, names),
    )  # history() as the run would see it
    known: dict[str, Any] = {}
    pending_out: dict[str, int] = {}  # estimated output tokens of steps that will run
    rows = []
    for name in names:
        step = graph.steps[name]
        values = {**namespace, **{d: known.get(d, f"<output of {d}>") for d in graph.deps[name]}}
        row = {
            "step": name,
            "model": None,
            "cached": False,
            "calls": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": 0.0,
        }
        if step.kind in ("python", "function"):
            prev = pipeline.results.get(name)
            known[name] = prev.output if prev else None
            rows.append(row)
            continue
        items: list = [None]
        if step.map:
            var, expr = parse_map(step.map, name)
            try:
                items = [{var: v} for v in eval(expr, {**values})]  # noqa: S307
            except Exception:  # noqa: BLE001 - upstream output not known yet
                items = [{var: f"<item of {expr}>"}]
        # An upstream step that will run is a placeholder in the prompt; count its estimated
        # output instead, since that is what the real prompt will carry.
        in_prompt = template_names(step.body, name)
        upstream_tokens = sum(pending_out.get(d, 0) for d in graph.deps[name] if d in in_prompt)
        cached_all = True
        for item in items:
            request, models, key = build_request(session, step, {**values, **(item or {})})
            cached = bool(pipeline.memory.get(key) or pipeline.store.lookup(key))
            cached_all &= cached
            row["model"] = models[0].spec
            if cached:
                continue
            out = step.max_tokens or DEFAULT_OUTPUT_TOKENS
            inp = _tokens(request.system_text()) + _tokens(request.prompt) + upstream_tokens
            row["calls"] += 1
            row["input_tokens"] += inp
            row["output_tokens"] += out
            c = cost_of(
                models[0], Usage(inp, out), pipeline.config, images=int(step.kind == "image")
            )
            row["cost"] = None if row["cost"] is None or c is None else row["cost"] + c
            if step.rubric is not None:  # the judge reads the prompt and the answer once
                judge = pipeline.pool.resolve(step.rubric.judge or "judge")
                j_in = _tokens(JUDGE_SYSTEM) + _tokens(step.rubric.text) + inp + out
                j_out = min(step.rubric.max_tokens or JUDGE_MAX_TOKENS, JUDGE_OUTPUT_TOKENS)
                row["calls"] += 1
                row["judge_calls"] = row.get("judge_calls", 0) + 1
                row["input_tokens"] += j_in
                row["output_tokens"] += j_out
                jc = cost_of(judge, Usage(j_in, j_out), pipeline.config)
                row["cost"] = None if row["cost"] is None or jc is None else row["cost"] + jc
        row["cached"] = cached_all
        prev = pipeline.results.get(name)
        known[name] = prev.output if prev and cached_all else f"<output of {name}>"
        if row["output_tokens"]:
            pending_out[name] = row["output_tokens"]
        rows.append(row)
    return rows
