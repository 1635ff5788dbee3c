"""Shared helpers for the benchmark scripts: timing, machine description, tables, step factories.

The benchmarks are plain scripts (``python benchmarks/bench_overhead.py``), not tests: they
print figures measured side by side in one run, so a slow or busy machine slows both sides.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line describing where the figures come from: CPU, cores, OS, Python, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("nbconductor", "langgraph"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load {os.getloadavg()[0]:.1f}"
    return (
        f"{cpu}, {os.cpu_count()} cores{load}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, after a garbage collection so earlier runs do not bill it."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved(
    cases: dict[str, tuple], repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Time each case ``repeats`` times, alternating between cases so load drift hits all alike.

    ``cases`` maps a label to ``(setup, run)`` or ``(setup, run, teardown)``: ``setup()`` is
    timed separately (it builds the graph) and returns what ``run(prepared)`` needs; teardown
    is untimed. Returns ``{label: {"run": [...], "cpu": [...], "setup": [...]}}`` in seconds,
    warm-up excluded; "cpu" is the process's CPU time during the run (all its threads), which
    a busy machine inflates less than wall time.
    """
    times: dict[str, dict[str, list[float]]] = {
        label: {"run": [], "cpu": [], "setup": []} for label in cases
    }
    for i in range(warmup + repeats):
        for label, (setup, run, *rest) in cases.items():
            setup_s, prepared = timed(setup)
            cpu = time.process_time()
            run_s, _ = timed(lambda run=run, prepared=prepared: run(prepared))
            cpu = time.process_time() - cpu
            if rest:
                rest[0](prepared)
            if i >= warmup:
                times[label]["run"].append(run_s)
                times[label]["cpu"].append(cpu)
                times[label]["setup"].append(setup_s)
    return times


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(values: list[str], numeric: list[bool]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        )

    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]
    out = [line(headers, numeric), line(["-" * w for w in widths], numeric)]
    out += [line(r, numeric) for r in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def make_function(
    name: str, params: list[str], body: str = "return None", *, is_async: bool = False
) -> Callable:
    """A function ``name(params...)`` with the given body: how a step names its upstream steps."""
    source = f"{'async ' if is_async else ''}def {name}({', '.join(params)}):\n    {body}\n"
    namespace: dict[str, Any] = {"asyncio": __import__("asyncio")}
    exec(source, namespace)  # noqa: S102 - building benchmark fixtures
    return namespace[name]


def tmp_store(tag: str = "store") -> str:
    """A path for a fresh on-disk store in a new temporary directory."""
    return os.path.join(tempfile.mkdtemp(prefix=f"nbc-bench-{tag}-"), "store.sqlite")


def verdict(met: bool | None) -> str:
    return "info" if met is None else "OK" if met else "MISS"


def print_summary(summary: list[dict]) -> None:
    """One line per figure that has a goal: OK / MISS / info, the figure and the goal."""
    print()
    for row in summary:
        print(f"{verdict(row['met']):<4}  {row['benchmark']}: {row['figure']} (goal {row['goal']})")


def header(title: str) -> None:
    print(f"\n== {title} ==")
    print(f"machine: {machine()}")
    sys.stdout.flush()
