"""What tracing costs: runs with tracing off, exporting to a real Arize Phoenix, and to a collector
that is down.

Shapes: the 1,000-step chain of no-op function steps (one span per step) and of offline-model
LLM steps (two spans per step: the step and its ``chat`` call), and the 4 × 8 DAG whose LLM
steps each wait 50 ms. Tracing is switched through the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``;
Phoenix (``phoenix serve``, from tests/run.sh's virtualenv or ``$NBCONDUCTOR_PHOENIX``) is
started on a free loopback port with its working directory in a temporary folder. The "down"
case points at a closed port. Per-span overhead = (traced − off) / spans, in wall time (what
``Pipeline.run`` takes) and in CPU time of the process (every thread, the SDK's export thread
included; Phoenix's own ingestion, on the same cores, is not counted). On a shared machine the
CPU figure is the steadier one. Median of ``--repeats``, cases interleaved.

    python benchmarks/bench_trace.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, make_function, median, print_summary, table
from bench_latency import build as build_dag
from bench_latency import layered, sleepy_provider

GOAL_US = 100  # per span, exporting to the real receiver
GOAL_DOWN = 1.05  # collector down: wall time within 5% of tracing off
PHOENIX = os.environ.get("NBCONDUCTOR_PHOENIX") or str(
    Path.home() / ".cache" / "nbconductor" / "phoenix" / "bin" / "phoenix"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_phoenix() -> tuple[subprocess.Popen, str]:
    work = tempfile.mkdtemp(prefix="nbc-bench-phoenix-")
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": work,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = open(os.path.join(work, "phoenix.log"), "w")
    proc = subprocess.Popen([PHOENIX, "serve"], cwd=work, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"phoenix serve did not start: see {work}/phoenix.log") from None
            time.sleep(0.5)


def mode(endpoint: str | None) -> None:
    """Tracing to ``endpoint`` (None: off), set up before the timed region."""
    from nbconductor import _trace
    from nbconductor._config import Config

    _trace.reset()
    if endpoint is None:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    else:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        _trace._setup(Config())


def chain(n: int, kind: str):
    from nbconductor import Pipeline

    p = Pipeline(store=":memory:")
    for i in range(n):
        if kind == "function":
            p.function(f"s{i}")(make_function(f"s{i}", [f"s{i - 1}"] if i else []))
        else:
            ref = f"{{{{ s{i - 1} }}}}" if i else "start"
            p.step(f"s{i}", f"step {i}: {ref}", model="offline:m", retries=0)
    return p


def run(p) -> None:
    result = p.run()
    if result.status != "passed":
        raise SystemExit(f"benchmark run failed: {result.status} {result.failed}")


def measure(repeats: int) -> tuple[list[list], list[dict]]:
    proc, phoenix = start_phoenix()
    down = f"http://127.0.0.1:{free_port()}"
    rows, summary = [], []
    try:
        from nbconductor.providers import registry

        registry.register("sleepy", sleepy_provider(0.05))
        shapes = [
            ("chain of 1000, function steps", lambda: chain(1000, "function"), 1000),
            ("chain of 1000, LLM steps (offline)", lambda: chain(1000, "llm"), 2000),
            ("4 × 8 DAG, 50 ms LLM steps", lambda: build_dag(layered(4, 8), "llm", 0.05), 64),
        ]
        modes = {"off": None, "to Phoenix": phoenix, "collector down": down}
        for shape, make, spans in shapes:
            cases = {
                label: (lambda ep=ep, make=make: (mode(ep), make())[1], run)
                for label, ep in modes.items()
            }
            times = interleaved(cases, repeats)
            off, off_cpu = median(times["off"]["run"]), median(times["off"]["cpu"])
            for label in modes:
                wall, cpu = median(times[label]["run"]), median(times[label]["cpu"])
                traced = label != "off"
                per_span = (wall - off) / (spans + 1) * 1e6 if traced else None
                cpu_span = (cpu - off_cpu) / (spans + 1) * 1e6 if traced else None
                rows.append(
                    [
                        shape,
                        label,
                        wall * 1e3,
                        cpu * 1e3,
                        wall / off,
                        "" if per_span is None else per_span,
                        "" if cpu_span is None else cpu_span,
                    ]
                )
                if label == "to Phoenix":
                    summary.append(
                        {
                            "benchmark": f"tracing CPU per span (export thread included), {shape}",
                            "figure": f"{cpu_span:.0f} µs (wall {per_span:.0f} µs)",
                            "goal": f"< {GOAL_US} µs",
                            "met": cpu_span < GOAL_US,
                        }
                    )
                if label == "collector down":
                    summary.append(
                        {
                            "benchmark": f"collector down, {shape}",
                            "figure": f"{wall / off:.3f}× off",
                            "goal": f"≤ {GOAL_DOWN}×",
                            "met": wall / off <= GOAL_DOWN or wall - off < 0.005,
                        }
                    )
    finally:
        mode(None)
        proc.terminate()
        proc.wait(30)
    return rows, summary


def off_hooks() -> float:
    """Nanoseconds one off hook costs (`_trace.step` given a coroutine, returning it)."""
    from nbconductor import _trace

    async def coro():
        return None

    c = coro()
    n = 200_000
    seconds = timeit.timeit(lambda: _trace.step(None, c), number=n)
    c.close()
    return seconds / n * 1e9


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    header(f"tracing off / to Phoenix / collector down (median of {args.repeats})")
    rows, summary = measure(args.repeats)
    print(
        table(
            ["shape", "tracing", "wall ms", "CPU ms", "× off", "wall µs/span", "CPU µs/span"],
            rows,
        )
    )
    ns = off_hooks()
    print(f"\noff path: one hook costs {ns:.0f} ns (a context-variable read; 3 hooks per LLM step)")
    summary.append(
        {"benchmark": "tracing off, per hook", "figure": f"{ns:.0f} ns", "goal": "", "met": None}
    )
    print_summary(summary)
    return summary


if __name__ == "__main__":
    results = main()
    sys.exit(1 if any(r["met"] is False for r in results) else 0)
