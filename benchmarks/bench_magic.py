"""The notebook path: ``%conductor run`` next to the Python API, and ``nbconductor run`` of a job.

- **magic vs API**: a chain of N ``--python`` steps (each reads the previous one), store on
  disk, run by ``Pipeline.run`` and by ``%conductor run`` in a real `InteractiveShell` — the
  live graph widget, its throttled updates and the run summary included — at N = 100, 200,
  400 and 1,000; first run and unchanged (cached) re-run. Declaring the steps is untimed.
  Goal: ``%conductor run`` within 2x of the Python API at 1,000 steps, and linear (its
  per-step time at 1,000 steps within 1.5x of that at 100).
- **a 500-step job**: ``nbconductor run`` (in-process engine) of a notebook of 500 lazy
  ``%%step --python`` cells and a final ``%conductor run``, next to the Python API running the
  same 500 steps. ``--kernel`` adds papermill's kernel engine (slow: a save per cell).

Medians of ``--repeats``; cases interleaved.

    python benchmarks/bench_magic.py [--repeats 3] [--kernel]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, median, print_summary, table, tmp_store

SIZES = (100, 200, 400, 1000)
JOB_STEPS = 500
RATIO_GOAL = 2.0
LINEAR_GOAL = 1.5


def body(i: int) -> str:
    return "1" if i == 0 else f"s{i - 1} + 1"


def api_pipeline(n: int):
    from nbconductor import Pipeline

    p = Pipeline(store=tmp_store("api"))
    for i in range(n):
        p.step(f"s{i}", body(i), python=True)
    return p


def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.display_formatter.active_types = ip.display_formatter.format_types
    return ip


def magic_session(n: int):
    """A fresh namespace and pipeline (as a new kernel would have) with n steps declared."""
    from nbconductor.notebook._magics import ConductorMagics

    os.environ["NBCONDUCTOR_STORE"] = tmp_store("magic")
    ip = shell()
    ip.user_ns.clear()
    ip.init_user_ns()
    if "conductor" not in ip.magics_manager.magics["line"]:
        ip.run_line_magic("load_ext", "nbconductor")
    magics = ConductorMagics(ip)
    ip.register_magics(magics)
    ip.user_ns["__nbconductor__"] = magics
    for i in range(n):
        ip.run_cell_magic("step", f"s{i} --python --lazy", body(i))
    return ip, magics


def magic_run(session) -> None:
    ip, _ = session
    with contextlib.redirect_stdout(io.StringIO()):  # a terminal shell prints what it displays
        ip.run_line_magic("conductor", "run")


def check(p_or_session, n: int) -> None:
    pipeline = p_or_session if hasattr(p_or_session, "results") else p_or_session[1].pipeline
    assert pipeline.results[f"s{n - 1}"].output == n, "the chain computed the wrong value"


def magic_vs_api(repeats: int) -> tuple[list[list], list[dict]]:
    rows, summary, per_step = [], [], {}
    for n in SIZES:
        cases = {
            "API first": (lambda n=n: api_pipeline(n), lambda p: p.run()),
            "magic first": (lambda n=n: magic_session(n), magic_run),
            "API cached": (lambda n=n: _ran(api_pipeline(n), n), lambda p: p.run()),
            "magic cached": (lambda n=n: _ran_magic(magic_session(n), n), magic_run),
        }
        times = interleaved(cases, repeats)
        med = {k: median(v["run"]) for k, v in times.items()}
        for kind in ("first", "cached"):
            api, magic = med[f"API {kind}"], med[f"magic {kind}"]
            per_step[(n, kind)] = magic / n
            rows.append([n, kind, api * 1000, magic * 1000, magic / n * 1e6, magic / api])
    for kind in ("first", "cached"):
        big = [r for r in rows if r[0] == SIZES[-1] and r[1] == kind][0]
        linear = per_step[(SIZES[-1], kind)] / per_step[(SIZES[0], kind)]
        summary.append(
            {
                "benchmark": f"%conductor run, {SIZES[-1]}-step chain, {kind} run",
                "figure": f"{big[5]:.2f}x the Python API ({big[3]:.0f} vs {big[2]:.0f} ms); "
                f"µs/step at {SIZES[-1]} / at {SIZES[0]}: {linear:.2f}",
                "goal": f"≤ {RATIO_GOAL:g}x API, linear (≤ {LINEAR_GOAL:g})",
                "met": big[5] <= RATIO_GOAL and linear <= LINEAR_GOAL,
            }
        )
    return rows, summary


def _ran(p, n):
    p.run()
    check(p, n)
    return p


def _ran_magic(session, n):
    magic_run(session)
    check(session, n)
    return session


def job_notebook(n: int, path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell("start = 1")
    params.metadata["tags"] = ["parameters"]
    cells = [params, new_code_cell("%load_ext nbconductor")]
    cells += [new_code_cell(f"%%step s{i} --python --lazy\n{body(i)}") for i in range(n)]
    cells.append(new_code_cell("%conductor run"))
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": kernel}), path)


def cli_run(path: Path, engine: str) -> None:
    from nbconductor.cli import main

    os.environ["NBCONDUCTOR_STORE"] = tmp_store("job")
    out = path.with_suffix(f".{engine}.out.ipynb")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["run", str(path), "-o", str(out), "--engine", engine])
    assert status == 0, f"nbconductor run exited {status}"


def job(repeats: int, kernel: bool) -> tuple[list[list], list[dict]]:
    path = Path(tempfile.mkdtemp(prefix="nbc-bench-job-")) / "job.ipynb"
    job_notebook(JOB_STEPS, path)
    cases = {
        "Python API": (lambda: api_pipeline(JOB_STEPS), lambda p: p.run()),
        "nbconductor run (in-process)": (lambda: path, lambda p: cli_run(p, "nbconductor")),
    }
    if kernel:
        cases["nbconductor run --engine kernel"] = (lambda: path, lambda p: cli_run(p, "kernel"))
    times = interleaved(cases, repeats)
    api = median(times["Python API"]["run"])
    rows = [
        [label, JOB_STEPS, median(t["run"]), median(t["run"]) / api] for label, t in times.items()
    ]
    engine = median(times["nbconductor run (in-process)"]["run"])
    summary = [
        {
            "benchmark": f"nbconductor run, {JOB_STEPS}-step job (in-process engine)",
            "figure": f"{engine:.2f} s, {engine / api:.1f}x the Python API ({api:.2f} s); "
            "includes starting the shell, declaring 500 steps and writing the notebook",
            "goal": "—",
            "met": None,
        }
    ]
    return rows, summary


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel", action="store_true", help="also papermill's kernel engine")
    args = parser.parse_args(argv)
    header("%conductor run and nbconductor run vs the Python API")
    rows, summary = magic_vs_api(args.repeats)
    print(table(["steps", "run", "API ms", "magic ms", "magic µs/step", "magic / API"], rows))
    job_rows, job_summary = job(args.repeats, args.kernel)
    print()
    print(table(["case", "steps", "s", "× API"], job_rows))
    summary += job_summary
    print_summary(summary)
    return summary


if __name__ == "__main__":
    summary = main()
    sys.exit(1 if any(r["met"] is False for r in summary) else 0)
