"""Wall time of a DAG whose steps each wait a fixed latency, against its critical path.

A layered DAG (``--layers`` × ``--width``; every step of a layer reads 1–3 random steps of
the layer before, fixed seed), each step waiting ``--latency`` seconds. The critical path is
``layers × latency``; a perfect scheduler's wall time equals it. Two kinds of step:

- ``async function``: ``async def step(parents...): await asyncio.sleep(latency)``, awaited
  by the executor;
- ``LLM (sleepy provider)``: LLM steps on a registered custom provider whose ``complete``
  sleeps, so each call goes through the full model path — template rendering, cache key,
  the attempt ladder and the per-provider concurrency limit (``Config(concurrency={"sleepy": 64})``).

Each case runs on a fresh pipeline and on-disk store (nothing cached), warmed up once; the
median of ``--repeats`` is reported, next to a control with no engine at all (the same
layers as bare ``asyncio.gather`` of sleeps): what the machine's timers and scheduler cost. Besides the 4 × 8 DAG at 50 ms: 6 × 64 steps at 500 ms
(every layer fills the 64-slot limit, at a model-like latency) and, as a stress case with no
goal, 6 × 64 at 50 ms, where 64 steps per 50 ms make the run CPU-bound.

    python benchmarks/bench_latency.py [--latency 0.05] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, make_function, median, print_summary, table, tmp_store

GOAL = 1.1  # wall time within 1.1× the critical path
CONCURRENCY = 64


def layered(layers: int, width: int, seed: int = 7) -> list[list[tuple[str, list[str]]]]:
    """``[[(name, parents), ...] per layer]``: each step after the first layer has 1–3 parents."""
    rng = random.Random(seed)
    shape: list[list[tuple[str, list[str]]]] = []
    for k in range(layers):
        row = []
        for i in range(width):
            parents = (
                []
                if k == 0
                else sorted(rng.sample([n for n, _ in shape[-1]], rng.randint(1, min(3, width))))
            )
            row.append((f"n{k}_{i}", parents))
        shape.append(row)
    return shape


def sleepy_provider(latency: float):
    from nbconductor._types import Request, Response, Usage
    from nbconductor.providers._base import Provider

    class SleepyProvider(Provider):
        """Answers every request after ``latency`` seconds, like a model with fixed latency."""

        name = "sleepy"
        in_flight = 0
        peak = 0

        async def complete(self, request: Request) -> Response:
            cls = type(self)
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            try:
                await asyncio.sleep(latency)
            finally:
                cls.in_flight -= 1
            return Response(
                text=f"done {len(request.prompt)}",
                usage=Usage(10, 2, 0, 0),
                model="sleepy:m",
                cost=0.0,
            )

    return SleepyProvider


def build(shape, kind: str, latency: float):
    from nbconductor import Pipeline
    from nbconductor._config import Config

    p = Pipeline(store=tmp_store("latency"), config=Config(concurrency={"sleepy": CONCURRENCY}))
    _ = p.store  # open (and create) the store outside the timed region
    for row in shape:
        for name, parents in row:
            if kind == "function":
                body = f"await asyncio.sleep({latency}); return {name!r}"
                p.function(name)(make_function(name, parents, body, is_async=True))
            else:
                refs = " ".join(f"{{{{ {q} }}}}" for q in parents)
                p.step(name, f"Step {name}. Inputs: {refs}", model="sleepy:m", retries=0)
    return p


def floor(shape, latency: float):
    """The machine's own floor: the same layers as bare ``asyncio.gather`` of sleeps, no engine."""

    async def layers():
        for row in shape:
            await asyncio.gather(*(asyncio.sleep(latency) for _ in row))

    return lambda: asyncio.run(layers())


def run(p) -> None:
    result = p.run()
    if result.status != "passed" or any(r.cached for r in result.results.values()):
        raise SystemExit(f"latency run did not execute every step: {result.status} {result.failed}")


def measure(latency: float = 0.05, repeats: int = 5) -> tuple[list[list], list[dict]]:
    from nbconductor.providers import registry

    rows, summary = [], []
    # (layers, width, latency, is a goal): the brief's DAG; the same at full concurrency with a
    # model-like latency; and a stress case where 64 steps per 50 ms make the run CPU-bound.
    shapes = (
        (4, 8, latency, True),
        (6, CONCURRENCY, 10 * latency, True),
        (6, CONCURRENCY, latency, False),
    )
    for layers, width, latency, goal in shapes:
        shape = layered(layers, width)
        critical = layers * latency
        provider = sleepy_provider(latency)
        registry.register("sleepy", provider)
        cases = {
            "bare asyncio.gather (floor)": (lambda s=shape, t=latency: floor(s, t), lambda f: f()),
            "async function": (
                lambda s=shape, t=latency: build(s, "function", t),
                run,
                lambda p: p.close(),
            ),
            "LLM (sleepy provider)": (
                lambda s=shape, t=latency: build(s, "llm", t),
                run,
                lambda p: p.close(),
            ),
        }
        times = interleaved(cases, repeats if latency < 0.2 else max(2, repeats // 2))
        dag = f"{layers}×{width} @ {latency * 1e3:.0f} ms" + ("" if goal else " (stress)")
        base = median(times["bare asyncio.gather (floor)"]["run"]) / critical
        for label, t in times.items():
            wall = median(t["run"])
            ratio = wall / critical
            if label.startswith("bare"):
                rows.append(
                    [
                        dag,
                        label,
                        critical * 1e3,
                        wall * 1e3,
                        ratio,
                        "",
                        len(t["run"]),
                        "no engine: the machine's timer/scheduling floor",
                    ]
                )
                continue
            extra = f"peak {provider.peak} in flight" if label.startswith("LLM") else ""
            rows.append(
                [
                    dag,
                    label,
                    critical * 1e3,
                    wall * 1e3,
                    ratio,
                    (wall - critical) / (layers * width) * 1e6,
                    len(t["run"]),
                    extra,
                ]
            )
            summary.append(
                {
                    "benchmark": f"latency DAG {dag}, {label}",
                    "figure": f"{wall * 1e3:.0f} ms / {critical * 1e3:.0f} ms critical path = {ratio:.3f}× "
                    f"(bare asyncio {base:.3f}×)",
                    "goal": f"≤ {GOAL}×" if goal else "(none: CPU-bound by design)",
                    "met": ratio <= GOAL if goal else None,
                }
            )
    return rows, summary


HEADERS = ["DAG", "steps are", "critical ms", "wall ms", "× critical", "µs extra/step", "n", ""]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    header(
        f"fixed-latency DAG vs its critical path ({args.latency * 1e3:.0f} ms per step, median of {args.repeats})"
    )
    rows, summary = measure(args.latency, args.repeats)
    print(table(HEADERS, rows))
    return summary


if __name__ == "__main__":
    print_summary(main())
