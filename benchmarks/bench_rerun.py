"""Re-running an unchanged 20-step pipeline: wall time and model calls.

The pipeline is a content-factory shape: 15 LLM steps (one ``--json``, one ``--map`` over
three markets, a fan-out of eight sections and their joins) and 5 Python steps, on the
offline provider wrapped in a registered ``counting`` provider that counts every call.
Measured, with the store on disk:

- the first run (everything computed; the offline provider adds no latency);
- a re-run in the same `Pipeline` (the in-process cache);
- a re-run in a fresh `Pipeline` on the same store file (a new session: every hit comes
  from SQLite). Declaring its steps is timed apart;
- for reference, a re-run in a new Python process (a restarted kernel): its ``run()`` pays
  first-use imports (Jinja2 …); "declare ms" there is the process's imports plus declaring.

Each re-run also reports the model calls it made and the store rows it wrote with
``cached = 0`` (both must be 0). Medians of ``--repeats`` re-runs, over ``--stores`` fresh stores.

    python benchmarks/bench_rerun.py [--repeats 10] [--stores 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, print_summary, table, timed, tmp_store

GOAL_MS = 50.0
SECTIONS = 8
PARAMS = {"topic": "AI orchestration for small teams", "markets": ["fr", "de", "ja"], "words": 600}


def counting_provider():
    from nbconductor.providers.offline import OfflineProvider

    class CountingProvider(OfflineProvider):
        """The offline provider, counting the calls that reach it."""

        name = "counting"
        calls = 0

        async def complete(self, request):
            type(self).calls += 1
            return await super().complete(request)

    return CountingProvider


def declare(store_path: str):
    """The 20-step pipeline on ``store_path``."""
    from nbconductor import Pipeline

    p = Pipeline(store=store_path)
    p.context("voice", "Warm, direct, no jargon. Short sentences. End with one concrete next step.")
    m = "counting:writer"
    p.step(
        "research",
        'List five competitors writing about {{ topic }}, as JSON: [{"name": ..., "angle": ...}].',
        model=m,
        json=True,
    )
    p.step("angles", "[c['angle'] for c in research]", python=True)
    p.step(
        "outline",
        f"Outline a {{{{ words }}}}-word post about {{{{ topic }}}} in {SECTIONS} sections, "
        "avoiding these angles: {{ angles | join(', ') }}",
        model=m,
        context="voice",
    )
    for i in range(SECTIONS):
        p.step(
            f"section{i}",
            f"Write section {i + 1} of this outline:\n{{{{ outline }}}}",
            model=m,
            context="voice",
        )
    sections = " ".join(f"section{i}" for i in range(SECTIONS))
    p.step(
        "draft",
        "Join these sections into one post:\n"
        + "\n\n".join(f"{{{{ section{i} }}}}" for i in range(SECTIONS)),
        model=m,
        context="voice",
    )
    p.step("stats", '{"words": len(draft.split()), "chars": len(draft)}', python=True)
    p.step("title", "Write a title for:\n{{ draft }}", model=m)
    p.step("summary", "Summarise in two sentences:\n{{ draft }}", model=m)
    p.step("translate", "Translate into {{ lang }}:\n{{ summary }}", model=m, map="lang in markets")
    p.step("tweet", "Write a tweet announcing {{ title }}:\n{{ summary }}", model=m)
    p.step("readability", "round(stats['words'] / max(1, draft.count('.')), 1)", python=True)
    p.step("lengths", f"[len(s) for s in [{', '.join(sections.split())}]]", python=True)
    p.step(
        "package",
        '{"title": title, "summary": summary, "tweet": tweet, "translations": translate, '
        '"stats": stats, "lengths": lengths, "readability": readability}',
        python=True,
    )
    assert len(p.steps) == 20, len(p.steps)
    return p


def fresh_rows(p, run_id: str) -> int:
    """Store rows of ``run_id`` that are not cache hits (a re-run must write none)."""
    return p.store.query(
        "SELECT COUNT(*) AS n FROM results WHERE run_id=? AND cached=0", (run_id,)
    )[0]["n"]


_NEW_PROCESS = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, {here!r})
import bench_rerun
from nbconductor.providers import registry
provider = bench_rerun.counting_provider()
registry.register("counting", provider)
p = bench_rerun.declare({path!r})
declared = time.perf_counter()
result = p.run(bench_rerun.PARAMS)
done = time.perf_counter()
n = bench_rerun.fresh_rows(p, result.run_id)
print(declared - start, done - declared, provider.calls, n)
"""


