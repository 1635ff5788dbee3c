"""Orchestration overhead per no-op step: nbconductor vs LangGraph on the same graph shapes.

Shapes: a 1,000-step chain (each step reads the previous one) and a wide DAG (1 source →
1,000 parallel steps → 1 join). Every step does nothing, so the time is the engine's own:
scheduling, cache keys, store writes. Graphs are built outside the timed region (build time
is reported apart), each case is warmed up once, then timed ``--repeats`` times, the cases
interleaved so machine load drifts onto all of them alike; figures are medians.

nbconductor runs `Pipeline.function` steps (and, on the chain, ``--python`` steps, whose code
runs in a worker thread so an interrupt can cancel it) through `Pipeline.run`, with the
store on disk (a fresh file per repeat) and in memory; every step is computed, recorded and
checked against the cache, as in real use. LangGraph runs a compiled `StateGraph`: on the
chain, both a state with one key per node and the leaner one-counter state; on the wide DAG,
static fan-out with a list reducer and a fan-in edge; each with `invoke` (sync node
functions) and `ainvoke` (async node functions). The ratio compares with LangGraph's fastest
variant on each shape. "CPU µs/step" is the process's CPU time (all threads) per step.

    python benchmarks/bench_overhead.py [--steps 1000] [--repeats 5] [--slow-repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, make_function, median, print_summary, table, tmp_store

GOAL_US = 1000.0  # under 1 ms of overhead per step


# nbconductor -----------------------------------------------------------------------------------
def nbc_chain(n: int, store: str, kind: str = "function"):
    from nbconductor import Pipeline

    p = Pipeline(store=tmp_store("chain") if store == "disk" else ":memory:")
    _ = p.store  # open (and create) the store outside the timed region
    if kind == "function":
        p.function("s0")(make_function("s0", []))
        for i in range(1, n):
            p.function(f"s{i}")(make_function(f"s{i}", [f"s{i - 1}"]))
    else:
        p.step("s0", "None", python=True)
        for i in range(1, n):
            p.step(f"s{i}", f"s{i - 1}", python=True)
    return p


def nbc_wide(n: int, store: str):
    from nbconductor import Pipeline

    p = Pipeline(store=tmp_store("wide") if store == "disk" else ":memory:")
    _ = p.store
    p.function("src")(make_function("src", []))
    for i in range(n):
        p.function(f"w{i}")(make_function(f"w{i}", ["src"]))
    p.function("join")(make_function("join", [f"w{i}" for i in range(n)]))
    return p


def nbc_run(p) -> None:
    result = p.run()
    if result.status != "passed" or any(r.cached for r in result.results.values()):
        raise SystemExit(f"nbconductor run did not execute every step: {result.status}")


def nbc_close(p) -> None:
    p.close()


# LangGraph -------------------------------------------------------------------------------------
def lg_chain_own_keys(n: int, is_async: bool):
    from langgraph.graph import END, START, StateGraph

    state = TypedDict("ChainState", {f"s{i}": Any for i in range(n)}, total=False)
    graph = StateGraph(state)
    for i in range(n):
        graph.add_node(f"s{i}", _own_key_node(f"s{i}", is_async))
    _chain_edges(graph, n, START, END)
    return graph.compile()


def _own_key_node(key: str, is_async: bool):
    if is_async:

        async def node(state):
            return {key: None}
    else:

        def node(state):
            return {key: None}

    return node


class Counter(TypedDict):
    n: int


def _count(state: Counter) -> dict:
    return {"n": state["n"] + 1}


async def _acount(state: Counter) -> dict:
    return {"n": state["n"] + 1}


def lg_chain_counter(n: int, is_async: bool):
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(Counter)
    for i in range(n):
        graph.add_node(f"s{i}", _acount if is_async else _count)
    _chain_edges(graph, n, START, END)
    return graph.compile()


def _chain_edges(graph, n: int, start, end) -> None:
    graph.add_edge(start, "s0")
    for i in range(1, n):
        graph.add_edge(f"s{i - 1}", f"s{i}")
    graph.add_edge(f"s{n - 1}", end)


class Wide(TypedDict, total=False):
    src: int
    outs: Annotated[list, operator.add]
    done: int


def lg_wide(n: int, is_async: bool):
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(Wide)
    if is_async:

        async def src(state):
            return {"src": 1}

        async def join(state):
            return {"done": len(state["outs"])}
    else:

        def src(state):
            return {"src": 1}

        def join(state):
            return {"done": len(state["outs"])}

    graph.add_node("src", src)
    for i in range(n):
        graph.add_node(f"w{i}", _wide_node(i, is_async))
    graph.add_node("join", join)
    graph.add_edge(START, "src")
    for i in range(n):
        graph.add_edge("src", f"w{i}")
    graph.add_edge([f"w{i}" for i in range(n)], "join")
    graph.add_edge("join", END)
    return graph.compile()


def _wide_node(i: int, is_async: bool):
    if is_async:

        async def node(state):
            return {"outs": [i]}
    else:

        def node(state):
            return {"outs": [i]}

    return node


def lg_runner(initial: dict, limit: int, is_async: bool, check):
    config = {"recursion_limit": limit}
    if is_async:

        def run(app):
            check(asyncio.run(app.ainvoke(dict(initial), config)))
    else:

        def run(app):
            check(app.invoke(dict(initial), config))

    return run


# the benchmark ---------------------------------------------------------------------------------
def measure(
    n: int = 1000, repeats: int = 5, slow_repeats: int = 2
) -> tuple[list[list], list[dict]]:
    """Run both shapes; returns (detail rows, summary rows)."""
    rows: list[list] = []
    summary: list[dict] = []
    limit = n + 20

    def chain_ok(out):
        assert out.get("n", n) == n, out

    def wide_ok(out):
        assert out["done"] == n, out

    shapes = {
        f"chain of {n}": (
            n,
            {
                "nbconductor function, :memory:": (
                    lambda: nbc_chain(n, "memory"),
                    nbc_run,
                    nbc_close,
                ),
                "nbconductor function, disk": (lambda: nbc_chain(n, "disk"), nbc_run, nbc_close),
                "nbconductor --python, :memory:": (
                    lambda: nbc_chain(n, "memory", "python"),
                    nbc_run,
                    nbc_close,
                ),
                "nbconductor --python, disk": (
                    lambda: nbc_chain(n, "disk", "python"),
                    nbc_run,
                    nbc_close,
                ),
                "LangGraph counter key, invoke": (
                    lambda: lg_chain_counter(n, False),
                    lg_runner({"n": 0}, limit, False, chain_ok),
                ),
                "LangGraph counter key, ainvoke": (
                    lambda: lg_chain_counter(n, True),
                    lg_runner({"n": 0}, limit, True, chain_ok),
                ),
            },
            {
                # a key per node makes LangGraph copy ~n channels per step: slow, so fewer repeats
                "LangGraph key per node, invoke": (
                    lambda: lg_chain_own_keys(n, False),
                    lg_runner({}, limit, False, lambda o: None),
                ),
                "LangGraph key per node, ainvoke": (
                    lambda: lg_chain_own_keys(n, True),
                    lg_runner({}, limit, True, lambda o: None),
                ),
            },
        ),
        f"wide 1→{n}→1": (
            n + 2,
            {
                "nbconductor function, :memory:": (
                    lambda: nbc_wide(n, "memory"),
                    nbc_run,
                    nbc_close,
                ),
                "nbconductor function, disk": (lambda: nbc_wide(n, "disk"), nbc_run, nbc_close),
                "LangGraph fan-out/fan-in, invoke": (
                    lambda: lg_wide(n, False),
                    lg_runner({}, limit, False, wide_ok),
                ),
                "LangGraph fan-out/fan-in, ainvoke": (
                    lambda: lg_wide(n, True),
                    lg_runner({}, limit, True, wide_ok),
                ),
            },
            {},
        ),
    }
    for shape, (steps, cases, slow_cases) in shapes.items():
        times = interleaved(cases, repeats)
        if slow_cases:
            times.update(interleaved(slow_cases, slow_repeats))
        per_step = {label: median(t["run"]) / steps * 1e6 for label, t in times.items()}
        lg_best = min(v for k, v in per_step.items() if k.startswith("LangGraph"))
        for label, t in times.items():
            rows.append(
                [
                    shape,
                    label,
                    median(t["setup"]) * 1e3,
                    median(t["run"]) * 1e3,
                    per_step[label],
                    per_step[label] / lg_best,
                    median(t["cpu"]) / steps * 1e6,
                    len(t["run"]),
                ]
            )
        for label in ("nbconductor function, :memory:", "nbconductor function, disk"):
            us = per_step[label]
            summary.append(
                {
                    "benchmark": f"overhead/step, {shape}, {label.split(', ')[1]}",
                    "figure": f"{us:.0f} µs/step, {us / lg_best:.2f}× LangGraph",
                    "goal": "< 1000 µs, ≤ 1× LangGraph",
                    "met": us < GOAL_US and us <= lg_best,
                }
            )
    return rows, summary


HEADERS = ["shape", "engine", "build ms", "run ms", "µs/step", "× LG best", "CPU µs/step", "n"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--slow-repeats", type=int, default=2, help="repeats of LangGraph's key-per-node chain"
    )
    args = parser.parse_args(argv)
    header(f"orchestration overhead per no-op step ({args.steps} steps, median of {args.repeats})")
    rows, summary = measure(args.steps, args.repeats, args.slow_repeats)
    print(table(HEADERS, rows))
    return summary


if __name__ == "__main__":
    print_summary(main())
