"""What tracing costs: runs with tracing off, exporting to a real Arize Phoenix, and to a collector
that is down.

Shapes: the 1,000-step chain of no-op function steps (one span per step) and of offline-model
LLM steps (two spans per step: the step and its ``chat`` call), and the 4 × 8 DAG whose LLM
steps each wait 50 ms. Tracing is switched through the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``;
Phoenix (``phoenix serve``, from tests/run.sh's virtualenv or ``$NBCONDUCTOR_PHOENIX``) is
started on a free loopback port with its working directory in a temporary folder. The "down"
case points at a closed port; "to Phoenix, SDK encoder" sends through the SDK's own OTLP/HTTP
exporter and protobuf encoder (nbconductor's exporter writes the same bytes itself,
`nbconductor/_trace_otlp.py`); "no-op exporter" exports nowhere (the batch processor's thread, no
encoding). Each mode keeps its provider across runs, as a session does. Per-span overhead =
(traced − off) / spans, in wall time (what ``Pipeline.run`` takes) and in CPU time of the
process over the run and the flush of its spans (every thread: the export thread's encoding
and HTTP count; Phoenix's own ingestion does not). Before every run the script waits until
Phoenix has finished ingesting (its CPU time still for 0.3 s): on the same 2 cores its ingestion
would otherwise slow whichever run comes next. On a shared machine the CPU figure is the
steadier one. Median of ``--repeats`` (the DAG, 4 ×), cases interleaved; "(least)" is the
least CPU of the repeats against the least of off (other processes only add CPU time on a
shared core); the load average is printed per shape. Collector down against off is measured
again in 20 interleaved pairs per shape (nothing is sent, so Phoenix stays idle): the goal's
figure. Then the floor: bare spans with the same attributes made in a loop, the SDK's own span
and encoder against the light path and nbconductor's encoder.

    python benchmarks/bench_trace.py [--repeats 5] [--floor-only | --down-only]
"""

from __future__ import annotations

import argparse
import gc
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
from _common import header, make_function, median, print_summary, table
from bench_latency import build as build_dag
from bench_latency import layered, sleepy_provider

GOAL_US = 100  # per span, exporting to the real receiver
GOAL_DOWN = 1.05  # collector down: wall time within 5% of tracing off
DOWN_PAIRS = 20  # collector down against off, interleaved pairs (cheap: nothing is sent)
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
        # Phoenix answers 503 once 20,000 spans wait for its database; this sends ~100,000 in
        # minutes, faster than a busy machine lets Phoenix insert them
        "PHOENIX_MAX_SPANS_QUEUE_SIZE": "1000000",
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


def versions() -> str:
    """The OpenTelemetry SDK's version and Phoenix's (from its virtualenv)."""
    from importlib.metadata import version

    python = Path(PHOENIX).with_name("python")
    code = "import importlib.metadata as m; print(m.version('arize-phoenix'))"
    try:
        got = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
        phoenix = got.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        phoenix = "?"
    return f"OpenTelemetry SDK {version('opentelemetry-sdk')}, Phoenix {phoenix}"


def settle(proc: subprocess.Popen | None, quiet: float = 0.3, limit: float = 120.0) -> float:
    """Wait until Phoenix has ingested what it was sent — its CPU time unchanged (at most one
    clock tick) for ``quiet`` seconds, at most ``limit`` — and return the seconds waited. Its
    ingestion is not nbconductor's cost, but on the same 2 cores it would slow whichever run
    comes next (the runs after the "to Phoenix" ones: "collector down" and "off")."""
    if proc is None:  # no collector process (--down-only)
        return 0.0
    started = time.perf_counter()
    path = f"/proc/{proc.pid}/stat"
    if not os.path.exists(path):
        return 0.0

    def ticks() -> int:
        fields = open(path).read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    last, still = ticks(), 0.0
    while still < quiet and time.perf_counter() - started < limit:
        time.sleep(0.1)
        now = ticks()
        still = still + 0.1 if now - last <= 1 else 0.0
        last = now
    return time.perf_counter() - started


def tracer(endpoint: str, *, light: bool = True, exporter=None):
    """A set-up `Tracing` to ``endpoint`` (``exporter``: in place of the OTLP exporter)."""
    from nbconductor import _trace
    from nbconductor._config import Config

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    _trace._tracing = None
    tracing = _trace._setup(Config())
    _trace._tracing = None
    tracing.light = light
    if exporter is not None:
        tracing.guard.inner, tracing.guard.address = exporter, None
    return tracing


