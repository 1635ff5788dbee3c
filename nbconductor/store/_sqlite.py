"""The run store: SQLite, safe for several processes writing at once (WAL, busy timeout).

It records runs, every step execution (rendered prompt, output, model used, tokens, cost,
timings, attempts, gate outcomes, who/when/which notebook, hashes) and review decisions. A
step's cache key points at its latest accepted result, which is how unchanged steps are
reused and interrupted runs resume.

A store is data, never code: outputs are encoded by `nbconductor.store._codec` (no pickle), a file
that is not an nbconductor store is refused with `StoreError`, and ``Store(path, readonly=True)``
reads a store (even on a read-only file or folder) without writing to it. A run records the
process that runs it (``host``, ``pid``); a run left ``running`` by a process that is gone is
marked ``interrupted`` by the next run on that host. Closing a store checkpoints its WAL into
the database file, so ``store.sqlite`` alone holds everything.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from .._errors import StoreError
from ._base import SERVED, default_store, is_url
from ._batches import BATCH_SCHEMA
from ._codec import Unstored, decode_output, encode_output, loadable
from ._experiments import EXPERIMENT_SCHEMA
from ._liveness import process_gone
from ._ops import StoreOps, digest, row_to_result

__all__ = [
    "SERVED",
    "SQLiteStore",
    "Store",
    "StoreError",
    "Unstored",
    "check_store",
    "decode_output",
    "default_store_path",
    "digest",
    "encode_output",
    "loadable",
    "process_gone",
    "row_to_result",
    "writable",
]

_REVIEWS = """CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, result_id INTEGER, decision TEXT,
    "user" TEXT, at REAL, before TEXT, after TEXT, note TEXT
);"""
# who has an item open (until when), and who it is assigned to: one row per result at most
_CLAIMS = """CREATE TABLE IF NOT EXISTS claims (result_id INTEGER PRIMARY KEY, "user" TEXT, until REAL);
CREATE TABLE IF NOT EXISTS assignments (result_id INTEGER PRIMARY KEY, "user" TEXT);"""
#: the schema this code writes; a store with a higher version was made by a newer nbconductor
SCHEMA_VERSION = 3  # 3: provider_batches (`_batches`)
_VERSION = "CREATE TABLE IF NOT EXISTS nbconductor_schema (version INTEGER);"
SCHEMA = (
    _REVIEWS
    + _CLAIMS
    + _VERSION
    + """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, started REAL, ended REAL, status TEXT, notebook TEXT,
    "user" TEXT, host TEXT, params TEXT, targets TEXT, cost REAL, error TEXT, pid INTEGER, pid_start INTEGER
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT, step TEXT, state TEXT, cache_key TEXT, cached INTEGER,
    output_kind TEXT, output BLOB, prompt TEXT, model TEXT,
    attempts INTEGER, attempt_log TEXT, gates TEXT,
    input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER, cache_write_tokens INTEGER,
    cost REAL, started REAL, ended REAL, error TEXT, items INTEGER, item INTEGER,
    notebook TEXT, "user" TEXT, prompt_hash TEXT, output_hash TEXT, params TEXT, parent_id INTEGER
);
CREATE INDEX IF NOT EXISTS results_key ON results(cache_key);
CREATE INDEX IF NOT EXISTS results_step ON results(step, id);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE INDEX IF NOT EXISTS reviews_result ON reviews(result_id);
"""
    + EXPERIMENT_SCHEMA
    + BATCH_SCHEMA
)

#: columns added after a store's first version: (table, column, type), migrated on open
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("runs", "pid", "INTEGER"),  # the process running a run: pid, its start in ticks after boot
    ("runs", "pid_start", "INTEGER"),
    ("results", "parent_id", "INTEGER"),  # a --map item's step-level row
    ("results", "trace", "TEXT"),  # the step's span as a W3C traceparent, when the run was traced
]


def default_store_path(notebook_dir: str | os.PathLike | None = None) -> str | Path:
    """``$NBCONDUCTOR_STORE`` (a path or URL), else ``.nbconductor/store.sqlite`` beside the notebook."""
    return default_store(notebook_dir)


_REQUIRED = {
    "runs": {"id", "started", "status", "params"},
    "results": {"run_id", "step", "state", "cache_key", "output_kind", "output"},
}
_OPEN: weakref.WeakSet = weakref.WeakSet()  # stores to checkpoint and close at exit


def check_store(path: str | os.PathLike) -> None:
    """Raise `StoreError` when ``path`` exists and is not an nbconductor store.

    A missing or empty file is fine (a new store is created there). Only reads. A server URL
    is checked when it is opened.
    """
    if is_url(str(path)):
        return
    if _existing_file(path):
        db = _connect_readonly(str(path))
        try:
            _check_tables(db, str(path), readonly=False)
        finally:
            db.close()


def _existing_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a non-empty file (the database to check); raises `StoreError` for a folder.

    Never opens the file outside SQLite: closing any descriptor of a database file drops the
    locks this process's own connections hold on it (POSIX), and another process could then
    delete a WAL still in use.
    """
    where = Path(path)
    if str(path) == ":memory:" or not where.exists():
        return False
    if where.is_dir():
        raise StoreError(f"{where} is a folder, not a run store: pass the .sqlite file", str(where))
    return where.stat().st_size > 0


