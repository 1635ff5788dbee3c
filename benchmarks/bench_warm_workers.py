"""Batch workers warmed with the job's provider SDKs vs workers that import them per process.

`nbconductor batch` forks its workers from a forkserver that has imported papermill, IPython and
nbconductor; it also imports the SDKs of the providers the job names (`job_providers`), so no
worker pays ``import anthropic`` (~1.1 s) and ``import openai`` (~0.5 s) on its first row. This
script runs the same direct batch (the quickstart-shaped job of bench_provider_batch.py on the
loopback fake, one worker per row, so every row is a worker's first) both ways, interleaved:

- **cold**: the forkserver is told no providers (as before this change);
- **warm**: the default.

    python benchmarks/bench_warm_workers.py [--rows 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from _common import machine  # noqa: E402
from bench_provider_batch import start_fake, write_job  # noqa: E402

LAUNCH = (
    "import sys\n"
    "import nbconductor.handoff._batch as batch\n"
    "if sys.argv.pop(1) == 'cold':\n"
    "    batch.job_providers = lambda *a: []\n"
    "from nbconductor.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run(folder: Path, mode: str, n: int, rows: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "NBCONDUCTOR_STORE"}
    out = f"out-{mode}-{n}"
    args = [sys.executable, "-c", LAUNCH, mode, "batch", "job.ipynb", "--params", "rows.csv"]
    args += ["--out", out, "--store", f"{out}.sqlite", "--workers", str(rows)]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{mode} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    api = start_fake()
    print(f"# {machine()}")
    print(f"# direct batch, {a.rows} rows on {a.rows} workers, {a.repeats} interleaved repeats")
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_job(folder, a.rows)
            for n in range(a.repeats):
                for mode in times:
                    load = os.getloadavg()[0]
                    times[mode].append(run(folder, mode, n, a.rows))
                    print(f"  {mode} #{n + 1}: {times[mode][-1]:.1f} s (load {load:.1f} at start)")
    finally:
        api.stop()
    cold, warm = (statistics.median(times[m]) for m in ("cold", "warm"))
    print()
    print("| workers | wall, s | per row, s |")
    print("|---|---:|---:|")
    for mode, value in (("cold (SDKs imported per worker)", cold), ("warm (default)", warm)):
        print(f"| {mode} | {value:.1f} | {value / a.rows:.2f} |")
    print(f"\nwarm / cold = {warm / cold:.2f}")


if __name__ == "__main__":
    main()
