"""Per-step store overhead, SQLite file vs PostgreSQL on loopback, on the 1,000-step chain.

Every step is a no-op `Pipeline.function`, so the time is the engine's own plus one store
write (and one cache lookup) per step: on PostgreSQL two round trips per fresh step, one per
cached step (tests/store/test_store_postgres.py counts them). CPU time is printed beside wall time:
on a shared machine it is the steadier measure (wall time there is mostly waiting for a core). The PostgreSQL server is started by the script (the
tests' `tests/pgserver.py`: initdb + pg_ctl on a free port on 127.0.0.1, fsync off as in the
tests); each repeat uses a fresh store (a new SQLite file, a new database). Medians.

    python benchmarks/bench_store_backends.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import machine, make_function, median, tmp_store


def chain(n: int, store: str):
    from nbconductor import Pipeline

    p = Pipeline(store=store)
    _ = p.store  # open (and create) the store outside the timed region
    p.function("s0")(make_function("s0", []))
    for i in range(1, n):
        p.function(f"s{i}")(make_function(f"s{i}", [f"s{i - 1}"]))
    return p


def timed(n: int, store: str) -> tuple[float, float, float, float]:
    """Seconds for a fresh run and the all-cached re-run: (wall, wall, CPU, CPU)."""
    p = chain(n, store)
    t0, c0 = time.perf_counter(), time.process_time()
    first = p.run()
    t1, c1 = time.perf_counter(), time.process_time()
    again = p.run()
    t2, c2 = time.perf_counter(), time.process_time()
    assert first.status == "passed" and all(r.cached for r in again.results.values())
    p.close()
    return t1 - t0, t2 - t1, c1 - c0, c2 - c1


def main() -> None:
    from pgserver import PostgresServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    server = PostgresServer().start()
    try:
        cases = {
            "memory": lambda: ":memory:",
            "sqlite": lambda: str(tmp_store("chain")),
            "postgres": server.database,
        }
        runs: dict[str, list[tuple[float, ...]]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, target in cases.items():  # interleaved: load drifts onto all alike
                runs[name].append(timed(args.steps, target()))
    finally:
        server.stop()
    n = args.steps
    print(
        "| store | fresh run, µs/step (wall / CPU) | cached re-run, µs/step (wall / CPU) |\n"
        "|---|---:|---:|"
    )
    for name, rs in runs.items():
        fresh, cached, fresh_cpu, cached_cpu = (
            median([r[i] for r in rs]) / n * 1e6 for i in range(4)
        )
        print(f"| {name} | {fresh:.0f} / {fresh_cpu:.0f} | {cached:.0f} / {cached_cpu:.0f} |")
    print(machine())  # the load at the end too: it drifts while others work


if __name__ == "__main__":
    main()
