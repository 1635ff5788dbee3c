"""``nbconductor batch``: one papermill run per row of parameters, in parallel.

Rows run in warm local worker processes (`nbconductor.handoff._workers`) or on a Dask cluster
(`nbconductor.handoff._dask`), each row (`nbconductor.handoff._row`) on the in-process engine for exported jobs
(a kernel per row otherwise). Every row writes its output notebook and its step results into one
run store (SQLite in WAL mode, shared through ``NBCONDUCTOR_STORE``). A failing row does not stop
the others; a worker that dies marks its row failed and is replaced. ``manifest.json`` in the
output folder records each row's outcome, which is what ``--resume`` reads to run only the rows
that did not finish. This module is the coordinator: manifest, progress, summary; the rows
come in through `nbconductor.handoff._rows`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _trace
from .._errors import OptionError
from .._params import check_known
from .._redact import redact, redact_value
from .._states import FAILED, FLAGGED, PASSED
from .._summary import fmt_cost, preview, text_table
from ..store._base import shown
from ..store._history import HISTORY_ENV
from ._batch_images import write_row_images
from ._row import Row, RowResult, execute_row, params_key
from ._rows import given_rows, plural, read_rows
from ._runner import cell_text, choose_engine, engine_label, environ, redact_file
from ._workers import WORKER_ENV, job_providers, run_local, sweep, worker_context

__all__ = [
    "FINISHED",
    "BatchResult",
    "MANIFEST",
    "WORKER_ENV",
    "Manifest",
    "Progress",
    "Row",
    "RowResult",
    "batch",
    "cli_batch",
    "execute_row",
    "output_name",
    "params_key",
    "read_rows",
    "run_local",
    "summary",
    "sweep",
]

MANIFEST = "manifest.json"
FINISHED = (PASSED, FLAGGED)


# ------------------------------------------------------------------------------ rows out


def output_name(notebook: Path, index: int, total: int) -> str:
    width = max(3, len(str(total - 1)))
    return f"{notebook.stem}-{index:0{width}d}.ipynb"


# -------------------------------------------------------------------------------- manifest


class Manifest:
    """``manifest.json`` in the output folder: every row's last outcome."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, out_dir: Path, notebook: Path, params_file: str, store: str, resume: bool
    ) -> Manifest:
        path = out_dir / MANIFEST
        data = None
        if resume and path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = None
        if data is None:
            data = {"version": 1, "rows": {}}
        data.update(notebook=str(notebook), params=str(params_file), store=shown(store))
        return cls(path, data)

    def finished(self, row: Row) -> dict | None:
        entry = self.data["rows"].get(str(row.index))
        if entry and entry.get("status") in FINISHED and entry.get("key") == row.key:
            return entry
        return None

    def record(self, result: dict) -> None:
        with self._lock:
            self.data["rows"][str(result["index"])] = {**result, "finished": time.time()}
            self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Parameter values and errors as given may hold a secret; a row's `key` is a hash, kept for --resume.
        tmp.write_text(json.dumps(redact_value(self.data), indent=1, default=str))
        os.replace(tmp, self.path)


