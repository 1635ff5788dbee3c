"""Batch speed and reliability: ``nbconductor batch`` vs a plain loop of papermill, side by side.

The same exported job (research → draft with a context, a rule gate and a rubric → translations
mapped over markets → a Python stats step; every model ``offline:``, so the figures are the
machinery's own) runs over the same parameter rows two ways, each with its own fresh store:

- **papermill loop**: ``papermill.execute_notebook`` once per row, in one Python process (its
  imports paid once), papermill's default kernel engine: a kernel starts for every row.
  ``--cli-rows`` more rows time the ``papermill`` command itself, the usual shell loop.
- **nbconductor batch**: the ``nbconductor batch`` command (a subprocess, its start-up
  included) with local workers running each row on the in-process engine.

Output notebooks are then compared row by row: same cells, same outputs (run ids, widget ids
and durations masked), same papermill parameters metadata. Reliability: ``--reliability-rows``
rows with ``--reliability-workers`` workers, on the kernel engine (counting ZMQ errors, failed
rows and kernel processes left afterwards) and on the in-process engine.

    python benchmarks/bench_batch.py [--rows 50] [--cli-rows 3] [--reliability-rows 100]
                                     [--reliability-workers 8] [--workers N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, print_summary, table

TOPICS = [
    "pricing pages",
    "onboarding emails",
    "churn",
    "release notes",
    "support macros",
    "hiring",
    "security reviews",
    "roadmaps",
    "pricing experiments",
    "customer interviews",
]


def make_job(folder: Path) -> Path:
    from nbconductor import Pipeline
    from nbconductor.handoff._export import export_pipeline

    p = Pipeline(
        store=":memory:", namespace={"topic": "AI orchestration", "markets": ["fr", "de", "ja"]}
    )
    p.context(
        "brand_voice", "Warm, direct, no jargon. Short sentences. End with one concrete next step."
    )
    p.step(
        "research",
        'List five competitors writing about {{ topic }}, as JSON: [{"name": ..., "angle": ...}].',
        model="offline:fast",
        json=True,
    )
    p.step(
        "draft",
        "Write a newsletter issue about {{ topic }}. Angles to avoid:\n{{ research }}",
        model="offline:writer",
        contexts=["brand_voice"],
        checks=["max_words(400)"],
    )
    p.rubric(
        "draft",
        "- Is the tone warm and direct?\n- Does it end with a next step?",
        judge="offline:judge",
        threshold=0.5,
    )
    p.step(
        "translate",
        "Translate into {{ lang }}:\n{{ draft }}",
        model="offline:fast",
        map="lang in markets",
    )
    p.step("stats", '{"words": len(draft.split()), "languages": len(translate)}', python=True)
    return export_pipeline(p, folder / "job.ipynb")


def write_rows(path: Path, n: int) -> list[dict]:
    rows = [{"topic": f"{TOPICS[i % len(TOPICS)]} #{i}"} for i in range(n)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["topic"])
        w.writeheader()
        w.writerows(rows)
    return rows


def env_with(**values: str) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("JPY_SESSION_NAME", "NBCONDUCTOR_STORE")
    }
    env.update(values)
    return env


# ----------------------------------------------------------------------------------- sides


def papermill_loop(job: Path, rows: list[dict], out: Path, store: Path) -> float:
    """Seconds for papermill's Python API, kernel engine, one row after another."""
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    os.environ["NBCONDUCTOR_STORE"] = str(store)
    try:
        start = time.perf_counter()
        for i, row in enumerate(rows):
            pm.execute_notebook(
                str(job),
                str(out / f"job-{i:03d}.ipynb"),
                parameters=row,
                progress_bar=False,
                cwd=str(job.parent),
            )
        return time.perf_counter() - start
    finally:
        del os.environ["NBCONDUCTOR_STORE"]