def sdk_exporter(phoenix: str):
    """The SDK's own OTLP/HTTP exporter and encoder (nbconductor's sends the same bytes)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{phoenix}/v1/traces")


def use(tracing) -> None:
    """Runs traced by ``tracing`` from now on (None: tracing off). Each mode keeps its provider
    across runs, as a session does: a down collector is known to be down after its first run."""
    from nbconductor import _trace

    _trace._tracing = tracing
    if tracing is None:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    else:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://traced"  # wanted(): any endpoint


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


def reused(p):
    """``p`` with a new ``:memory:`` store and no in-process cache each time: every run runs
    every step again (declaring the 1,000-step chain anew would take seconds per run)."""

    def get():
        p.close()
        p.memory.clear()
        p.results.clear()
        p.last_run = None
        return p

    return get


def timed_run(get, tracing) -> tuple[float, float]:
    """(wall seconds of the run, CPU seconds of the run and of exporting its spans)."""
    p = get()
    use(tracing)
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    result = p.run()
    wall = time.perf_counter() - wall
    if tracing is not None:
        tracing.provider.force_flush()  # the export thread's work counts in CPU
    cpu = time.process_time() - cpu
    p.close()
    if result.status != "passed":
        raise SystemExit(f"benchmark run failed: {result.status} {result.failed}")
    return wall, cpu


def _shapes() -> list[tuple]:
    """(name, a function giving the pipeline to run, spans a run makes, repeats factor)."""
    return [
        ("chain of 1000, function steps", reused(chain(1000, "function")), 1001, 1),
        ("chain of 1000, LLM steps (offline)", reused(chain(1000, "llm")), 2001, 1),
        # 65 spans: a few ms of noise is 50 µs a span, so 4 × the repeats (a run is 0.2 s)
        ("4 × 8 DAG, 50 ms LLM steps", lambda: build_dag(layered(4, 8), "llm", 0.05), 65, 4),
    ]


def measure(repeats: int, phoenix: str, proc: subprocess.Popen) -> tuple[list[list], list[dict]]:
    from nbconductor._trace_setup import _Nothing
    from nbconductor.providers import registry

    registry.register("sleepy", sleepy_provider(0.05))
    modes = {
        "off": None,
        "to Phoenix": tracer(phoenix),
        "to Phoenix, SDK encoder": tracer(phoenix, exporter=sdk_exporter(phoenix)),
        "no-op exporter": tracer(phoenix, exporter=_Nothing()),
        "collector down": tracer(f"http://127.0.0.1:{free_port()}"),
    }
    shapes = _shapes()
    rows, summary = [], []
    try:
        for shape, get, spans, more in shapes:
            times: dict[str, list] = {label: [] for label in modes}
            failed = {label: t.guard.failures for label, t in modes.items() if t is not None}
            load, waited = os.getloadavg()[0], 0.0
            for i in range(1 + repeats * more):  # cases interleaved, the first round a warm-up
                for label, tracing in modes.items():
                    waited += settle(proc)
                    got = timed_run(get, tracing)
                    if i:
                        times[label].append(got)
            for label, before in failed.items():  # an export that failed sent nothing: cheaper
                failed[label] = modes[label].guard.failures - before
            down = down_vs_off(get, modes["collector down"], proc)
            print(
                f"{shape}: load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
                f"end; {waited:.0f} s waited for Phoenix to finish ingesting before runs"
            )
            off = median([w for w, _ in times["off"]])
            off_cpu = median([c for _, c in times["off"]])
            off_least = min(c for _, c in times["off"])
            for label in modes:
                wall = median([w for w, _ in times[label]])
                cpu = median([c for _, c in times[label]])
                traced = label != "off"
                per_span = (wall - off) / spans * 1e6 if traced else ""
                cpu_span = (cpu - off_cpu) / spans * 1e6 if traced else ""
                # other processes only ever add CPU time (a shared core): the least of the
                # repeats against the least of off is the least disturbed estimate
                least = min(c for _, c in times[label])
                least_span = (least - off_least) / spans * 1e6 if traced else ""
                fails = failed.get(label, "")
                if label == "collector down":
                    fails = "(all)"
                row = [shape, label, wall * 1e3, cpu * 1e3, wall / off, per_span, cpu_span]
                row += [least_span, fails]
                rows.append(row)
                if label == "to Phoenix" and fails:
                    print(f"!! {shape}: {fails} exports to Phoenix failed: its figures are void")
                if label == "to Phoenix":
                    summary.append(
                        {
                            "benchmark": f"tracing CPU per span (export included), {shape}",
                            "figure": f"{cpu_span:.0f} µs (least {least_span:.0f}; wall "
                            f"{per_span:.0f} µs)",
                            "goal": f"< {GOAL_US} µs",
                            "met": cpu_span < GOAL_US and not fails,
                        }
                    )
                if label == "collector down":
                    ratio, gap, cpu_ratio = down
                    print(
                        f"{shape}: collector down against off, {DOWN_PAIRS} pairs: wall "
                        f"{ratio:.3f}× off (median), CPU {cpu_ratio:.3f}×"
                    )
                    summary.append(
                        {
                            "benchmark": f"collector down, {shape} ({DOWN_PAIRS} pairs)",
                            "figure": f"{ratio:.3f}× off (CPU {cpu_ratio:.3f}×)",
                            "goal": f"≤ {GOAL_DOWN}×",
                            "met": ratio <= GOAL_DOWN or gap < 0.005,
                        }
                    )
    finally:
        use(None)
        for tracing in modes.values():
            if tracing is not None:
                tracing.close()
    return rows, summary


def down_vs_off(get, down, proc: subprocess.Popen | None) -> tuple[float, float, float]:
    """Collector down against tracing off, `DOWN_PAIRS` interleaved pairs (nothing is sent, so
    Phoenix stays idle): (median wall ratio, median wall difference in s, median CPU ratio)."""
    settle(proc)
    walls: dict[str, list[float]] = {"off": [], "down": []}
    cpus: dict[str, list[float]] = {"off": [], "down": []}
    for i in range(DOWN_PAIRS):
        pair = [("off", None), ("down", down)]
        for label, tracing in pair if i % 2 else pair[::-1]:
            wall, cpu = timed_run(get, tracing)
            walls[label].append(wall)
            cpus[label].append(cpu)
    off, slow = median(walls["off"]), median(walls["down"])
    return slow / off, slow - off, median(cpus["down"]) / median(cpus["off"])


STEP_START = {"nbconductor.step": "s1", "nbconductor.step.kind": "function"}
STEP_END = {
    "nbconductor.state": "passed",
    "nbconductor.attempts": 1,
    "nbconductor.cache_hit": False,
}
CHAT_START = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "offline",
    "gen_ai.request.model": "m",
    "nbconductor.attempt": 1,
    "nbconductor.fallback": 0,
    "nbconductor.call": "step",
}
CHAT_END = {
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 30,
    "gen_ai.response.model": "m",
    "gen_ai.response.finish_reasons": ["stop"],
    "nbconductor.cost": 0.0,
}


def floor(phoenix: str, repeats: int, proc: subprocess.Popen) -> list[list]:
    """CPU per span of bare spans with a step's and a chat call's attributes, made in a loop
    (no run around them) and exported to Phoenix: the SDK's own span against nbconductor's
    light one, each with a no-op exporter and exporting. Export included (a flush per round)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from nbconductor._trace_setup import Guard, _Nothing

    def sdk(exporter):
        provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("bench")

        def make(start, end, n):
            root = tracer.start_span("nbconductor.run")
            ctx = trace.set_span_in_context(root)
            for _ in range(n):
                span = tracer.start_span("step s1", context=ctx, attributes=start)
                span.set_attributes(end)
                span.end()
            root.end()
            provider.force_flush()

        return make, provider, exporter

    def ours(tracing):
        def make(start, end, n):
            root = tracing.start("nbconductor.run", None, {})
            for _ in range(n):
                span = tracing.start("step s1", root, start)
                span.set_attributes(end)
                span.end()
            root.end()
            tracing.provider.force_flush()

        return make, tracing.provider, tracing.guard

    cases = {
        "SDK span, no-op exporter": sdk(_Nothing()),
        "SDK span → Phoenix, SDK encoder": sdk(Guard(sdk_exporter(phoenix), "")),
        "light span, no-op exporter": ours(tracer(phoenix, exporter=_Nothing())),
        "light span → Phoenix, SDK encoder": ours(tracer(phoenix, exporter=sdk_exporter(phoenix))),
        "light span → Phoenix": ours(tracer(phoenix)),
    }
    rows, n = [], 1000
    for attrs, (start, end) in {
        "step": (STEP_START, STEP_END),
        "chat": (CHAT_START, CHAT_END),
    }.items():
        got: dict[str, list[float]] = {label: [] for label in cases}
        for i in range(1 + repeats):
            for label, (make, _, _) in cases.items():
                settle(proc)
                gc.collect()
                cpu = time.process_time()
                make(start, end, n)
                if i:
                    got[label].append((time.process_time() - cpu) / (n + 1) * 1e6)
        for label, (_, _, guard) in cases.items():
            fails = getattr(guard, "failures", "")
            rows.append(
                [f"{attrs} attributes ({len(start) + len(end)})", label, median(got[label]), fails]
            )
    for _, provider, _ in cases.values():
        provider.shutdown()
    return rows


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


