"""The executor: runs a `Graph` against a store, steps concurrently as soon as their inputs exist.

One asyncio task per step awaits its upstream tasks, so independent steps (and the items of a
``--map``) run in parallel and wall time follows the critical path. Each finished step is
written to the store at once: an interrupted run loses nothing, and a re-run finds finished
steps by cache key (`_cache`). What a model step sends and how its answer is read live in
`_request`; the attempts, gates and fallbacks of one step in `_ladder`.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _trace
from ._cache import cache_key, cache_lookup, schema_class, stable_hash
from ._errors import DefinitionError, StepFailed, UnknownNameError
from ._graph import Graph, function_params
from ._ladder import GateContext, LadderFailed, charge, evaluate_gates, run_ladder
from ._map import combine_items
from ._pool import ProviderPool
from ._pycode import run_python
from ._request import build_request, parser
from ._result import RunResult
from ._states import FAILED, FLAGGED, INTERRUPTED, PASSED, PENDING, SKIPPED
from ._template import TEMPLATE_GLOBALS, parse_map
from ._types import Step, StepResult, Usage
from .gates._rules import gates_for
from .store._sqlite import Store

Observer = Callable[[str, str, Any], None]  # (event, step, payload)
# Names IPython puts in every notebook namespace: never what a typo meant.
_SHELL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


@dataclass
class RunOptions:
    force: bool | set[str] = False
    observer: Observer | None = None
    stream: bool = False
    notebook: str | None = None


@dataclass
class Session:
    """What the executor needs from a pipeline: the graph and where things live."""

    graph: Graph
    namespace: dict[str, Any]
    contexts: dict[str, str]
    store: Store
    pool: ProviderPool
    memory: dict[str, StepResult] = field(default_factory=dict)  # in-process cache by key
    run_id: str = ""
    notebook: str | None = None
    started: float | None = None  # when the run began: where `history()` ends
    params: dict[str, Any] | None = (
        None  # the run's parameters: `history()` leaves out the same brief
    )

    def remember(self, result: StepResult, step: Step, item: int | None = None) -> None:
        """Record a fresh result in the store and the in-process cache."""
        result.result_id = self.store.record(self.run_id, result, self.notebook, None, item)
        _trace.stored(self.store, result)
        if step.audit and item is None and result.state == PASSED:
            from .store._audit import add_audit, sampled

            if sampled(step.name, result.cache_key or str(result.result_id), step.audit):
                add_audit(self.store, result.result_id, step.name, step.audit)
        if result.state in (PASSED, FLAGGED) and result.cache_key and not step.no_cache:
            self.memory[result.cache_key] = result


def check_names(graph: Graph, names: list[str], namespace: dict) -> None:
    """Raise `UnknownNameError` for a name no step, parameter or variable provides."""
    for name in names:
        step = graph.steps[name]
        for ref in sorted(graph.external_names(name)):
            if ref in namespace or ref in TEMPLATE_GLOBALS or hasattr(builtins, ref):
                continue
            known = [
                *graph.steps,
                *(
                    k
                    for k, v in namespace.items()
                    if not k.startswith("_")
                    and k not in _SHELL_NAMES
                    and not isinstance(v, types.ModuleType)
                ),
            ]
            raise UnknownNameError(step.name, ref, known)


async def execute(session: Session, targets: list[str] | None, options: RunOptions) -> RunResult:
    """Run ``targets`` (default: every step) and their upstream steps."""
    graph = session.graph
    names = graph.order(graph.upstream(targets) if targets else None)
    check_names(graph, names, session.namespace)
    _check_contexts(graph, names, session.contexts)
    store = session.store
    session.params, session.started = _params(session.namespace, graph, names), time.time()
    run_id = store.start_run(session.params, targets, options.notebook)
    session.run_id, session.notebook = run_id, options.notebook
    traced = _trace.run_started(run_id, options.notebook, session.params, session.pool.config)
    results: dict[str, StepResult] = {}
    tasks: dict[str, asyncio.Task] = {}
    emit = options.observer or (lambda *a: None)
    started = time.time()

    async def run_one(name: str) -> StepResult:
        step = graph.steps[name]
        deps = graph.deps[name]
        pending = [tasks[d] for d in deps if not tasks[d].done()]
        if pending:  # finished upstream tasks need no wait (a long chain then runs in one pass)
            await asyncio.wait(pending)
        upstream = {d: results[d] for d in deps}
        blocked = [d for d, r in upstream.items() if r.state in (FAILED, PENDING)]
        if blocked:
            res = _blocked(name, blocked[0])
        else:
            emit("start", name, None)
            res = await _trace.step(step, _run_step(session, step, upstream, options, emit))
            if res.cached:
                res.result_id = store.record(run_id, res, options.notebook)
            else:
                session.remember(res, step)
        results[name] = res
        emit("end", name, res)
        return res

    status = INTERRUPTED
    try:
        for name in names:
            tasks[name] = asyncio.ensure_future(run_one(name))
        await asyncio.gather(*tasks.values())
        states = {r.state for r in results.values()}
        status = FAILED if states & {FAILED, PENDING} else FLAGGED if FLAGGED in states else PASSED
    finally:
        for t in tasks.values():
            t.cancel()
        ordered = {n: results[n] for n in names if n in results}
        run = RunResult(run_id, ordered, status, started, time.time())
        store.end_run(
            run_id,
            status,
            run.cost,
            "; ".join(r.error for r in ordered.values() if r.error) or None,
        )
        _trace.run_ended(traced, run)
    return run


def _check_contexts(graph: Graph, names: list[str], contexts: dict[str, str]) -> None:
    """Raise `UnknownNameError` for a ``--context`` block that was never defined."""
    for name in names:
        missing = [c for c in graph.steps[name].contexts if c not in contexts]
        if missing:
            raise UnknownNameError(name, missing[0], contexts)


def _blocked(name: str, upstream: str) -> StepResult:
    """A step that never ran because ``upstream`` did not finish: pending, nothing spent."""
    return StepResult(
        name,
        PENDING,
        error=f"not run: upstream step `{upstream}` did not finish",
        usage=Usage(0, 0),
        cost=0.0,
    )


def _params(namespace: dict, graph: Graph, names: list[str]) -> dict:
    wanted = set().union(*(graph.external_names(n) for n in names)) if names else set()
    return {k: namespace[k] for k in sorted(wanted) if k in namespace and _jsonable(namespace[k])}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


async def _run_step(
    session: Session,
    step: Step,
    upstream: dict[str, StepResult],
    options: RunOptions,
    emit: Observer,
) -> StepResult:
    started = time.time()
    if upstream and all(r.state == SKIPPED for r in upstream.values()):
        return _skipped(step, started)
    values = {**session.namespace, **{d: r.output for d, r in upstream.items()}}
    try:
        if step.when and not _eval(step.when, values, step.name, "--when"):
            return _skipped(step, started)
        if step.map:
            var, expr = parse_map(step.map, step.name)
            source = _eval(expr, values, step.name, "--map")
            if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
                raise StepFailed(
                    step.name,
                    f"--map {expr!r} is {source!r}, not a list: pass a list such as "
                    f"['fr', 'de'] (a string would be mapped letter by letter)",
                )
            items = list(source)
            parts = await asyncio.gather(
                *(
                    _run_item(session, step, {**values, var: item}, options, emit, i)
                    for i, item in enumerate(items)
                )
            )
            return combine_items(step, parts, items, started)
        return await _run_single(session, step, values, options, emit, None)
    except asyncio.CancelledError:
        raise
    except DefinitionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a step's failure is recorded, not raised
        return _failure(step, exc, started)


def _skipped(step: Step, started: float) -> StepResult:
    return StepResult(
        step.name, SKIPPED, None, started=started, ended=time.time(), usage=Usage(0, 0), cost=0.0
    )


async def _run_item(
    session: Session, step: Step, values: dict, options: RunOptions, emit: Observer, index: int
) -> StepResult:
    """One item of a ``--map``: recorded as soon as it finishes, so a killed run resumes from
    it; a failing item fails only itself (the other items are kept and reused)."""
    started = time.time()
    try:
        part = await _run_single(session, step, values, options, emit, index)
    except (asyncio.CancelledError, DefinitionError):
        raise
    except Exception as exc:  # noqa: BLE001 - an item's failure is recorded, not raised
        part = _failure(step, exc, started)
    if not part.cached:
        session.remember(part, step, index)
    return part


def _failure(step: Step, exc: Exception, started: float) -> StepResult:
    """A step (or ``--map`` item) that raised, as a failed result: a ladder's failure with what
    its attempts spent; anything else failed before any model call (nothing spent)."""
    if isinstance(exc, LadderFailed):
        return _ladder_failure(step, exc, started)
    return StepResult(
        step.name,
        FAILED,
        None,
        started=started,
        ended=time.time(),
        error=_describe(exc),
        cost=0.0,
        usage=Usage(0, 0),
    )


def _ladder_failure(step: Step, exc: LadderFailed, started: float) -> StepResult:
    """A failed step with every billed call of its attempts in its usage and cost."""
    usage, cost = Usage(), 0.0
    for a in exc.attempts:
        usage = usage + a.usage
        cost = None if cost is None or a.cost is None else cost + a.cost
    return StepResult(
        step.name,
        FAILED,
        exc.output,
        prompt=exc.prompt,
        attempts=exc.attempts,
        gates=exc.gates,
        usage=usage,
        cost=cost,
        started=started,
        ended=time.time(),
        error=str(exc),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StepFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _eval(expr: str, values: dict, step: str, option: str) -> Any:
    try:
        # One dict as globals, so a generator or lambda in the expression sees the values too.
        return eval(expr, {**values, "__builtins__": builtins})  # noqa: S307 - the notebook's own code
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(step, f"{option} {expr!r} raised {type(exc).__name__}: {exc}") from None


async def _run_single(
    session: Session,
    step: Step,
    values: dict,
    options: RunOptions,
    emit: Observer,
    item: int | None,
) -> StepResult:
    if step.kind in ("python", "function"):
        return await _run_python(session, step, values, options)
    started = time.time()
    request, models, key = build_request(session, step, values)
    hit = cache_lookup(session, key, step, options)
    if hit is not None:
        return hit
    if options.stream and item is None:
        request.on_text = lambda delta: emit("text", step.name, delta)
    gates = gates_for(step, values)
    schema_cls = schema_class(step, values) if step.schema else None
    outcome = await run_ladder(  # a LadderFailed carries the prompt for the audit trail
        step,
        request,
        models,
        session.pool,
        parser(step, schema_cls),
        gates,
        values,
        on_attempt=lambda a: emit("attempt", step.name, a),
        image=step.kind == "image",
    )
    return StepResult(
        step.name,
        outcome.state,
        outcome.output,
        prompt=request.prompt,
        model=outcome.model,
        attempts=outcome.attempts,
        gates=outcome.gates,
        usage=outcome.usage,
        cost=outcome.cost,
        started=started,
        ended=time.time(),
        cache_key=key,
    )


async def _run_python(
    session: Session, step: Step, values: dict, options: RunOptions
) -> StepResult:
    """A ``--python`` or function step: its code run on its inputs (or its cached result), then
    its gates; a rubric judge's calls are the only model cost it has."""
    started = time.time()
    inputs, key = _python_inputs(step, values)
    if key is not None:
        hit = cache_lookup(session, key, step, options)
        if hit is not None:
            return hit
    if step.kind == "function":
        output = step.fn(**inputs)
        if asyncio.iscoroutine(output):
            output = await output
    else:
        # In a worker thread, so the event loop stays free: other steps go on, and an
        # interrupt cancels the run at once instead of waiting for the cell's code.
        output = await asyncio.to_thread(run_python, step.body, values, step.name)
    ctx = GateContext(step, "", "", session.pool, values)
    verdict = await evaluate_gates(gates_for(step, values), output, ctx)
    if verdict.error is not None:  # the judge gave no verdict; its calls were billed all the same
        state, error = FAILED, str(verdict.error)
        usage, cost = verdict.error.usage, verdict.error.cost
    else:
        state = PASSED if verdict.passed else (FLAGGED if step.on_fail == "review" else FAILED)
        error = None if state != FAILED else verdict.failures()
        usage, cost = charge(Usage(0, 0), 0.0, verdict.results)
    return StepResult(
        step.name,
        state,
        output,
        gates=verdict.results,
        started=started,
        ended=time.time(),
        cache_key=key,
        cost=cost,
        usage=usage,
        error=error,
    )


def _python_inputs(step: Step, values: dict) -> tuple[dict, str | None]:
    """The upstream values a Python step reads, and its cache key (None with ``--no-cache``):
    its code (a function's code hash), a stable hash of each input, its gates."""
    if step.kind == "function":
        params = list(function_params(step.fn))
        from ._tools import code_hash

        code_id = getattr(step.fn, "__qualname__", step.name) + code_hash(step.fn)
    else:
        from ._template import python_names

        params = sorted(python_names(step.body, step.name))
        code_id = step.body
    inputs = {p: values[p] for p in params if p in values}
    if step.no_cache:
        return inputs, None
    key = cache_key(
        {
            "kind": step.kind,
            "code": code_id,
            "inputs": {k: stable_hash(v) for k, v in inputs.items()},
            "checks": step.checks,
            **({"rubric": vars(step.rubric)} if step.rubric else {}),
        }
    )
    return inputs, key
