"""The run store on PostgreSQL: ``postgresql://user@host:port/db`` (the ``postgres`` extra).

The same tables, statements and results as the SQLite store: `PostgresStore` inherits every
operation and replaces only the connection layer — a psycopg 3 connection pool per process and
URL, ``?`` placeholders written as ``%s``, ids from ``RETURNING id``, a transaction holding one
pooled connection for its thread. The schema is created and migrated under an advisory lock (so
several processes opening a new database at once create it once), with a version table.

The password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads them); the URL
nbconductor shows (``store.path``) has none, and a server that cannot be reached is a one-line
`StoreError` naming the host.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._errors import StoreError, missing_dependency
from .._redact import redact
from ._base import shown
from ._sqlite import ADDED_COLUMNS, SCHEMA, SCHEMA_VERSION, SQLiteStore, _read_only, _user

_POOLS: dict[tuple[int, str], list] = {}  # (pid, url) -> [pool, users]
_POOLS_LOCK = threading.Lock()
_LOCK_KEY = 7_351_082  # pg_advisory_xact_lock key: schema creation and migration
_SQL: dict[str, str] = {}
_WAIT = float(os.environ.get("NBCONDUCTOR_PG_WAIT", "10"))  # seconds to wait for a connection
_QUIET = logging.NullHandler()
_KEEP_IDLE = 2  # pools kept open per process with no store using them (their URLs most recent)
_IDLE_CHECK = 5.0  # seconds idle after which the kept connection is checked before use


def pg_schema() -> str:
    """`_sqlite.SCHEMA` in PostgreSQL's types (one DDL for both backends).

    The cache-key index also holds ``id``: the lookup wants the latest row of a key, which
    SQLite's index gives (its rowid) and a PostgreSQL index on the key alone does not (a key
    re-run a thousand times would be a thousand rows sorted per lookup)."""
    return (
        SCHEMA.replace(
            "results_key ON results(cache_key)", "results_key_id ON results(cache_key, id)"
        )
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
        .replace("REAL", "DOUBLE PRECISION")
    )


def _expected() -> tuple[list[str], list[str]]:
    """(the tables, the indexes) `pg_schema` creates."""
    ddl = pg_schema()
    return (
        re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl),
        re.findall(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\w+)", ddl),
    )


def _pg_type(kind: str) -> str:
    return {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}.get(kind, kind)


def _sql(sql: str) -> str:
    out = _SQL.get(sql)
    if out is None:
        out = _SQL[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


class _Cursor:
    """What `execute` returns: the affected row count (like sqlite3's cursor)."""

    def __init__(self, rowcount: int):
        self.rowcount = rowcount


class PostgresStore(SQLiteStore):
    """A run store in a PostgreSQL database. Thread-safe; any number of processes and hosts."""

    def __init__(self, url: str, *, readonly: bool = False):
        missing_dependency("psycopg", "postgres", "a postgresql:// store")
        missing_dependency("psycopg_pool", "postgres", "a postgresql:// store")
        self._url = url
        self.path = shown(url)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._local = threading.local()
        self._pid = os.getpid()
        self._checkpointed = float("inf")
        self._db = None
        self.user = _user()
        self._own = None  # the connection this store keeps (statements outside a transaction)
        self._own_lock = threading.Lock()
        self._own_used = 0.0
        self._own_pooled = False
        self._pool = _acquire_pool(url, self.path)
        try:
            if readonly:
                if not self._has_table("runs"):
                    raise StoreError(f"no run store at {self.path} (no runs table)", self.path)
                self._check_version()
            else:
                self._create_schema()
        except BaseException:
            self.close()
            raise

    # the connection layer ---------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self):
        """A connection for one statement or transaction: the thread's open transaction's, else
        the store's own (kept, so a step's statements pay no pool hand-over), else, while another
        thread uses that, one from the pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            if os.getpid() == self._pid and self._own_lock.acquire(blocking=False):
                try:
                    if self._own is not None and (self._own.broken or not self._alive_after_idle()):
                        self._drop_own()
                    if self._own is None:
                        self._own = self._take_own()
                    self._own_used = time.monotonic()
                    try:
                        yield self._own
                    except psycopg.OperationalError as exc:
                        if _lost(exc) or self._own.broken:
                            self._drop_own()  # the server went away: reconnect next time
                        raise
                finally:
                    self._own_lock.release()
                return
            with self._pool.connection(timeout=_WAIT) as conn:
                yield conn
        except PoolTimeout as exc:
            raise _unreachable(self.path, exc) from None
        except psycopg.OperationalError as exc:
            if _lost(exc):
                raise _unreachable(self.path, exc) from None
            # the server answered (a deadlock, a lock or statement timeout): one line, as it is
            raise StoreError(
                redact(f"the run store at {self.path}: {_first_line(exc)}"), self.path
            ) from None

    def _alive_after_idle(self) -> bool:
        """Whether the kept connection still works, checked (one empty query) only when it has
        been idle a while: a server restarted meanwhile then costs no failed step."""
        if time.monotonic() - self._own_used < _IDLE_CHECK:
            return True
        from psycopg_pool import ConnectionPool

        try:
            ConnectionPool.check_connection(self._own)
            return True
        except Exception:  # noqa: BLE001 - any failure: take a fresh connection
            return False

    def _take_own(self):
        """An idle pooled connection if there is one now, else a new one made directly: the
        pool, refilling itself in the background, backs off while a server is away and would
        keep a step waiting after the server is back."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            conn = self._pool.getconn(timeout=0.05)
            self._own_pooled = True
        except PoolTimeout:
            conn = psycopg.connect(self._url, **_kwargs())
            self._own_pooled = False
        return conn

    def _drop_own(self) -> None:
        own, self._own = self._own, None
        if own is None:
            return
        with contextlib.suppress(Exception):
            if self._own_pooled and self._pool is not None:
                self._pool.putconn(own)  # the pool discards a broken connection
            else:
                own.close()

    def execute(self, sql: str, args: tuple = ()) -> _Cursor:
        if self.readonly:
            raise _read_only(self.path)
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(_sql(sql), args)
            return _Cursor(cur.rowcount)

    def query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(_sql(sql), args)
            return cur.fetchall()

    def insert(self, sql: str, args: tuple = ()) -> int:
        if self.readonly:
            raise _read_only(self.path)
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(_sql(sql) + " RETURNING id", args)
            return cur.fetchone()["id"]

    @contextlib.contextmanager
    def transaction(self):
        """Statements inside run on one pooled connection, as one transaction."""
        if self.readonly:
            raise _read_only(self.path)
        if getattr(self._local, "conn", None) is not None:
            yield  # nested: part of the outer transaction
            return
        with self._conn() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield
            finally:
                self._local.conn = None

    def _insert_map_row(self, sql: str, args: tuple, run_id: str, step: str) -> int:
        """The --map step's row and its items' ``parent_id`` in one statement (one round trip):
        the UPDATE reads the snapshot from before the INSERT, so it only sees the items."""
        if self.readonly:
            raise _read_only(self.path)
        cte = (
            f"WITH new AS ({_sql(sql)} RETURNING id), items AS (UPDATE results SET parent_id="
            "(SELECT id FROM new) WHERE run_id=%s AND step=%s AND item IS NOT NULL "
            "AND parent_id IS NULL) SELECT id FROM new"
        )
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(cte, (*args, run_id, step))
            return cur.fetchone()["id"]

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Nothing to do: the server makes commits durable."""

    def close(self) -> None:
        """Give the connection and the pool back (the pool stays open a while for the next store
        of this URL in this process: `_release_pool`)."""
        with self._lock:
            if self._pool is None:
                return
            if os.getpid() == self._pid and self._own_lock.acquire(timeout=5):
                try:
                    self._drop_own()
                finally:
                    self._own_lock.release()
            _release_pool(self._url)
            self._pool = None

    # schema ---------------------------------------------------------------------------------
    def _create_schema(self) -> None:
        """Create or migrate the schema, unless the database already has all of it.

        The check reads the catalog only: the DDL (even ``IF NOT EXISTS``, even ``ADD COLUMN IF
        NOT EXISTS``) locks the tables, and a store opened for every batch row would otherwise
        queue behind, and deadlock with, reviewers deciding in those tables."""
        if self._schema_ready():
            return
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            if self._has_table("runs") and not self._has_table("nbconductor_schema"):
                self._check_tables()
            self._check_version()
            with self._conn() as conn:
                conn.execute(pg_schema())
                conn.execute("DROP INDEX IF EXISTS results_key")  # replaced by results_key_id
            for table, column, kind in ADDED_COLUMNS:
                self.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {_pg_type(kind)}"
                )
            self._set_version()

    def _schema_ready(self) -> bool:
        """Whether every table, index and added column this code writes exists, at its version."""
        rows = self.query(
            "SELECT c.relname AS name, a.attname AS col FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped AND c.relkind = 'r' "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')"
        )
        have: dict[str, set] = {}
        for r in rows:
            have.setdefault(r["name"], set()).add(r["col"])
        tables, indexes = _expected()
        if not all(name in have for name in tables + indexes) or "results_key" in have:
            return False
        if not all(column in have[table] for table, column, _ in ADDED_COLUMNS):
            return False
        found = self.query("SELECT MAX(version) AS v FROM nbconductor_schema")[0]["v"]
        return found == SCHEMA_VERSION

    def _check_tables(self) -> None:
        need = {"id", "started", "status", "params"}
        if not need <= self._columns("runs"):
            raise StoreError(
                f"{self.path} has a runs table that is not an nbconductor run store's: "
                "use another database",
                self.path,
            )

    def _migrate(self) -> None:  # done in _create_schema, under the advisory lock
        pass

    def _has_version(self) -> bool:
        return self._has_table("nbconductor_schema")

    def _has_table(self, name: str) -> bool:
        return bool(self.query("SELECT to_regclass(?) IS NOT NULL AS ok", (name,))[0]["ok"])

    def _columns(self, table: str) -> set[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {r["column_name"] for r in rows}

    def after_copy(self) -> None:
        """Move the id sequences past the highest copied ids (a copy keeps ids)."""
        for table in ("results", "reviews"):
            self.query(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"GREATEST(COALESCE(MAX(id), 0), 1), MAX(id) IS NOT NULL) FROM {table}"
            )


def without_password(url: str) -> str:
    """``url`` as another process may be given it (a Dask task's argument, which a scheduler may
    log): the same server, database and options, without a password in the user part or in a
    ``password=`` option. That process's libpq reads the password from ``PGPASSWORD`` or
    ``~/.pgpass`` in its own environment."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, where = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{where}"
    query = "&".join(
        kv for kv in parts.query.split("&") if kv and kv.split("=", 1)[0].lower() != "password"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _lost(exc: Exception) -> bool:
    """Whether an error means the server is out of reach (no answer, or it is shutting down),
    rather than an answer to a statement (a deadlock, a timeout)."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unreachable(where: str, exc: Exception) -> StoreError:
    return StoreError(
        redact(f"the run store at {where} cannot be reached: {_first_line(exc)}"), where
    )


def _kwargs() -> dict[str, Any]:
    """How every connection is made: autocommit, rows as dicts, a bounded connect."""
    from psycopg.rows import dict_row

    return {"autocommit": True, "row_factory": dict_row, "connect_timeout": 10}


def _acquire_pool(url: str, where: str):
    import psycopg
    from psycopg_pool import ConnectionPool

    key = (os.getpid(), url)
    # The pool's own reconnect warnings go to the application's logging if it has any, not to
    # stderr: a step that needs the server reports it in one line (`_unreachable`).
    logging.getLogger("psycopg.pool").addHandler(_QUIET)
    with _POOLS_LOCK:
        entry = _POOLS.get(key)
        if entry is None:
            try:  # fail fast, with the server's one-line reason (refused, bad password, no db)
                psycopg.connect(url, connect_timeout=10).close()
            except psycopg.Error as exc:
                raise _unreachable(where, exc) from None
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=int(os.environ.get("NBCONDUCTOR_PG_POOL", "8")),
                kwargs=_kwargs(),
                check=ConnectionPool.check_connection,  # a connection the server dropped is replaced
                open=False,
                name="nbconductor",
            )
            pool.open(wait=False)
            entry = _POOLS[key] = [pool, 0]
        entry[1] += 1
        return entry[0]


def _release_pool(url: str) -> None:
    key = (os.getpid(), url)
    with _POOLS_LOCK:
        entry = _POOLS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        # Kept open for the next store of this URL (a batch worker opens one per row: each new
        # connection is a server process and a password exchange); the least recent idle pools
        # beyond a few are closed.
        _POOLS[key] = _POOLS.pop(key)
        idle = [k for k, e in _POOLS.items() if e[1] <= 0 and k[0] == key[0]]
        for old in idle[:-_KEEP_IDLE]:
            _POOLS.pop(old)[0].close()


@atexit.register
def _close_pools() -> None:
    for key in [k for k in _POOLS if k[0] == os.getpid()]:
        with contextlib.suppress(Exception):
            _POOLS.pop(key)[0].close(timeout=2)
