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
import hashlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from .._errors import StoreError
from .._redact import redact, redactor
from .._types import Attempt, GateResult, StepResult, Usage
from ._base import FLAGGED, SERVED, UNFINISHED, default_store, is_url
from ._codec import Unstored, decode_output, encode_output, loadable
from ._experiments import EXPERIMENT_SCHEMA
from ._liveness import own_start, process_gone

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
SCHEMA_VERSION = 2
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
)

#: columns added after a store's first version: (table, column, type), migrated on open
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("runs", "pid", "INTEGER"),  # the process running a run: pid, its start in ticks after boot
    ("runs", "pid_start", "INTEGER"),
    ("results", "parent_id", "INTEGER"),  # a --map item's step-level row
    ("results", "trace", "TEXT"),  # the step's span as a W3C traceparent, when the run was traced
    ("results", "trace", "TEXT"),  # the step's span as a W3C traceparent, when the run was traced
]
TABLES = ("runs", "results", "reviews", "claims", "assignments")


def _dumps_list(items: list, redactor: Callable[[str], str]) -> str:
    """Redacted JSON of a list of dataclasses (attempts, gate results); most lists are empty."""
    return redactor(json.dumps(_plain(items))) if items else "[]"


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` for JSON: the same dicts, without asdict's deep copy of every leaf."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None:
        if not is_dataclass(cls):
            return value
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return {name: _plain(getattr(value, name)) for name in names}


def default_store_path(notebook_dir: str | os.PathLike | None = None) -> str | Path:
    """``$NBCONDUCTOR_STORE`` (a path or URL), else ``.nbconductor/store.sqlite`` beside the notebook."""
    return default_store(notebook_dir)


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


_REQUIRED = {
    "runs": {"id", "started", "status", "params"},
    "results": {"run_id", "step", "state", "cache_key", "output_kind", "output"},
}
_OPEN: weakref.WeakSet = weakref.WeakSet()  # stores to checkpoint and close at exit
_WARNED: set[str] = set()  # stores already warned about (pickled outputs)


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
        tables = {
            name: {c[1] for c in db.execute(f"PRAGMA table_info({name})")}
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if name in _REQUIRED
        }
    except sqlite3.DatabaseError as exc:
        why = "not an SQLite database" if "not a database" in str(exc) else str(exc)
        raise StoreError(f"{path} is not an nbconductor run store ({why})", path) from None
    if (
        not tables
        and not readonly
        and not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    ):
        return  # an empty database: a store another process is creating right now, or a new one
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


class SQLiteStore:
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

    def close(self) -> None:
        """Checkpoint the WAL into the database file, then close the connection."""
        with self._lock:
            if self._db is None:
                return
            self.checkpoint("TRUNCATE")
            self._db.close()
            self._db = None
        _OPEN.discard(self)

    def output(self, row: sqlite3.Row) -> Any:
        """The stored output of a results row (an `Unstored` where there is no value to load)."""
        kind = row["output_kind"]
        if kind == "pickle":
            self._warn_pickled()
        return decode_output(kind, row["output"])

    def _warn_pickled(self) -> None:
        if self.path in _WARNED:
            return
        _WARNED.add(self.path)
        print(
            f"nbconductor: warning: {self.path} holds outputs pickled by an older nbconductor; they are "
            "not loaded (a store is data, never code), so those steps run again",
            file=sys.stderr,
        )

    # runs -------------------------------------------------------------------------------
    def start_run(self, params: dict, targets: list[str] | None, notebook: str | None) -> str:
        """Record a run as ``running`` by this process; first mark runs whose process is gone."""
        self.mark_interrupted()
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.execute(
            'INSERT INTO runs (id, started, status, notebook, "user", host, params, targets, pid, pid_start) '
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                time.time(),
                "running",
                notebook,
                self.user,
                socket.gethostname(),
                redact(_json(params)),
                json.dumps(targets),
                os.getpid(),
                own_start(),
            ),
        )
        return run_id

    def end_run(
        self, run_id: str, status: str, cost: float | None, error: str | None = None
    ) -> None:
        self.execute(
            "UPDATE runs SET ended=?, status=?, cost=?, error=? WHERE id=?",
            (time.time(), status, cost, redact(error) if error else None, run_id),
        )
        if time.monotonic() - self._checkpointed > 2.0:
            # the finished run reaches the database file even if the process is killed next
            # (throttled: a checkpoint syncs the file, ~10 ms; closing the store checkpoints the rest)
            self.checkpoint()

    def mark_interrupted(self) -> list[str]:
        """Mark ``interrupted`` the runs still ``running`` whose process (on this host) is gone.

        Returns their ids. A run on another host, or from a store without ``pid``, is left alone.
        """
        rows = self.query(
            "SELECT id, host, pid, pid_start FROM runs WHERE status=? AND host=? "
            "AND pid IS NOT NULL",
            ("running", socket.gethostname()),
        )
        gone = [r["id"] for r in rows if process_gone(r["host"], r["pid"], r["pid_start"])]
        for run_id in gone:
            self.execute(
                "UPDATE runs SET status='interrupted', "
                "ended=COALESCE((SELECT MAX(ended) FROM results WHERE run_id=runs.id), started), "
                "error=COALESCE(error, 'its process ended before the run finished (killed or crashed)') "
                "WHERE id=? AND status='running'",
                (run_id,),
            )
        return gone

    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))

    # results ----------------------------------------------------------------------------
    def record(
        self,
        run_id: str,
        result: StepResult,
        notebook: str | None = None,
        params: dict | None = None,
        item: int | None = None,
    ) -> int:
        """Write one step result (or one item of a --map step); returns its id."""
        r = redactor()
        kind, blob = encode_output(result.output, r)
        prompt = r(result.prompt) if result.prompt else None
        u = result.usage
        result_id = self.insert(
            """INSERT INTO results (run_id, step, state, cache_key, cached, output_kind, output, prompt,
               model, attempts, attempt_log, gates, input_tokens, output_tokens, cache_read_tokens,
               cache_write_tokens, cost, started, ended, error, items, item, notebook, "user", prompt_hash,
               output_hash, params) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                run_id,
                result.step,
                result.state,
                result.cache_key,
                int(result.cached),
                kind,
                blob,
                prompt,
                result.model,
                len(result.attempts),
                _dumps_list(result.attempts, r),
                _dumps_list(result.gates, r),
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                result.cost,
                result.started,
                result.ended,
                r(result.error) if result.error else None,
                result.items,
                item,
                notebook,
                self.user,
                digest(prompt) if prompt else None,
                digest(blob),
                r(_json(params)) if params else "{}",
            ),
        )
        if result.items is not None and item is None:
            # a --map step's row: its items (recorded before it, in this run) point at it
            self.execute(
                "UPDATE results SET parent_id=? WHERE run_id=? AND step=? AND item IS NOT NULL "
                "AND parent_id IS NULL AND id<?",
                (result_id, run_id, result.step, result_id),
            )
        return result_id

    def set_trace(self, result_id: int, traceparent: str) -> None:
        """Keep the span a result was made in (`nbconductor._trace`), for a later review event."""
        self.execute("UPDATE results SET trace=? WHERE id=?", (traceparent, result_id))

    def set_trace(self, result_id: int, traceparent: str) -> None:
        """Keep the span a result was made in (`nbconductor._trace`), for a later review event."""
        self.execute("UPDATE results SET trace=? WHERE id=?", (traceparent, result_id))

    def lookup(self, cache_key: str) -> StepResult | None:
        """The latest accepted result with this cache key, or None.

        An output the store holds no value for (``unstored``, or pickled by an older version)
        is a miss: the step runs again.
        """
        rows = self.query(
            f"SELECT * FROM results WHERE cache_key=? AND state IN ({','.join('?' * len(SERVED))}) "
            "AND cached=0 ORDER BY id DESC LIMIT 1",
            (cache_key, *SERVED),
        )
        if not rows:
            return None
        if not loadable(rows[0]["output_kind"]):
            if rows[0]["output_kind"] == "pickle":
                self._warn_pickled()
            return None
        result = row_to_result(rows[0], self)
        return None if isinstance(result.output, Unstored) else result  # e.g. pyarrow missing here

    def results(self, run_id: str | None = None, step: str | None = None) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM results WHERE item IS NULL", []
        if run_id:
            sql += " AND run_id=?"
            args.append(run_id)
        if step:
            sql += " AND step=?"
            args.append(step)
        return self.query(sql + " ORDER BY id", tuple(args))

    def result(self, result_id: int) -> StepResult | None:
        row = self.row(result_id)
        return row_to_result(row, self) if row is not None else None

    def row(self, result_id: int) -> Any:
        """The results row with this id (a mapping of its columns), or None."""
        rows = self.query("SELECT * FROM results WHERE id=?", (int(result_id),))
        return rows[0] if rows else None

    def row_runs(self, notebook: str, since: float) -> tuple[list[str], int, float | None, bool]:
        """A batch row's runs since ``since``: (run ids, flagged step results, total cost or None
        when a run's cost is unknown, whether a run did not finish)."""
        runs = self.query(
            "SELECT id, status, cost FROM runs WHERE notebook=? AND started>=? ORDER BY started",
            (notebook, since - 1),
        )
        ids = [r["id"] for r in runs]
        flagged = 0
        if ids:
            flagged = self.query(
                f"SELECT COUNT(*) AS n FROM results WHERE run_id IN ({','.join('?' * len(ids))}) "
                "AND state=? AND item IS NULL",
                (*ids, FLAGGED),
            )[0]["n"]
        costs = [r["cost"] for r in runs]
        cost = None if not runs or any(c is None for c in costs) else round(sum(costs), 6)
        return ids, flagged, cost, any(r["status"] in UNFINISHED for r in runs)

    def dump(self, tables: tuple[str, ...] = TABLES) -> dict[str, list[dict]]:
        """Every row of ``tables``, oldest first (what `merge` and `nbconductor store copy` take)."""
        from ._copy import dump

        return dump(self, tables)

    def merge(self, rows: dict[str, list[dict]], *, keep_ids: bool = False) -> dict[str, int]:
        """Write dumped rows into this store in one transaction; returns rows written per table
        (`nbconductor.store._copy.merge`)."""
        from ._copy import merge

        return merge(self, rows, keep_ids=keep_ids)

    def _columns(self, table: str) -> set[str]:
        return {c[1] for c in self._db.execute(f"PRAGMA table_info({table})")}

    def count(self, table: str) -> int:
        """How many rows ``table`` holds."""
        return self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]

    def update_output(self, result_id: int, output: Any, state: str) -> None:
        kind, blob = encode_output(output)
        self.execute(
            "UPDATE results SET output_kind=?, output=?, state=?, output_hash=? WHERE id=?",
            (kind, blob, state, digest(blob), result_id),
        )

    # reviews ----------------------------------------------------------------------------
    def record_review(
        self, result_id: int, decision: str, before: Any, after: Any, note: str = ""
    ) -> int:
        return self.insert(
            'INSERT INTO reviews (result_id, decision, "user", at, before, after, note) VALUES (?,?,?,?,?,?,?)',
            (
                result_id,
                decision,
                self.user,
                time.time(),
                redact(_json(before)),
                redact(_json(after)),
                redact(note),
            ),
        )


Store = SQLiteStore  # the name the rest of the package and older code import


def _q(column: str) -> str:
    return f'"{column}"' if column == "user" else column


def row_to_result(row: sqlite3.Row, store: SQLiteStore | None = None) -> StepResult:
    """A results row as a `StepResult` (``store`` warns once about outputs it will not load)."""
    attempts = [
        Attempt(**{**a, "usage": Usage(**a["usage"])})
        for a in json.loads(row["attempt_log"] or "[]")
    ]
    gates = [
        GateResult(**{**g, "usage": Usage(**g["usage"]) if g.get("usage") else None})
        for g in json.loads(row["gates"] or "[]")
    ]
    return StepResult(
        step=row["step"],
        state=row["state"],
        output=store.output(row)
        if store is not None
        else decode_output(row["output_kind"], row["output"]),
        prompt=row["prompt"],
        model=row["model"],
        attempts=attempts,
        gates=gates,
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            estimated=any(a.usage.estimated for a in attempts),  # a server that sent no usage
        ),
        cost=row["cost"],
        started=row["started"],
        ended=row["ended"],
        error=row["error"],
        cache_key=row["cache_key"],
        cached=bool(row["cached"]),
        items=row["items"],
        result_id=row["id"],
    )


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


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _user() -> str:
    """Who runs and decides: ``$NBCONDUCTOR_USER``, else the OS user."""
    if os.environ.get("NBCONDUCTOR_USER"):
        return os.environ["NBCONDUCTOR_USER"]
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")