def papermill_cli(job: Path, rows: list[dict], out: Path, store: Path) -> float:
    """Seconds per row for the ``papermill`` command (a new process and kernel for each row)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, row in enumerate(rows):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                str(job),
                str(out / f"cli-{i:03d}.ipynb"),
                "-p",
                "topic",
                row["topic"],
                "--no-progress-bar",
            ],
            check=True,
            capture_output=True,
            env=env_with(NBCONDUCTOR_STORE=str(store)),
            cwd=job.parent,
        )
    return (time.perf_counter() - start) / max(1, len(rows))


def nbconductor_batch(
    job: Path, params: Path, out: Path, store: Path, workers: int, engine: str | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [
        sys.executable,
        "-m",
        "nbconductor",
        "batch",
        str(job),
        "--params",
        str(params),
        "--workers",
        str(workers),
        "--out",
        str(out),
        "--store",
        str(store),
    ]
    if engine:
        cmd += ["--engine", engine]
    # Output to files, not pipes: the time is until the command returns, as in a shell (the
    # workers' forkserver, which shares the command's stdio, may still be exiting then).
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        start = time.perf_counter()
        code = subprocess.call(cmd, stdout=out_f, stderr=err_f, env=env_with(), cwd=job.parent)
        seconds = time.perf_counter() - start
        out_f.seek(0)
        err_f.seek(0)
        proc = subprocess.CompletedProcess(cmd, code, out_f.read(), err_f.read())
    return seconds, proc


# ------------------------------------------------------------------------------ comparing

_VOLATILE = [
    (re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}"), "<run>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"\d+(\.\d+)? ?(ms|s)\b"), "<t>"),
]


def comparable(path: Path) -> dict:
    """Cells, outputs (volatile bits masked) and papermill parameters of an output notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)

    def norm(value):
        if isinstance(value, str):
            for pattern, repl in _VOLATILE:
                value = pattern.sub(repl, value)
            return value
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        return value

    cells = []
    for cell in nb.cells:
        outs = []
        for o in cell.get("outputs", []):
            o = dict(o)
            o.pop("traceback", None)
            if (
                outs
                and o["output_type"] == "stream"
                and outs[-1]["output_type"] == "stream"
                and outs[-1]["name"] == o["name"]
            ):
                outs[-1]["text"] += o["text"]
                continue
            outs.append(o)
        cells.append(
            {
                "source": cell.source,
                "type": cell.cell_type,
                "tags": cell.metadata.get("tags", []),
                "count": cell.get("execution_count"),
                "outputs": norm(outs),
            }
        )
    return {"cells": cells, "parameters": nb.metadata.papermill.get("parameters")}


def compare(a_dir: Path, b_dir: Path, n: int) -> list[str]:
    """Rows whose output notebooks differ, with the first differing cell."""
    bad = []
    for i in range(n):
        a, b = comparable(a_dir / f"job-{i:03d}.ipynb"), comparable(b_dir / f"job-{i:03d}.ipynb")
        if a != b:
            where = next(
                (j for j, (x, y) in enumerate(zip(a["cells"], b["cells"], strict=False)) if x != y),
                "metadata",
            )
            bad.append(f"row {i}: differs at cell {where}")
    return bad


# ---------------------------------------------------------------------------- reliability


def kernels_left(marker: str) -> int:
    """Kernel processes still running whose environment mentions ``marker`` (the batch's folder)."""
    try:
        import psutil
    except ImportError:
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if "ipykernel_launcher" in line)
    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(
                proc.info["cmdline"] or []
            ) and marker in json.dumps(proc.environ()):
                count += 1
        except psutil.Error:
            continue
    return count


def zmq_errors(out: Path, stderr: str) -> int:
    text = stderr + "".join(p.read_text(errors="replace") for p in (out / "logs").glob("*.log"))
    return len(re.findall(r"ZMQError|Address already in use", text))


def reliability(job: Path, root: Path, n: int, workers: int) -> list[list]:
    params = root / "rows-rel.csv"
    write_rows(params, n)
    rows = []
    for engine in ("kernel", "nbconductor"):
        out = root / f"rel-{engine}"
        seconds, proc = nbconductor_batch(
            job, params, out, root / f"rel-{engine}.sqlite", workers, engine
        )
        manifest = json.loads((out / "manifest.json").read_text())["rows"]
        failed = sum(1 for r in manifest.values() if r["status"] == "failed")
        retried = sum(1 for r in manifest.values() if r.get("attempts", 1) > 1)
        time.sleep(1)  # let exiting kernels go before counting what is left
        rows.append(
            [
                engine,
                n,
                workers,
                round(seconds, 1),
                len(manifest) - failed,
                failed,
                retried,
                zmq_errors(out, proc.stderr),
                kernels_left(str(out)),
            ]
        )
    return rows