def new_process(path: str) -> tuple[float, float, int, int]:
    """(imports + declare s, run s, model calls, fresh rows) of a re-run in a new interpreter."""
    code = _NEW_PROCESS.format(here=str(Path(__file__).resolve().parent), path=path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    declare_s, run_s, calls, rows = out.stdout.split()
    return float(declare_s), float(run_s), int(calls), int(rows)


def measure(repeats: int = 10, stores: int = 3) -> tuple[list[list], list[dict]]:
    from nbconductor.providers import registry

    provider = counting_provider()
    registry.register("counting", provider)
    first, same, fresh, declare_s, process = [], [], [], [], []
    calls = {"first": [], "same": [], "fresh": []}
    rows_written = {"same": [], "fresh": []}
    for _ in range(1 + stores):  # the first store warms up imports and is not counted
        path = tmp_store("rerun")
        p = declare(path)
        before = provider.calls
        seconds, result = timed(lambda p=p: p.run(PARAMS))
        result.raise_for_status()
        if _ == 0:
            p.close()
            continue
        first.append(seconds)
        calls["first"].append(provider.calls - before)
        for _r in range(repeats):
            before = provider.calls
            seconds, again = timed(lambda p=p: p.run(PARAMS))
            assert again.outputs == result.outputs
            same.append(seconds)
            calls["same"].append(provider.calls - before)
            rows_written["same"].append(fresh_rows(p, again.run_id))
        p.close()
        for _r in range(repeats):
            d_seconds, q = timed(lambda path=path: declare(path))
            before = provider.calls
            seconds, again = timed(lambda q=q: q.run(PARAMS))
            assert again.outputs == result.outputs
            fresh.append(seconds)
            declare_s.append(d_seconds)
            calls["fresh"].append(provider.calls - before)
            rows_written["fresh"].append(fresh_rows(q, again.run_id))
            q.close()
        for _r in range(max(1, repeats // 3)):
            process.append(new_process(path))

    rows = [
        ["first run", median(first) * 1e3, "", max(calls["first"]), "", len(first)],
        [
            "re-run, same Pipeline",
            median(same) * 1e3,
            "",
            max(calls["same"]),
            max(rows_written["same"]),
            len(same),
        ],
        [
            "re-run, fresh Pipeline on the store",
            median(fresh) * 1e3,
            median(declare_s) * 1e3,
            max(calls["fresh"]),
            max(rows_written["fresh"]),
            len(fresh),
        ],
        [
            "re-run, new process (reference)",
            median([x[1] for x in process]) * 1e3,
            median([x[0] for x in process]) * 1e3,
            max(x[2] for x in process),
            max(x[3] for x in process),
            len(process),
        ],
    ]
    summary = []
    for label, times, key in (
        ("same Pipeline", same, "same"),
        ("fresh Pipeline, same store", fresh, "fresh"),
    ):
        ms, n_calls = median(times) * 1e3, max(calls[key])
        summary.append(
            {
                "benchmark": f"unchanged 20-step re-run, {label}",
                "figure": f"{ms:.1f} ms, {n_calls} model calls, {max(rows_written[key])} fresh rows",
                "goal": f"< {GOAL_MS:.0f} ms, 0 calls",
                "met": ms < GOAL_MS and n_calls == 0 and max(rows_written[key]) == 0,
            }
        )
    return rows, summary


HEADERS = ["run", "wall ms", "declare ms", "model calls", "fresh rows", "n"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--stores", type=int, default=3)
    args = parser.parse_args(argv)
    header(
        f"re-running an unchanged 20-step pipeline (store on disk; median of {args.repeats} × {args.stores})"
    )
    rows, summary = measure(args.repeats, args.stores)
    print(table(HEADERS, rows))
    return summary


if __name__ == "__main__":
    print_summary(main())
