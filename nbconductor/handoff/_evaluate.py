"""``nbconductor compare`` and ``nbconductor eval``: a job notebook over a dataset, in the terminal.

``compare`` runs a step's variants side by side (`nbconductor._compare`) and prints the figures
(or ``--json``), writing an HTML report with ``--out DIR``. Bad input is one line and exit 2
before anything runs (`OptionError` through `nbconductor.cli.main`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .._errors import OptionError


def load_job(notebook: str, store: str | None = None):
    """The job's `Pipeline` (read, not run) with its store; `OptionError` for a missing file."""
    from .._pipeline import Pipeline
    from ._batch import _store_path

    path = Path(notebook)
    if not path.is_file():
        raise OptionError(f"notebook {notebook!r} not found")
    return Pipeline.from_notebook(path, store=_store_path(store, path.resolve()))


def read_data(path: str) -> list[dict[str, Any]]:
    from ._batch import read_rows

    try:
        return read_rows(path)
    except OptionError as exc:
        raise OptionError(str(exc).replace("--params", "--data")) from None


def _progress(label: str):
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: {done}/{total} cells", end=end, file=sys.stderr, flush=True)

    return show


def cli_compare(
    notebook: str,
    step: str,
    data: str,
    *,
    variants: str | None = None,
    repeats: int = 1,
    workers: int | None = None,
    as_json: bool = False,
    out: str | None = None,
    store: str | None = None,
    pairwise: str | None = None,
) -> int:
    """Run the compare and print it; returns the exit status (0)."""
    from .._compare import compare, plan_compare

    rows = read_data(data)
    pipeline = load_job(notebook, store)
    try:
        names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
        kwargs = {
            "variants": names,
            "repeats": repeats,
            "workers": workers,
            "pairwise": pairwise,
            "data": Path(data).name,
        }
        plan_compare(pipeline, step, rows, **kwargs)  # every check, before a report folder exists
        target = None
        if out:
            target = Path(out)
            target.mkdir(parents=True, exist_ok=True)
        result = compare(pipeline, step, rows, progress=_progress(f"compare {step}"), **kwargs)
    finally:
        pipeline.close()
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.text())
    if target is not None:
        from ..render._compare import report_page

        page = target / f"compare-{step}.html"
        page.write_text(report_page(result))
        (target / f"compare-{step}.json").write_text(json.dumps(result.to_json(), indent=2))
        if not as_json:
            print(f"report: {page}")
    return 0


def _read_baseline(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"--baseline {path!r} not found (write one with --save)")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise OptionError(f"--baseline {p.name} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
        raise OptionError(f"--baseline {p.name} is not an eval baseline (written by --save)")
    return data


def cli_eval(
    notebook: str,
    data: str,
    *,
    save: str | None = None,
    baseline: str | None = None,
    max_drop: float = 0.05,
    workers: int | None = None,
    as_json: bool = False,
    store: str | None = None,
) -> int:
    """Run the job over ``data``; exit 1 on a significant drop against ``baseline``, else 0."""
    from .._eval import eval_text, evaluate, regressions

    if not 0 <= max_drop <= 1:
        raise OptionError(f"--max-drop must be between 0 and 1, got {max_drop}")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be 1 or more, got {workers}")
    base = _read_baseline(baseline) if baseline else None
    rows = read_data(data)
    pipeline = load_job(notebook, store)
    try:
        from .._compare import _check_columns

        graph = pipeline.graph
        _check_columns(pipeline, "eval", {"base": graph}, set(graph.steps), rows, Path(data).name)
        result = evaluate(pipeline, rows, workers=workers or 8)
    finally:
        pipeline.close()
    dropped = regressions(result, base, max_drop) if base else []
    result["regressions"] = dropped
    print(json.dumps(result, indent=2) if as_json else eval_text(result))
    if save:
        Path(save).write_text(
            json.dumps({k: v for k, v in result.items() if k != "regressions"}, indent=2)
        )
    if not as_json:
        for line in dropped:
            print(f"regression: {line}")
        if base is not None and not dropped:
            print(f"no regression against {Path(baseline).name} (max drop {max_drop:g})")
    return 1 if dropped else 0
