"""The core's performance figures in one run: overhead, latency DAG, re-run, import time.

Runs the four benchmark scripts (each also runs on its own) and ends with one compact table
of every figure against its goal. It uses fewer repeats than the scripts' defaults, to stay
near two minutes on a 2-core machine; ``--quick`` fewer still (a smoke check, not figures to
quote). Exits 1 if a goal was missed.

    python benchmarks/bench_core.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_import
import bench_latency
import bench_overhead
import bench_rerun
from _common import machine, table, verdict


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark; returns 1 if a goal was missed, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke check")
    args = parser.parse_args(argv)
    quick = args.quick
    started = time.perf_counter()
    summary: list[dict] = []
    summary += bench_overhead.main(["--repeats", "2" if quick else "3", "--slow-repeats", "1"])
    summary += bench_latency.main(["--repeats", "2" if quick else "3"])
    summary += bench_rerun.main(
        ["--repeats", "3" if quick else "10", "--stores", "1" if quick else "3"]
    )
    summary += bench_import.main(["--repeats", "3" if quick else "10"])
    print(f"\n== summary ({time.perf_counter() - started:.0f} s) ==")
    print(f"machine: {machine()}")
    print(
        table(
            ["", "benchmark", "figure", "goal"],
            [[verdict(r["met"]), r["benchmark"], r["figure"], r["goal"]] for r in summary],
        )
    )
    return 1 if any(r["met"] is False for r in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