# ------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument(
        "--cli-rows", type=int, default=3, help="rows timed with the papermill command (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--reliability-rows", type=int, default=100, help="0 skips the reliability run"
    )
    parser.add_argument("--reliability-workers", type=int, default=8)
    parser.add_argument("--keep", help="keep the notebooks and stores in this folder")
    args = parser.parse_args()

    header(
        f"batch: {args.rows} rows, nbconductor batch ({args.workers} workers) vs a papermill loop"
    )
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nbc-bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    job = make_job(root)
    rows = write_rows(root / "rows.csv", args.rows)
    for name in ("loop", "batch"):
        shutil.rmtree(root / name, ignore_errors=True)
        (root / f"{name}.sqlite").unlink(missing_ok=True)

    loop_s = papermill_loop(job, rows, root / "loop", root / "loop.sqlite")
    batch_s, proc = nbconductor_batch(
        job, root / "rows.csv", root / "batch", root / "batch.sqlite", args.workers
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        return 1
    cli_s = (
        papermill_cli(job, rows[: args.cli_rows], root / "cli", root / "cli.sqlite")
        if args.cli_rows
        else None
    )
    differ = compare(root / "loop", root / "batch", args.rows)
    ratio = loop_s / batch_s

    print()
    lines = [
        [
            "papermill loop (API, kernel engine)",
            args.rows,
            round(loop_s, 1),
            round(loop_s / args.rows, 3),
        ],
        [
            f"nbconductor batch ({args.workers} workers, in-process)",
            args.rows,
            round(batch_s, 1),
            round(batch_s / args.rows, 3),
        ],
    ]
    if cli_s is not None:
        lines.insert(
            1,
            [
                f"papermill command (per row, {args.cli_rows} rows)",
                args.cli_rows,
                round(cli_s * args.cli_rows, 1),
                round(cli_s, 3),
            ],
        )
    print(table(["way", "rows", "seconds", "s/row"], lines))
    print(
        f"\nspeed-up: {ratio:.1f}x over the papermill loop"
        + (
            f", {cli_s * args.rows / batch_s:.1f}x over a loop of the papermill command"
            if cli_s
            else ""
        )
    )
    print(f"equivalent output notebooks: {args.rows - len(differ)} of {args.rows}")
    for line in differ[:5]:
        print("  " + line)

    summary = [
        {
            "benchmark": f"{args.rows}-row batch vs papermill loop",
            "figure": f"{ratio:.1f}x",
            "goal": ">= 10x",
            "met": ratio >= 10,
        },
        {
            "benchmark": "output notebooks equivalent",
            "figure": f"{args.rows - len(differ)}/{args.rows}",
            "goal": "all",
            "met": not differ,
        },
    ]
    if args.reliability_rows:
        print(f"\nreliability: {args.reliability_rows} rows, {args.reliability_workers} workers")
        rel = reliability(job, root, args.reliability_rows, args.reliability_workers)
        print(
            table(
                [
                    "engine",
                    "rows",
                    "workers",
                    "seconds",
                    "finished",
                    "failed",
                    "retried",
                    "ZMQ errors",
                    "kernels left",
                ],
                rel,
            )
        )
        for r in rel:
            summary.append(
                {
                    "benchmark": f"{r[1]} rows / {r[2]} workers, {r[0]} engine",
                    "figure": f"{r[5]} failed, {r[7]} ZMQ errors, {r[8]} kernels left",
                    "goal": "0 / 0 / 0",
                    "met": r[5] == 0 and r[7] == 0 and r[8] == 0,
                }
            )
    print_summary(summary)
    print(f"\nfiles in {root}")
    return 0 if all(s["met"] for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
