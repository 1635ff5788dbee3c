"""A 200-row batch on 8 local workers, with the store in an SQLite file and in PostgreSQL.

The job is `bench_batch.make_job`'s (research as JSON → a draft with a context, a rule gate and
a rubric → a translation mapped over three markets → a Python step; every model ``offline:``,
so the time is the machinery's and the store's). Each side is the ``nbconductor batch`` command
(a subprocess, start-up included) with ``--workers 8`` on the in-process engine, into a fresh
store: a new SQLite file, or a new database on a PostgreSQL server on loopback the script starts
(the tests' ``tests/pgserver.py``: fsync off). Sides interleaved, median wall time; the store's
rows are counted afterwards (every row's run, once).

    python benchmarks/bench_store_batch.py [--rows 200] [--workers 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import machine, median
from bench_batch import env_with, make_job, write_rows


def one_batch(job: Path, rows: Path, store: str, workers: int, out: Path) -> float:
    """Seconds for the batch command; checks every row finished and was stored once."""
    from nbconductor.store._base import connect

    argv = [sys.executable, "-m", "nbconductor", "batch", str(job), "--params", str(rows)]
    argv += ["--workers", str(workers), "--out", str(out), "--store", store]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env_with(), timeout=1800)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"batch failed ({done.returncode}): {done.stderr[-2000:]}")
    n = sum(1 for _ in rows.open()) - 1
    db = connect(store, readonly=True)
    try:
        runs = db.count("runs")
        failed = db.query("SELECT COUNT(*) AS n FROM runs WHERE status NOT IN ('passed','flagged')")
    finally:
        db.close()
    assert runs == n and failed[0]["n"] == 0, (runs, n, failed)
    return seconds


def main() -> None:
    from pgserver import PostgresServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print(machine())
    root = Path(tempfile.mkdtemp(prefix="nbc-bench-store-batch-"))
    job = make_job(root)
    rows = root / "rows.csv"
    write_rows(rows, args.rows)
    server = PostgresServer().start()
    times: dict[str, list[float]] = {"SQLite file": [], "PostgreSQL, loopback": []}
    try:
        for i in range(args.repeats):
            for name in times:  # interleaved: load drifts onto both alike
                store = (
                    str(root / f"s{i}.sqlite") if name.startswith("SQLite") else server.database()
                )
                load = os.getloadavg()[0]
                t = one_batch(job, rows, store, args.workers, root / f"out-{name[:3]}-{i}")
                times[name].append(t)
                print(f"  {name}: {t:.1f} s (load {load:.1f} at its start)", flush=True)
    finally:
        server.stop()
    print(f"\n| store | {args.rows} rows on {args.workers} workers, s | rows/s |\n|---|---:|---:|")
    for name, ts in times.items():
        t = median(ts)
        print(f"| {name} | {t:.1f} | {args.rows / t:.1f} |")
    print(machine())


if __name__ == "__main__":
    main()