def writable(path: str | os.PathLike) -> bool:
    """Whether this process may write the store at ``path`` (and create its WAL beside it)."""
    where = Path(path)
    wal = where.with_name(where.name + "-wal")
    if where.exists() and not os.access(where, os.W_OK):
        return False
    return wal.exists() or os.access(where.parent, os.W_OK)


def _read_only(path: str) -> StoreError:
    return StoreError(
        f"{path} is read-only: `nbconductor report` and `nbconductor review` (listing) can read "
        "it; running or deciding needs a store you can write (--store PATH)",
        path,
    )


def _check_writable(path: str, existing: bool) -> None:
    if not writable(path):
        raise _read_only(path)


def _check_tables(db: sqlite3.Connection, path: str, readonly: bool = True) -> None:
    try:
        # One read of the catalog: another process may commit the whole schema between two.
        objects = db.execute("SELECT type, name FROM sqlite_master").fetchall()
        if not objects and not readonly:
            return  # an empty database: a store another process is creating right now, or a new one
        tables = {
            name: {c[1] for c in db.execute(f"PRAGMA table_info({name})")}
            for kind, name in objects
            if kind == "table" and name in _REQUIRED
        }
    except sqlite3.DatabaseError as exc:
        why = "not an SQLite database" if "not a database" in str(exc) else str(exc)
        raise StoreError(f"{path} is not an nbconductor run store ({why})", path) from None
    missing = [t for t, cols in _REQUIRED.items() if not cols <= tables.get(t, set())]
    if missing:
        raise StoreError(
            f"{path} is an SQLite database but not an nbconductor run store (no "
            f"{' or '.join(missing)} table of its form): pass the store file, or a new path",
            path,
        )