def down_only(blocks: int = 5) -> list[dict]:
    """Collector down against off with no collector process on the machine at all: Phoenix,
    even idle between runs, shares the two cores with the runs it is not receiving. Each
    block is `DOWN_PAIRS` interleaved pairs (`down_vs_off`); the spread of the blocks'
    ratios is the figure's noise."""
    from nbconductor.providers import registry

    registry.register("sleepy", sleepy_provider(0.05))
    header(f"collector down against off, {blocks} × {DOWN_PAIRS} interleaved pairs, no collector")
    print(f"{versions()}; started {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    down = tracer(f"http://127.0.0.1:{free_port()}")
    summary = []
    try:
        for shape, get, _spans, _more in _shapes():
            load = os.getloadavg()[0]
            for _ in range(3):  # warm-up; the first down run finds the collector down
                timed_run(get, None)
                timed_run(get, down)
            ratios = [down_vs_off(get, down, None) for _ in range(blocks)]
            walls = sorted(r[0] for r in ratios)
            cpus = sorted(r[2] for r in ratios)
            worst = walls[-1]
            print(
                f"{shape}: wall × off per block {', '.join(f'{w:.3f}' for w in walls)}; "
                f"CPU {', '.join(f'{c:.3f}' for c in cpus)} (load {load:.1f} → "
                f"{os.getloadavg()[0]:.1f})"
            )
            summary.append(
                {
                    "benchmark": f"collector down, {shape} ({blocks} × {DOWN_PAIRS} pairs)",
                    "figure": f"{walls[len(walls) // 2]:.3f}× off (blocks {walls[0]:.3f}–{worst:.3f})",
                    "goal": "≤ 1.05× off",
                    "met": walls[len(walls) // 2] <= 1.05,
                }
            )
    finally:
        down.close()
    print_summary(summary)
    return summary


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--floor-only", action="store_true", help="only the bare-span floor")
    parser.add_argument(
        "--down-only",
        action="store_true",
        help="only collector down against off, 5 blocks of 20 pairs per shape, no Phoenix running",
    )
    args = parser.parse_args(argv)
    if args.down_only:
        return down_only()
    header(f"tracing off / to Phoenix / collector down (median of {args.repeats}; the DAG: 4 ×)")
    print(f"{versions()}; started {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    proc, phoenix = start_phoenix()
    try:
        summary = []
        if not args.floor_only:
            rows, summary = measure(args.repeats, phoenix, proc)
            print(
                table(
                    [
                        "shape",
                        "tracing",
                        "wall ms",
                        "CPU ms",
                        "× off",
                        "wall µs/span",
                        "CPU µs/span",
                        "(least)",
                        "failed exports",
                    ],
                    rows,
                )
            )
        print("\nbare spans in a loop, CPU µs per span (export included):")
        floor_rows = floor(phoenix, args.repeats, proc)
        print(table(["attributes", "span", "CPU µs/span", "failed exports"], floor_rows))
    finally:
        proc.terminate()
        proc.wait(30)
    ns = off_hooks()
    print(f"\noff path: one hook costs {ns:.0f} ns (a context-variable read; 3 hooks per LLM step)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"took {time.perf_counter() - started:.0f} s")
    summary.append(
        {"benchmark": "tracing off, per hook", "figure": f"{ns:.0f} ns", "goal": "", "met": None}
    )
    print_summary(summary)
    return summary


if __name__ == "__main__":
    results = main()
    sys.exit(1 if any(r["met"] is False for r in results) else 0)
