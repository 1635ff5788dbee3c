"""``nbconductor batch --dask ADDRESS``: rows as tasks on an existing Dask cluster.

Each row is one task (``client.submit``, a distinct key per row). A task runs the row on the
worker — in-process engine for exported jobs — and returns its output notebook, which the
coordinator writes into the output folder (workers need no shared filesystem).

Where the results go depends on the batch's store. With a ``postgresql://`` store the worker
writes them to the database itself (``store_url``: the URL without its password — a task's
arguments may be logged by the scheduler — so the worker's libpq reads ``PGPASSWORD`` or
``~/.pgpass`` from the worker's own environment), and the row's steps are served from the
database's cache like any run's. A worker that cannot open the database (no password there, no
route, no psycopg), and a row whose parameters hold one of the coordinator's secrets (which only
the coordinator can redact), fall back to the SQLite path: the task runs against a private
temporary store and returns its rows, and the coordinator redacts them with its own secrets and
merges them into the batch's store, its one writer. Workers need nbconductor installed, and the
provider keys in their own environment (keys are never sent with tasks). A task that fails or
whose worker dies marks its row failed; the other rows go on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import _trace
from .._env import offline_forced
from .._redact import redactor
from .._states import FAILED
from ._row import Row, RowResult, execute_row

TABLES = ("runs", "results")


def run_row_task(
    notebook_text: str,
    notebook_name: str,
    params: dict[str, Any],
    engine: str | None,
    label: str,
    index: int,
    offline: bool = False,
    trace_env: dict[str, str] | None = None,
    store_url: str | None = None,
) -> dict[str, Any]:
    """The Dask task: run one row in a temporary folder; returns its result and notebook, and
    the store rows it wrote unless it wrote them to the database at ``store_url`` itself."""
    from ._runner import environ

    # `--offline` travels with the task (the worker's environment is its own); keys never do.
    with (
        environ({**(trace_env or {}), **({"NBCONDUCTOR_OFFLINE": "1"} if offline else {})}),
        tempfile.TemporaryDirectory(prefix="nbconductor-row-") as tmp,
    ):
        folder = Path(tmp)
        nb_path = folder / notebook_name
        nb_path.write_text(notebook_text, encoding="utf-8")
        out = folder / "out.ipynb"
        held, why = _open_direct(store_url) if store_url else (None, None)
        try:
            store = store_url if held is not None else str(folder / "store.sqlite")
            result = execute_row(str(nb_path), str(out), params, engine, store, label, index)
        finally:
            if held is not None:
                held.close()
        result["notebook_text"] = out.read_text(encoding="utf-8") if out.is_file() else None
        result["store_rows"] = None if held is not None else dump_store(Path(store))
        result["direct_error"] = why
    return result


def _open_direct(url: str):
    """(the database store at ``url``, None), or (None, why this worker cannot write to it).

    The store stays open while the row runs: the row's own opens share its connection pool."""
    from ..store._base import connect

    try:
        return connect(url), None
    except Exception as exc:  # noqa: BLE001 - any reason: the row's rows come back instead
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def dump_store(path: Path) -> dict[str, list[dict]]:
    """Every row of the runs and results tables of a store file."""
    from ..store._base import connect

    if not path.is_file():
        return {t: [] for t in TABLES}
    store = connect(path, readonly=True)
    try:
        return store.dump(TABLES)
    finally:
        store.close()


def merge_store(rows: dict[str, list[dict]], store_path: str) -> None:
    """Write a task's runs and results into the batch's store (results get new ids)."""
    from ..store._base import connect

    store = connect(store_path)
    try:
        store.merge(rows)
    finally:
        store.close()


