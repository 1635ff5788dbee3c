"""The store interface: what the rest of nbconductor asks of a run store, and which one to open.

`Store` is the protocol; `SQLiteStore` (``_sqlite``, the embedded default) and `PostgresStore`
(``_postgres``, a ``postgresql://`` URL, the ``postgres`` extra) implement it. `connect(target)`
opens the right one for a path or URL. The state names a result row takes live here once.

Outside ``store/`` nobody writes SQL: the review queue, ``history()``, the report, batch rows
and Dask merges all go through these methods.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

# the states a results row takes, named once in the core (re-exported for the store's modules)
from .._states import (  # noqa: F401 - re-exported
    ACCEPTED,
    APPROVED,
    COUNTED,
    EDITED,
    FAILED,
    FLAGGED,
    PASSED,
    PENDING,
    REJECTED,
    SERVED,
    SKIPPED,
    UNFINISHED,
    WAS_FLAGGED,
)
from .._types import StepResult

URL_SCHEMES = ("postgresql", "postgres")


@runtime_checkable
class Store(Protocol):
    """A run store: runs, step results, review decisions and claims."""

    path: str  # where it is, as shown to people (a URL without its password)
    readonly: bool
    user: str

    def start_run(self, params: dict, targets: list[str] | None, notebook: str | None) -> str: ...
    def end_run(
        self, run_id: str, status: str, cost: float | None, error: str | None = None
    ) -> None: ...
    def record(
        self,
        run_id: str,
        result: StepResult,
        notebook: str | None = None,
        params: dict | None = None,
        item: int | None = None,
    ) -> int: ...
    def lookup(self, cache_key: str) -> StepResult | None: ...
    def result(self, result_id: int) -> StepResult | None: ...
    def results(self, run_id: str | None = None, step: str | None = None) -> list: ...
    def runs(self, limit: int = 50) -> list: ...
    def row(self, result_id: int) -> Any: ...
    def output(self, row: Any) -> Any: ...
    def row_runs(
        self, notebook: str, since: float
    ) -> tuple[list[str], int, float | None, bool]: ...
    def dump(self) -> dict[str, list[dict]]: ...
    def merge(self, rows: dict[str, list[dict]]) -> dict[str, int]: ...
    def close(self) -> None: ...


def is_url(target: str | os.PathLike | None) -> bool:
    """Whether ``target`` names a database server (``postgresql://…``) rather than a file."""
    return isinstance(target, str) and target.split("://", 1)[0].lower() in URL_SCHEMES


def shown(target: str | os.PathLike) -> str:
    """``target`` as nbconductor prints it: a URL without its password (``user@host:port/db``)."""
    text = str(target)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)
    if len(netloc) == 2:
        user = netloc[0].split(":", 1)[0]
        netloc = [f"{user}@{netloc[1]}"]
    return urlunsplit((parts.scheme, netloc[0], parts.path, "", ""))


def default_store(notebook_dir: str | os.PathLike | None = None) -> str | Path:
    """``$NBCONDUCTOR_STORE`` (a path or URL), else ``.nbconductor/store.sqlite`` beside the notebook."""
    env = os.environ.get("NBCONDUCTOR_STORE")
    if env:
        return env if is_url(env) else Path(env)
    return Path(notebook_dir or os.getcwd()) / ".nbconductor" / "store.sqlite"


def resolve(target: str | os.PathLike, root: str | os.PathLike | None = None) -> str | Path:
    """A store target as given (a URL), or a path resolved against ``root``."""
    if is_url(str(target)):
        return str(target)
    return (Path(root) / target).resolve() if root else Path(target).resolve()


def connect(target: str | os.PathLike = ":memory:", *, readonly: bool = False) -> Store:
    """Open the store at ``target``: a ``postgresql://`` URL, else an SQLite file (or ``:memory:``).

    Raises `StoreError` for something that is not a run store, `MissingDependency` for a URL
    without the ``postgres`` extra.
    """
    if is_url(str(target)):
        from ._postgres import PostgresStore

        return PostgresStore(str(target), readonly=readonly)
    from ._sqlite import SQLiteStore

    return SQLiteStore(target, readonly=readonly)


def exists(target: str | os.PathLike) -> bool:
    """Whether there is a store at ``target`` to read (a server URL is assumed to be one)."""
    return is_url(str(target)) or Path(target).exists()