def _connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection; ``immutable`` where SQLite cannot even create the WAL index
    (a read-only folder, or a read-only file nobody else can be writing)."""
    uri = Path(path).resolve().as_uri()
    db = sqlite3.connect(
        f"{uri}?mode=ro", uri=True, timeout=60, check_same_thread=False, isolation_level=None
    )
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as exc:
        db.close()
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise StoreError(f"{path} cannot be read as a run store: {exc}", path) from None
    except sqlite3.DatabaseError:
        db.close()
        raise StoreError(
            f"{path} is not an nbconductor run store (not an SQLite database)", path
        ) from None
    return sqlite3.connect(
        f"{uri}?mode=ro&immutable=1",
        uri=True,
        timeout=60,
        check_same_thread=False,
        isolation_level=None,
    )


class SQLiteStore(StoreOps):
    """A connection to one run store file. Thread-safe; several processes may share the file.

    ``readonly=True`` opens an existing store for reading only (``report``, the review queue):
    nothing is created, migrated or written. Raises `StoreError` for a file that is not a store.
    """

    def __init__(self, path: str | os.PathLike = ":memory:", *, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        memory = self.path == ":memory:"
        existing = _existing_file(self.path)
        self._lock = threading.RLock()
        if readonly and not memory:
            if not existing:
                raise StoreError(f"no run store at {self.path}", self.path)
            self._db = _connect_readonly(self.path)
            self._checked(existing)
            have = {n for (n,) in self._db.execute("SELECT name FROM sqlite_master")}
            for name, ddl in (
                ("reviews", _REVIEWS),
                *zip(("claims", "assignments"), _CLAIMS.split("\n"), strict=True),
            ):
                if name not in have:
                    # an older store without them: an empty stand-in, in this connection's temp schema
                    self._db.execute(
                        ddl.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE", 1)
                    )
            self._check_version()
        else:
            if not memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                _check_writable(self.path, existing)
            self._db = sqlite3.connect(
                self.path, timeout=60, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._checked(existing)  # before anything is written into someone else's database
            try:
                if not memory:
                    self._retry(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
                    self._db.execute("PRAGMA synchronous = NORMAL")
                self._retry(self._create_schema)
                self._migrate()
            except sqlite3.DatabaseError as exc:
                self._db.close()
                raise StoreError(
                    f"{self.path} cannot be opened as a run store: {exc}", self.path
                ) from None
        self._db.execute("PRAGMA busy_timeout = 60000")
        self.user = _user()
        self._pid = os.getpid()
        self._checkpointed = float("-inf")
        if not memory and not readonly:
            _OPEN.add(self)

    def _checked(self, existing: bool) -> None:
        if not existing:
            return
        try:
            _check_tables(self._db, self.path, self.readonly)
        except StoreError:
            self._db.close()
            raise

    def _create_schema(self) -> None:
        # In one transaction: a process opening the store meanwhile sees all the tables or none.
        try:
            self._db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        """Add the columns newer versions record to a store an older version created."""
        self._check_version()
        for table, column, kind in ADDED_COLUMNS:
            have = {c[1] for c in self._db.execute(f"PRAGMA table_info({table})")}
            if column in have:
                continue
            try:
                self._retry(
                    lambda t=table, c=column, k=kind: self._db.execute(
                        f"ALTER TABLE {t} ADD COLUMN {c} {k}"
                    )
                )
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process migrated it meanwhile
                    raise
        self._set_version()

    def _check_version(self) -> None:
        """Refuse a store whose schema is newer than this code knows."""
        rows = (
            self.query("SELECT MAX(version) AS v FROM nbconductor_schema")
            if self._has_version()
            else []
        )
        found = rows[0]["v"] if rows else None
        if found is not None and found > SCHEMA_VERSION:
            self.close()
            raise StoreError(
                f"{self.path} has schema version {found}, newer than this nbconductor knows "
                f"({SCHEMA_VERSION}): upgrade nbconductor (pip install -U nbconductor)",
                self.path,
            )

    def _has_version(self) -> bool:
        return bool(self.query("SELECT name FROM sqlite_master WHERE name='nbconductor_schema'"))

    def _set_version(self) -> None:
        with self.transaction():
            if not self.query("SELECT version FROM nbconductor_schema"):
                self.execute(
                    "INSERT INTO nbconductor_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            else:
                self.execute(
                    "UPDATE nbconductor_schema SET version=? WHERE version<?",
                    (SCHEMA_VERSION, SCHEMA_VERSION),
                )

    def _retry(self, fn, tries: int = 50):
        # Concurrent first-time schema creation can still see "database is locked".
        for i in range(tries):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or i == tries - 1:
                    raise
                time.sleep(0.05 * (i + 1))

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        if self.readonly:
            raise _read_only(self.path)
        with self._lock:
            return self._retry(lambda: self._db.execute(sql, args))

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._retry(lambda: self._db.execute(sql, args).fetchall())
            finally:
                self._db.row_factory = None

    def insert(self, sql: str, args: tuple = ()) -> int:
        """Run one INSERT; returns the new row's id."""
        return self.execute(sql, args).lastrowid

    @contextlib.contextmanager
    def transaction(self):
        """Statements inside are one transaction (nested uses join the outer one)."""
        if self.readonly:
            raise _read_only(self.path)
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy the WAL's pages into the database file (``TRUNCATE`` also empties the WAL)."""
        if self.readonly or self.path == ":memory:" or self._db is None:
            return
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._checkpointed = time.monotonic()
            self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _columns(self, table: str) -> set[str]:
        return {c[1] for c in self._db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        """Checkpoint the WAL into the database file, then close the connection."""
        with self._lock:
            if self._db is None:
                return
            self.checkpoint("TRUNCATE")
            self._db.close()
            self._db = None
        _OPEN.discard(self)


Store = SQLiteStore  # the name the rest of the package and older code import


@atexit.register
def _close_open_stores() -> None:
    # A kernel exits without closing its store: checkpoint the WAL into the file on the way out.
    for store in list(_OPEN):
        if store._pid == os.getpid() and store._lock.acquire(timeout=2):
            try:
                store.close()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
            finally:
                store._lock.release()


def _user() -> str:
    """Who runs and decides: ``$NBCONDUCTOR_USER``, else the OS user."""
    if os.environ.get("NBCONDUCTOR_USER"):
        return os.environ["NBCONDUCTOR_USER"]
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")
