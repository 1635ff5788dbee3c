"""The compare engine: a step's variants run side by side over a dataset, with the figures to judge.

For each data row, the steps upstream of STEP run once (the variants share them through the
cache); then STEP and everything downstream run once per variant × repeat, each a cell. Rows
run concurrently (``workers`` at a time) and model calls under the pool's usual per-provider
limits. Every finished cell is recorded in the store as part of an experiment, whose id is a
digest of what is compared: run again, the same compare skips finished cells (resume after an
interruption pays for nothing twice).

Figures per variant: rows, first-pass yield, final yield, mean score with a 95% bootstrap
interval, failures, tokens, cost per row, p50/p95 latency; and for each variant against
``base`` a paired verdict by row with an exact sign test (`nbconductor._stats`).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _stats
from ._compare_cells import cell_figures
from ._errors import OptionError
from ._executor import RunOptions, Session, execute
from ._graph import Graph
from ._loop import run_sync
from ._template import TEMPLATE_GLOBALS
from ._types import Step
from ._variants import BASE
from .store._experiments import (
    experiment_cells,
    experiment_pairs,
    record_cell,
    record_pair,
    save_experiment,
)

DEFAULT_WORKERS = 8
#: per-variant figures, and whether a higher value is better (for marking the best)
COLUMNS = {
    "rows": None,
    "first_pass_yield": True,
    "final_yield": True,
    "mean_score": True,
    "failures": False,
    "tokens": False,
    "cost_per_row": False,
    "p50_latency_s": False,
    "p95_latency_s": False,
}
Progress = Callable[[int, int], None]  # (cells done, cells in all)


@dataclass
class Plan:
    """A checked compare: what runs, before anything does."""

    step: str
    variants: list[str]
    steps: dict[str, Step]  # variant -> its declaration of STEP
    graphs: dict[str, Graph]
    upstream: list[str]  # steps run once per row, before the variants
    targets: list[str]  # STEP and its downstream, run per variant
    rows: list[dict[str, Any]]
    repeats: int
    workers: int
    pairwise: str | None = None
    experiment_id: str = ""


@dataclass
class Comparison:
    """A compare's cells and the figures drawn from them."""

    step: str
    experiment_id: str
    variants: list[str]
    rows: int
    repeats: int
    cells: list[dict[str, Any]] = field(default_factory=list)
    resumed: int = 0  # cells found finished in the store, not run again
    pairs: list[dict[str, Any]] = field(default_factory=list)  # pairwise judgements
    prefs: list[dict[str, Any]] = field(default_factory=list)  # people's blind preferences

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per variant: rows, yields, mean score and its interval, failures, tokens, cost per row,
        latencies; ``best`` lists the columns where the variant is best."""
        out = {
            v: variant_figures([c for c in self.cells if c["variant"] == v]) for v in self.variants
        }
        for column, higher in COLUMNS.items():
            values = {v: f[column] for v, f in out.items() if f[column] is not None}
            if higher is None or len(values) < 2 or len(set(values.values())) < 2:
                continue
            best = (max if higher else min)(values.values())
            for v, value in values.items():
                if value == best:
                    out[v]["best"].append(column)
        return out

    def row_scores(self, variant: str) -> dict[int, float]:
        """The variant's score per row (the mean over repeats)."""
        by_row: dict[int, list[float]] = {}
        for c in self.cells:
            if c["variant"] == variant and c["score"] is not None:
                by_row.setdefault(c["row_index"], []).append(c["score"])
        return {row: sum(v) / len(v) for row, v in by_row.items()}

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Each variant against ``base``: wins, losses, ties by row, the sign-test p, the winner."""
        base = BASE if BASE in self.variants else self.variants[0]
        base_scores = self.row_scores(base)
        out = {}
        for v in self.variants:
            if v == base:
                continue
            wins, losses, ties, p = _stats.paired(self.row_scores(v), base_scores)
            sentence, winner = _stats.verdict_sentence(v, base, wins, losses, ties, p)
            out[v] = {
                "vs": base,
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "p_value": round(p, 4),
                "winner": winner,
                "sentence": sentence,
            }
            pairs = [p for p in self.pairs if p["variant"] == v and p["vs"] == base]
            if pairs:
                from .gates._pairwise import pairwise_figures

                out[v]["pairwise"] = pairwise_figures(v, base, pairs)
            if self.prefs:
                from ._preferences import human_figures

                human = human_figures(v, base, self.prefs, self.pairs)
                if human:
                    out[v]["human"] = human
        return out

    def winners(self) -> dict[int, list[str]]:
        """Per row, the variants with its highest score."""
        scores = {v: self.row_scores(v) for v in self.variants}
        out = {}
        for row in range(self.rows):
            have = {v: s[row] for v, s in scores.items() if row in s}
            if have:
                top = max(have.values())
                out[row] = [v for v, s in have.items() if s == top]
        return out

    def to_json(self) -> dict[str, Any]:
        """The figures as ``--json`` prints them."""
        figures = self.figures()
        return {
            "step": self.step,
            "experiment": self.experiment_id,
            "rows": self.rows,
            "repeats": self.repeats,
            "variants": {
                v: {k: f[k] for k in (*COLUMNS, "score_ci", "best")} for v, f in figures.items()
            },
            "verdicts": self.verdicts(),
        }

    def text(self) -> str:
        from .render._compare import compare_text

        return compare_text(self)

    def _repr_html_(self) -> str:
        from .render._compare import compare_html

        return compare_html(self)

    def __repr__(self) -> str:
        return self.text()


def variant_figures(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one variant's cells."""
    n = len(cells)
    rows = len({c["row_index"] for c in cells})
    scores = [c["score"] for c in cells if c["score"] is not None]
    costs = [c["cost"] for c in cells]
    latencies = [c["latency"] for c in cells if c["latency"] is not None]
    ci = _stats.bootstrap_ci(scores)
    return {
        "rows": rows,
        "cells": n,
        "first_pass_yield": _r(sum(c["first_pass"] for c in cells) / n) if n else None,
        "final_yield": _r(sum(c["accepted"] for c in cells) / n) if n else None,
        "mean_score": _r(_stats.mean(scores)),
        "score_ci": [_r(ci[0]), _r(ci[1])] if ci else None,
        "failures": sum(c["failed"] for c in cells),
        "tokens": sum(c["tokens"] or 0 for c in cells),
        "cost_per_row": None
        if not rows or any(c is None for c in costs)
        else round(sum(costs) / rows, 6),
        "p50_latency_s": _r(_stats.percentile(latencies, 50)),
        "p95_latency_s": _r(_stats.percentile(latencies, 95)),
        "best": [],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# ------------------------------------------------------------------------------- checking


def plan_compare(
    pipeline,
    step: str,
    rows: list[dict[str, Any]],
    *,
    variants: list[str] | None = None,
    repeats: int = 1,
    workers: int | None = None,
    pairwise: str | None = None,
    data: str = "the data",
) -> Plan:
    """Check a compare before anything runs; raises `OptionError` with one line naming the fix."""
    if step not in pipeline.steps:
        pipeline.variant_step(step)  # raises, naming the steps there are
    names = list(variants) if variants else pipeline.variant_names(step)
    if BASE in names:  # what every other variant is measured against comes first
        names.remove(BASE)
        names.insert(0, BASE)
    if len(set(names)) != len(names):
        raise OptionError(f"compare {step}: --variants names a variant twice")
    declared = {name: pipeline.variant_step(step, name) for name in names}
    if len(names) < 2:
        raise OptionError(
            f"compare {step}: nothing to compare with — declare another version with "
            f"%%variant {step} NAME [options] (the step's own cell is `base`)"
        )
    if repeats < 1:
        raise OptionError(f"compare {step}: --repeats must be 1 or more, got {repeats}")
    if workers is not None and workers < 1:
        raise OptionError(f"compare {step}: --workers must be 1 or more, got {workers}")
    if pairwise is not None:
        pipeline.pool.resolve(pairwise)  # an unknown alias or provider: one line, now
    elif not any(s.rubric is not None or s.checks for s in declared.values()):
        raise OptionError(
            f"compare {step}: the step has no %%rubric and no --check, so there is nothing to "
            f"measure quality with: add `%%rubric {step}` (or --check on the step or a variant), "
            "or compare with --pairwise JUDGE"
        )
    if not rows:
        raise OptionError(f"compare {step}: {data} has no rows")
    graphs = {}
    for name, s in declared.items():
        graph = Graph({**pipeline.steps, step: s})
        graph.check()
        graphs[name] = graph
    base_graph = graphs[names[0]]
    targets = sorted({step} | base_graph.downstream([step]), key=base_graph.order().index)
    upstream: set[str] = set()
    for graph in graphs.values():
        upstream |= graph.upstream(targets) - set(targets)
    _check_columns(pipeline, step, graphs, upstream | set(targets), rows, data)
    plan = Plan(
        step,
        names,
        declared,
        graphs,
        base_graph.order(upstream),
        targets,
        rows,
        repeats,
        workers or DEFAULT_WORKERS,
        pairwise,
    )
    plan.experiment_id = _experiment_id(pipeline, plan)
    return plan


def _check_columns(pipeline, step, graphs, names, rows, data) -> None:
    reads: set[str] = set()
    for graph in graphs.values():
        for n in names:
            reads |= graph.external_names(n)
    reads -= set(pipeline.steps) | TEMPLATE_GLOBALS | set(dir(builtins))
    columns = {c for row in rows for c in row}
    extra = sorted(columns - reads - set(pipeline.namespace))
    if extra:
        raise OptionError(
            f"compare {step}: {data} has column{'s' * (len(extra) > 1)} "
            f"{', '.join(extra)} that no step reads (the pipeline reads: {', '.join(sorted(reads)) or 'nothing'})"
        )
    for i, row in enumerate(rows):
        missing = sorted(n for n in reads if n not in row and n not in pipeline.namespace)
        if missing:
            raise OptionError(
                f"compare {step}: {data} row {i} has no {', '.join(missing)} (columns needed: "
                f"{', '.join(sorted(reads))})"
            )


def _fingerprint(step: Step) -> dict[str, Any]:
    return {f.name: getattr(step, f.name) for f in dataclasses.fields(step) if f.name != "fn"}


def _experiment_id(pipeline, plan: Plan) -> str:
    spec = {
        "step": plan.step,
        "variants": {v: _fingerprint(s) for v, s in plan.steps.items()},
        "steps": {n: _fingerprint(pipeline.steps[n]) for n in [*plan.upstream, *plan.targets]},
        "rows": plan.rows,
        "repeats": plan.repeats,
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return "x" + hashlib.sha256(text.encode()).hexdigest()[:15]


# -------------------------------------------------------------------------------- running


def compare(pipeline, step: str, rows: list[dict[str, Any]], **kwargs: Any) -> Comparison:
    """`acompare`, synchronously."""
    return run_sync(acompare(pipeline, step, rows, **kwargs))


async def acompare(
    pipeline,
    step: str,
    rows: list[dict[str, Any]],
    *,
    variants: list[str] | None = None,
    repeats: int = 1,
    workers: int | None = None,
    progress: Progress | None = None,
    pairwise: str | None = None,
    data: str = "the data",
) -> Comparison:
    """Compare ``step``'s variants over ``rows``; returns a `Comparison` (also in the store).

    Raises `OptionError` (before anything runs) for an unknown step or variant, too few
    variants, a bad ``repeats``/``workers``, no quality gate, or rows that do not match the
    pipeline's parameters.
    """
    plan = plan_compare(
        pipeline,
        step,
        rows,
        variants=variants,
        repeats=repeats,
        workers=workers,
        pairwise=pairwise,
        data=data,
    )
    store = pipeline.store
    save_experiment(
        store, plan.experiment_id, step, plan.variants, len(rows), repeats, pipeline.notebook
    )
    found = experiment_cells(store, plan.experiment_id)
    done = {(c["row_index"], c["variant"], c["repeat_index"]) for c in found}
    result = Comparison(step, plan.experiment_id, plan.variants, len(rows), repeats, list(found))
    result.resumed = len(found)
    result.pairs = [
        p for p in experiment_pairs(store, plan.experiment_id) if p["judge"] == pairwise
    ]
    judged = {(p["row_index"], p["variant"]) for p in result.pairs}
    from .store._experiments import experiment_prefs

    result.prefs = experiment_prefs(store, plan.experiment_id)
    total = len(rows) * len(plan.variants) * repeats
    finished = [len(found)]
    if progress:
        progress(finished[0], total)
    gate = asyncio.Semaphore(plan.workers)

    async def run_row(i: int, row: dict[str, Any]) -> None:
        todo = [(v, r) for v in plan.variants for r in range(repeats) if (i, v, r) not in done]
        if not todo:
            if pairwise and any((i, v) not in judged for v in plan.variants[1:]):
                await judge_row(i, row)
            return
        async with gate:
            namespace = {**pipeline.namespace, **row}
            if plan.upstream:
                await execute(
                    _session(pipeline, plan.graphs[plan.variants[0]], namespace),
                    plan.upstream,
                    RunOptions(notebook=pipeline.notebook),
                )
            cells = await asyncio.gather(*(run_cell(i, row, namespace, v, r) for v, r in todo))
            result.cells.extend(cells)
            if pairwise:
                await judge_row(i, row)

    async def judge_row(i: int, row: dict[str, Any]) -> None:
        from .gates._pairwise import judge_pair

        outputs = {
            c["variant"]: c["output"]
            for c in result.cells
            if c["row_index"] == i and c["repeat_index"] == 0
        }
        base = plan.variants[0]
        task = "; ".join(f"{k}: {v}" for k, v in row.items())
        todo = [v for v in plan.variants[1:] if (i, v) not in judged and v in outputs]
        verdicts = await asyncio.gather(
            *(
                judge_pair(pipeline.pool, pairwise, task, outputs[v] or "", outputs.get(base) or "")
                for v in todo
            )
        )
        for v, verdict in zip(todo, verdicts, strict=True):
            winner = {"first": v, "second": base, "tie": "tie"}[verdict["winner"]]
            pair = {
                "row_index": i,
                "variant": v,
                "vs": base,
                "judge": pairwise,
                "winner": winner,
                "flipped": verdict["flipped"],
                "reasons": verdict["reasons"],
            }
            record_pair(store, plan.experiment_id, pair)
            result.pairs.append(pair)

    async def run_cell(i, row, namespace, variant: str, repeat: int) -> dict[str, Any]:
        session = _session(pipeline, plan.graphs[variant], namespace)
        # A repeat asks again rather than reading the first answer from the cache.
        force = set(plan.targets) if repeat else False
        run = await execute(session, plan.targets, RunOptions(force, notebook=pipeline.notebook))
        cell = cell_figures(run.results, plan.step, plan.targets)
        cell.update(
            row_index=i, variant=variant, repeat_index=repeat, run_id=run.run_id, params=row
        )
        record_cell(store, plan.experiment_id, cell)
        finished[0] += 1
        if progress:
            progress(finished[0], total)
        return cell

    await asyncio.gather(*(run_row(i, row) for i, row in enumerate(rows)))
    result.cells.sort(
        key=lambda c: (c["row_index"], plan.variants.index(c["variant"]), c["repeat_index"])
    )
    save_experiment(
        store,
        plan.experiment_id,
        step,
        plan.variants,
        len(rows),
        repeats,
        pipeline.notebook,
        status="finished",
        summary=result.to_json(),
    )
    return result


def load_comparison(store, experiment_id: str) -> Comparison:
    """A recorded compare, rebuilt from the store (its cells, judgements and preferences, as
    they are now); raises `OptionError` for an id the store does not hold."""
    from .store._experiments import experiment_prefs, experiments

    found = [e for e in experiments(store, limit=10_000) if e["id"] == experiment_id]
    if not found:
        raise OptionError(f"no experiment {experiment_id!r} in the store")
    e = found[0]
    result = Comparison(
        e["step"], e["id"], e["variants"], e["rows"], e["repeats"], experiment_cells(store, e["id"])
    )
    result.pairs = experiment_pairs(store, e["id"])
    result.prefs = experiment_prefs(store, e["id"])
    return result


def _session(pipeline, graph: Graph, namespace: dict[str, Any]) -> Session:
    return Session(
        graph, namespace, pipeline.contexts, pipeline.store, pipeline.pool, pipeline.memory
    )
