"""``import nbconductor`` time against ``import json, sqlite3, asyncio``, and what it imports.

Each import runs in a fresh interpreter (``python -c``), timed inside it with
``time.perf_counter`` around the import statement alone (interpreter start-up excluded,
which would only dilute the ratio); the cases alternate, median of ``--repeats``. Also
reported: the whole process's wall time, and ``from nbconductor import Pipeline`` (the first
use, which loads the engine: Jinja2, pydantic …) for reference. Finally the check that
``import nbconductor`` loads none of anthropic, openai, ipywidgets, papermill or IPython.

    python benchmarks/bench_import.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, print_summary, table

GOAL = 3.0
HEAVY = ("anthropic", "openai", "ipywidgets", "papermill", "IPython")
CASES = {
    "import json, sqlite3, asyncio": "import json, sqlite3, asyncio",
    "import nbconductor": "import nbconductor",
    "from nbconductor import Pipeline (first use)": "from nbconductor import Pipeline",
}
_PROBE = """
import sys, time
start = time.perf_counter()
{statement}
took = time.perf_counter() - start
import json
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps([took, heavy]))
"""


def probe(statement: str) -> tuple[float, float, list[str]]:
    """(import seconds, process seconds, heavy modules loaded) in a fresh interpreter."""
    code = _PROBE.format(statement=statement, heavy=HEAVY)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    process = time.perf_counter() - start
    took, heavy = json.loads(out.stdout)
    return took, process, heavy


def measure(repeats: int = 10) -> tuple[list[list], list[dict], dict[str, list[str]]]:
    results: dict[str, list[tuple[float, float, list[str]]]] = {label: [] for label in CASES}
    for statement in CASES.values():  # warm-up: the OS file cache
        probe(statement)
    for _ in range(repeats):
        for label, statement in CASES.items():
            results[label].append(probe(statement))
    base = median([r[0] for r in results["import json, sqlite3, asyncio"]])
    rows, heavy = [], {}
    for label, runs in results.items():
        took = median([r[0] for r in runs])
        rows.append([label, took * 1e3, median([r[1] for r in runs]) * 1e3, took / base, len(runs)])
        heavy[label] = sorted(set().union(*(r[2] for r in runs)))
    ratio = median([r[0] for r in results["import nbconductor"]]) / base
    summary = [
        {
            "benchmark": "import nbconductor vs import json, sqlite3, asyncio",
            "figure": f"{rows[1][1]:.2f} ms vs {rows[0][1]:.2f} ms = {ratio:.2f}×",
            "goal": f"≤ {GOAL:.0f}×",
            "met": ratio <= GOAL,
        },
        {
            "benchmark": "import nbconductor loads no SDK/widgets/papermill/IPython",
            "figure": ", ".join(heavy["import nbconductor"]) or "none of " + ", ".join(HEAVY),
            "goal": "none",
            "met": not heavy["import nbconductor"],
        },
    ]
    return rows, summary, heavy


HEADERS = [
    "statement (fresh interpreter)",
    "import ms",
    "process ms",
    "× json+sqlite3+asyncio",
    "n",
]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    header(f"import time (fresh interpreter each, median of {args.repeats})")
    rows, summary, heavy = measure(args.repeats)
    print(table(HEADERS, rows))
    for label, mods in heavy.items():
        print(f"{label}: loads {', '.join(mods) if mods else 'none'} of {', '.join(HEAVY)}")
    return summary


if __name__ == "__main__":
    print_summary(main())