# -------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal, else one plain line per finished row (on stderr)."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label
        self.bar = None
        if total and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="row", desc=label, file=sys.stderr)

    def update(self, result: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if result["status"] == FAILED:
                self.bar.write(f"row {result['index']} failed: {result['error']}", file=sys.stderr)
            return
        width = len(str(self.total))
        tail = f": {result['error']}" if result["status"] == FAILED else ""
        print(
            f"[{self.done:>{width}}/{self.total}] row {result['index']} {result['status']} "
            f"in {result['seconds']:.1f}s{tail}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------- the public API


@dataclass
class BatchResult:
    """What `batch` returns: each row's outcome (in row order), where the notebooks and store are."""

    rows: list[dict]
    out_dir: Path
    store: str
    seconds: float
    missing: int = 0  # rows that never reported (a coordinator interrupted mid-batch)

    @property
    def failed(self) -> int:
        """How many rows did not finish (failed, or never reported)."""
        return sum(1 for r in self.rows if r["status"] == FAILED) + self.missing

    def summary(self) -> str:
        """The table ``nbconductor batch`` prints at the end."""
        return summary(self.rows, self.out_dir, self.seconds, self.store)


def batch(
    job: str | os.PathLike,
    rows: str | os.PathLike | list[dict[str, Any]],
    *,
    workers: int | None = None,
    dask: str | None = None,
    out: str | os.PathLike = "batch-out",
    resume: bool = False,
    engine: str | None = None,
    store: str | os.PathLike | None = None,
    provider_batch: bool = False,
    batch_window: float | None = None,
    dry_run: bool = False,
) -> BatchResult:
    """Run the notebook ``job`` once per parameter row, in parallel; returns a `BatchResult`.

    ``rows`` is a .csv/.yaml/.json file of rows (`read_rows`) or a list of mappings. Rows run on
    ``workers`` local processes (default: one per CPU) or on the Dask cluster at ``dask``; an
    output notebook per row goes to ``out``, every result into ``store``. ``resume`` skips rows
    that finished in an earlier batch into the same ``out``. A failed row does not stop the
    others. Raises `OptionError` (a `ParameterError` for a bad row) before anything runs.
    ``provider_batch`` sends every model call through the providers' batch APIs
    (`nbconductor.handoff._provider_batch`): a batch goes when every running row waits, or once
    no call has joined it for ``batch_window`` seconds; with ``dry_run`` it prints the estimate (calls, batch cost, saving) and runs nothing.
    """
    notebook, nb, config, window = _checked_options(
        job,
        workers=workers,
        dask=dask,
        provider_batch=provider_batch,
        batch_window=batch_window,
        dry_run=dry_run,
    )
    params_name, rows_in = _rows_of(rows)
    _check_known(nb, rows_in, params_name)
    if dry_run:
        from ._provider_batch import dry_run as estimate

        print(estimate(notebook, rows_in))
        return BatchResult([], Path(out).resolve(), "", 0.0)
    if not dask:
        # the workers' start-up overlaps with what the coordinator does next
        worker_context(
            job_providers([cell_text(c) for c in nb["cells"] if isinstance(c, dict)], config)
        )
    engine = choose_engine(nb, engine, register=False)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = str(_store_path(None if store is None else str(store), notebook))
    manifest = Manifest.open(out_dir, notebook, params_name, store, resume)
    all_rows = [
        Row(i, params, str(out_dir / output_name(notebook, i, len(rows_in))))
        for i, params in enumerate(rows_in)
    ]
    results, todo = _resumed(manifest, all_rows, resume)
    if resume and results:
        print(
            f"nbconductor: resuming: {len(results)} of {plural(len(all_rows), 'row')} already finished",
            file=sys.stderr,
        )
    if provider_batch:
        from ._provider_batch import worker_count

        workers = worker_count(workers, len(todo))
    where = f"Dask at {dask}" if dask else plural(_worker_count(workers, len(todo)), "local worker")
    print(
        f"nbconductor: {plural(len(todo), 'row')} of {notebook.name} on {where}, "
        f"{engine_label(engine)} engine; store {shown(store)}",
        file=sys.stderr,
    )
    progress = Progress(len(todo), notebook.stem)
    started = time.time()

    def done(result: dict) -> None:
        if result.get("output") and Path(result["output"]).is_file():
            result["images"] = write_row_images(result["output"])  # PNGs beside the notebook
        results[result["index"]] = result
        manifest.record(result)
        progress.update(result)
        if brokered is not None:
            brokered.row_done()

    brokered = None
    if provider_batch and todo:
        from ._provider_batch import BrokerRun

        brokered = BrokerRun(
            manifest,
            window=window,
            rows=len(todo),
            workers=_worker_count(workers, len(todo)),
            progress=progress,
            store=store,
            resume=resume,
        )

    spec = {"notebook": str(notebook), "engine": engine, "store": store}
    traced = _trace.batch_started(notebook.stem, len(todo))  # rows link to it (environment)
    try:
        # Every row's history() ends where the batch began: rows do not see each other's outputs.
        with environ({HISTORY_ENV: repr(started)}):
            _run_rows(todo, spec, done, dask, workers, brokered, out_dir / "logs")
    finally:
        if traced:
            traced(FAILED if any(r.get("status") == FAILED for r in results.values()) else PASSED)
        progress.close()
        manifest.write()
        for log in (out_dir / "logs").glob("*.log"):
            redact_file(log)
    ordered = [results[i] for i in sorted(results)]
    return BatchResult(
        ordered, out_dir, store, time.time() - started, missing=len(all_rows) - len(ordered)
    )


def _checked_options(
    job: str | os.PathLike,
    *,
    workers: int | None,
    dask: str | None,
    provider_batch: bool,
    batch_window: float | None,
    dry_run: bool,
) -> tuple[Path, dict, Any, float]:
    """(the notebook's path, its JSON, the config, the batch window), or `OptionError` for
    options that do not go together, a missing notebook or a bad config: before any row."""
    from .._config import load_config
    from ._provider_batch import check_options

    window = check_options(provider_batch=provider_batch, dask=dask, window=batch_window)
    if dry_run and not provider_batch:
        raise OptionError("--dry-run needs --provider-batch")
    if workers is not None and workers < 1:
        raise OptionError(
            f"--workers must be 1 or more, got {workers} (leave it out for one per CPU)"
        )
    notebook = Path(job).resolve()
    nb = _read_notebook(notebook)  # as JSON: the coordinator never imports nbformat or papermill
    config = load_config(start=notebook.parent)  # a config error stops here, not in every row
    return notebook, nb, config, window


def _rows_of(rows: Any) -> tuple[str, list[dict[str, Any]]]:
    """(what the manifest calls the rows, the rows) from a params file or a list of mappings."""
    if isinstance(rows, (str, os.PathLike)):
        return str(rows), read_rows(rows)
    return "<rows>", given_rows(rows)


def _resumed(manifest: Manifest, rows: list[Row], resume: bool) -> tuple[dict[int, dict], list]:
    """(the results of the rows an earlier batch finished, by index; the rows still to run)."""
    results: dict[int, dict] = {}
    todo = []
    for row in rows:
        done = manifest.finished(row) if resume else None
        if done is not None:
            results[row.index] = {**done, "resumed": True}
        else:
            todo.append(row)
    return results, todo


def _run_rows(todo, spec: dict, done, dask, workers, brokered, log_dir: Path) -> None:
    """Run the rows on the Dask cluster at ``dask``, else on local workers (with ``brokered``:
    their model calls go through the provider batch broker)."""
    if todo and dask:
        from ._dask import run_dask

        run_dask(dask, todo, spec, done)
    elif todo:
        with brokered.running() if brokered else contextlib.nullcontext():
            run_local(todo, spec, _worker_count(workers, len(todo)), done, log_dir=log_dir)


# ---------------------------------------------------------------------------------- the CLI


def cli_batch(
    notebook: str,
    params: str,
    *,
    workers: int | None = None,
    dask: str | None = None,
    out: str = "batch-out",
    resume: bool = False,
    engine: str | None = None,
    store: str | None = None,
    provider_batch: bool = False,
    batch_window: float | None = None,
    dry_run: bool = False,
) -> int:
    """``nbconductor batch``; returns 0 when every row finished, 1 when one failed, 2 for bad input."""
    result = batch(
        notebook,
        params,
        workers=workers,
        dask=dask,
        out=out,
        resume=resume,
        engine=engine,
        store=store,
        provider_batch=provider_batch,
        batch_window=batch_window,
        dry_run=dry_run,
    )
    if dry_run:
        return 0
    print(result.summary())
    return 1 if result.failed else 0


def _worker_count(requested: int | None, rows: int) -> int:
    n = requested if requested else (os.cpu_count() or 2)
    if n < 1:
        raise OptionError(f"--workers must be 1 or more, got {n}")
    return max(1, min(n, rows or 1))


def _store_path(arg: str | None, notebook: Path) -> Path | str:
    """The batch's store: a resolved path, or a ``postgresql://`` URL as given."""
    from ..store._base import default_store, resolve

    if arg:
        return resolve(arg)
    if os.environ.get("NBCONDUCTOR_STORE"):
        return resolve(os.environ["NBCONDUCTOR_STORE"])
    from .._config import load_config

    config = load_config(start=notebook.parent)
    if config.store:
        return resolve(config.store, notebook.parent)
    return resolve(default_store(notebook.parent))


def _read_notebook(path: Path) -> dict:
    if not path.is_file():
        raise OptionError(f"notebook {str(path)!r} not found")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        nb["cells"]  # a KeyError here: not a notebook
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{path.name} is not a readable notebook: {exc}") from None
    return nb


def _check_known(nb: dict, rows: list[dict], params_file: str) -> None:
    """Raise `ParameterError` for a row name that the notebook's parameters cell does not set."""
    from ._runner import notebook_parameters

    known = notebook_parameters(nb)
    if known is None:
        print(
            "nbconductor: the notebook has no cell tagged `parameters`; papermill puts row values "
            "at the top",
            file=sys.stderr,
        )
        return
    names = list(dict.fromkeys(k for r in rows for k in r))
    check_known(names, known, f"--params {Path(params_file).name}")


def summary(results: list[dict], out_dir: Path, seconds: float, store: str) -> str:
    """The table printed at the end: row, status, flagged, cost, time, notebook or error."""
    rows = []
    for r in results:
        status = r["status"] + (" (earlier)" if r.get("resumed") else "")
        where = r["error"] if r["status"] == FAILED else _relative(r["output"], out_dir)
        if r.get("images") and r["status"] != FAILED:
            where += " + " + ", ".join(Path(i).name for i in r["images"])
        rows.append(
            [
                str(r["index"]),
                status,
                str(r.get("flagged") or 0),
                fmt_cost(r.get("cost")),
                f"{r.get('seconds') or 0:.1f}s",
                preview(redact(_params_text(r.get("params") or {})), 32),
                preview(where or "", 80 + 40 * len(r.get("images") or [])),
            ]
        )
    table = text_table(
        ["row", "status", "flagged", "cost", "time", "params", "notebook (+ images) / error"], rows
    )
    counts = {s: sum(1 for r in results if r["status"] == s) for s in (PASSED, FLAGGED, FAILED)}
    costs = [r.get("cost") for r in results if not r.get("resumed")]
    total = None if any(c is None for c in costs) else sum(costs)
    lines = [
        table,
        "",
        f"{plural(len(results), 'row')}: {counts['passed']} passed, {counts['flagged']} flagged, {counts['failed']} failed"
        f" · {fmt_cost(total)} · {seconds:.1f}s · notebooks in {out_dir}",
    ]
    if counts["flagged"]:
        lines.append(f"flagged outputs wait for review: nbconductor review --store {shown(store)}")
    if counts["failed"]:
        lines.append("re-run the failed rows only: add --resume")
    return "\n".join(lines)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path