def run_dask(
    address: str, rows: list[Row], job: dict[str, Any], on_done: Callable[[dict], None]
) -> None:
    """Submit every row to the cluster at ``address``; calls ``on_done(result)`` as each row ends."""
    from .._errors import OptionError, missing_dependency

    missing_dependency("distributed", "dask", "--dask")
    from distributed import Client, as_completed

    notebook = Path(job["notebook"])
    text = notebook.read_text(encoding="utf-8")
    try:
        _probe(address)
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise OptionError(
            f"--dask {address}: cannot reach the Dask scheduler ({exc}); "
            "start one with `dask scheduler` and pass its tcp://host:port"
        ) from None
    batch = f"nbconductor-{int(time.time())}-{os.getpid()}"
    direct = _direct_url(job["store"])
    told = False
    try:
        futures = {}
        for row in rows:
            future = client.submit(
                run_row_task,
                text,
                notebook.name,
                row.params,
                job["engine"],
                row.output,
                row.index,
                offline_forced(),
                _trace.carried_env(),  # the worker exports to the same collector (no headers)
                direct if direct and not _holds_secret(row.params) else None,
                key=f"{batch}-row-{row.index}",
                pure=False,
                retries=0,
            )
            futures[future] = row
        for future in as_completed(futures):
            row = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost task fails its row, not the batch
                result = asdict(
                    RowResult(
                        index=row.index,
                        status=FAILED,
                        output=row.output,
                        params=row.params,
                        error=f"the Dask task failed: {type(exc).__name__}: {exc}".splitlines()[0],
                        key=row.key,
                    )
                )
            else:
                why = result.pop("direct_error", None)
                if why and not told:
                    told = True
                    print(_fallback_note(result, why), file=sys.stderr)
                _land(result, row, job["store"])
            on_done(result)
    finally:
        client.close()


def _direct_url(store: str) -> str | None:
    """The URL workers write a ``postgresql://`` store through (no password), else None."""
    from ..store._base import is_url

    if not is_url(store):
        return None
    from ..store._postgres import without_password

    return without_password(store)


def _holds_secret(params: dict[str, Any]) -> bool:
    """Whether a row's parameters hold a secret of this process (then only it can redact them)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return redactor()(text) != text


def _fallback_note(result: dict, why: str) -> str:
    worker = str(result.get("worker", "")).rsplit(":", 1)[0] or "a worker"
    return redactor()(
        f"nbconductor: Dask worker {worker} cannot write to the store directly ({why}); "
        "its rows come back to this process (give workers PGPASSWORD or ~/.pgpass)"
    )


_TEXT_KINDS = ("text", "json", "pydantic", "unstored", "pickle")


def _redact_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A task's store rows redacted with the coordinator's secrets (a worker knows only its own)."""
    from ..store._sqlite import digest

    clean = redactor()
    for table in rows.values():
        for record in table:
            for column, value in record.items():
                if isinstance(value, str):
                    record[column] = clean(value)
            blob = record.get("output")
            if isinstance(blob, bytes) and record.get("output_kind") in _TEXT_KINDS:
                redacted = clean(blob.decode(errors="replace")).encode()
                if redacted != blob:
                    record["output"], record["output_hash"] = redacted, digest(redacted)
            if record.get("prompt") and record.get("prompt_hash"):
                record["prompt_hash"] = digest(record["prompt"])
    return rows


def _probe(address: str) -> None:
    """Fail fast (OSError) when nothing listens at a tcp:// address, instead of retrying for long."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        socket.create_connection((parts.hostname, parts.port), timeout=10).close()


def _land(result: dict, row: Row, store: str) -> None:
    """Write what a task brought back: the output notebook and the store rows."""
    text = result.pop("notebook_text", None)
    rows = _redact_rows(result.pop("store_rows", None) or {})
    result["output"] = row.output
    if text is not None:  # the worker redacted with its own environment; this is the coordinator's
        text = redactor().json_text(text)
    if result.get("error"):
        result["error"] = redactor()(result["error"])
    if text is not None:
        Path(row.output).parent.mkdir(parents=True, exist_ok=True)
        Path(row.output).write_text(text, encoding="utf-8")
    if rows.get("runs") or rows.get("results"):
        merge_store(rows, store)
