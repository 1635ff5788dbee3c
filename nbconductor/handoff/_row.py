"""One batch row: a papermill run of the notebook with the row's parameters, and its outcome.

The unit of work that both batch engines run: local worker processes (`nbconductor.handoff._workers`)
and Dask tasks (`nbconductor.handoff._dask`). `execute_row` never raises; the row's status (passed,
flagged, failed) is read back from the run store the row wrote to.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._redact import redact
from .._states import FAILED, FLAGGED, PASSED
from ._runner import environ, failure_message, redact_file

_ROW_LOCK = threading.Lock()  # a row sets process-wide environment variables


@dataclass
class Row:
    index: int
    params: dict[str, Any]
    output: str  # absolute path of the row's output notebook

    @property
    def key(self) -> str:
        return params_key(self.params)


@dataclass
class RowResult:
    index: int
    status: str  # passed | flagged | failed
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    run_ids: list[str] = field(default_factory=list)
    flagged: int = 0
    cost: float | None = None
    worker: str = ""
    key: str = ""
    resumed: bool = False
    attempts: int = 1


def params_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def execute_row(
    notebook: str,
    output: str,
    params: dict[str, Any],
    engine: str | None,
    store: str,
    label: str,
    index: int = 0,
) -> dict[str, Any]:
    """Run one row with papermill; never raises. Returns a `RowResult` as a dict."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ._engine_outputs import redacting_every_write
    from ._translator import install_translator

    install_translator()  # a row's names reach papermill's source only through the checked translator
    started = time.time()
    status, error, attempts = PASSED, None, 0
    # JPY_SESSION_NAME becomes runs.notebook: how this row's runs are found afterwards.
    with (
        _ROW_LOCK,
        environ({"NBCONDUCTOR_STORE": store, "JPY_SESSION_NAME": label}),
        redacting_every_write(),
    ):
        while True:
            attempts += 1
            try:
                pm.execute_notebook(
                    notebook,
                    output,
                    parameters=params,
                    engine_name=engine,
                    cwd=str(Path(notebook).resolve().parent),
                    progress_bar=False,
                    request_save_on_cell_execute=engine != "nbconductor",
                )
                status, error = PASSED, None
            except PapermillExecutionError as exc:
                status, error = FAILED, failure_message(exc, output)
            except Exception as exc:  # noqa: BLE001 - a row's failure is reported, not raised
                status, error = FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0]
                if attempts < 3 and _kernel_start_failed(exc):
                    time.sleep(0.2 * attempts)
                    continue  # a port race between kernels starting at once: try again
            break
    redact_file(output)
    run_ids, flagged, cost, run_failed = _row_runs(store, label, started)
    if status == PASSED and flagged:
        status = FLAGGED
    if status == PASSED and run_failed and not error:
        status, error = FAILED, "a run did not finish"
    return asdict(
        RowResult(
            index=index,
            status=status,
            output=output,
            params=params,
            error=redact(error) if error else None,
            seconds=round(time.time() - started, 3),
            run_ids=run_ids,
            flagged=flagged,
            cost=cost,
            worker=f"{host()}:{os.getpid()}",
            key=params_key(params),
            attempts=attempts,
        )
    )


def _kernel_start_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(
        s in text
        for s in (
            "address already in use",
            "zmqerror",
            "kernel died before replying",
            "kernel didn't respond",
            "timeout waiting for kernel",
        )
    )


def _row_runs(store: str, label: str, since: float) -> tuple[list[str], int, float | None, bool]:
    """(run ids, flagged step results, total cost or None, whether a run did not finish)."""
    from .._errors import StoreError
    from ..store._base import connect, is_url

    if not is_url(store) and not Path(store).is_file():
        return [], 0, None, False
    try:
        db = connect(store, readonly=True)
    except StoreError:
        return [], 0, None, False
    try:
        return db.row_runs(label, since)
    finally:
        db.close()


def host() -> str:
    import socket

    return socket.gethostname()
