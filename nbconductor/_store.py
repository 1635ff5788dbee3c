"""The run store: SQLite, safe for several processes writing at once (WAL, busy timeout).

It records runs, every step execution (rendered prompt, output, model used, tokens, cost,
timings, attempts, gate outcomes, who/when/which notebook, hashes) and review decisions. A
step's cache key points at its latest accepted result, which is how unchanged steps are
reused and interrupted runs resume.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pickle
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from ._redact import env_secrets, redact
from ._types import Attempt, GateResult, StepResult, Usage

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, started REAL, ended REAL, status TEXT, notebook TEXT,
    user TEXT, host TEXT, params TEXT, targets TEXT, cost REAL, error TEXT
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT, step TEXT, state TEXT, cache_key TEXT, cached INTEGER,
    output_kind TEXT, output BLOB, prompt TEXT, model TEXT,
    attempts INTEGER, attempt_log TEXT, gates TEXT,
    input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER, cache_write_tokens INTEGER,
    cost REAL, started REAL, ended REAL, error TEXT, items INTEGER, item INTEGER,
    notebook TEXT, user TEXT, prompt_hash TEXT, output_hash TEXT, params TEXT
);
CREATE INDEX IF NOT EXISTS results_key ON results(cache_key);
CREATE INDEX IF NOT EXISTS results_step ON results(step, id);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, result_id INTEGER, decision TEXT,
    user TEXT, at REAL, before TEXT, after TEXT, note TEXT
);
CREATE INDEX IF NOT EXISTS reviews_result ON reviews(result_id);
"""

ACCEPTED = ("passed", "flagged", "approved", "edited")
# Values that cannot hold a key: redacting them would only cost an environment scan per write.
_NOTHING_TO_REDACT = frozenset({"[]", "{}", "null", "true", "false"})


class _Redactor:
    """`redact` for the values of one write: reads the environment at most once, and only if needed."""

    __slots__ = ("_secrets",)

    def __init__(self) -> None:
        self._secrets: list[str] | None = None

    def __call__(self, text: str) -> str:
        if not text or text in _NOTHING_TO_REDACT:
            return text
        if self._secrets is None:
            self._secrets = env_secrets()
        return redact(text, self._secrets)


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


def default_store_path(notebook_dir: str | os.PathLike | None = None) -> Path:
    """``$NBCONDUCTOR_STORE``, else ``.nbconductor/store.sqlite`` beside the notebook."""
    env = os.environ.get("NBCONDUCTOR_STORE")
    if env:
        return Path(env)
    return Path(notebook_dir or os.getcwd()) / ".nbconductor" / "store.sqlite"


def encode_output(value: Any, redactor: Callable[[str], str] | None = None) -> tuple[str, bytes]:
    """(kind, bytes) for storing a step output: JSON when possible, PNG bytes, else pickle."""
    redactor = redactor or _Redactor()
    if isinstance(value, (bytes, bytearray)):
        return "bytes", bytes(value)
    if hasattr(value, "model_dump"):
        return "pydantic", redactor(json.dumps(value.model_dump(mode="json"))).encode()
    if isinstance(value, str):
        return "text", redactor(value).encode()
    try:
        return "json", redactor(json.dumps(value, ensure_ascii=False, allow_nan=False)).encode()
    except (TypeError, ValueError):
        return "pickle", pickle.dumps(value)


def decode_output(kind: str | None, blob: bytes | None) -> Any:
    if blob is None or kind is None:
        return None
    if kind == "bytes":
        return bytes(blob)
    if kind == "text":
        return blob.decode()
    if kind in ("json", "pydantic"):
        return json.loads(blob)
    if kind == "pickle":
        return pickle.loads(blob)
    raise ValueError(f"unknown output kind {kind!r}")


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


class Store:
    """A connection to one run store. Thread-safe; several processes may share the file."""

    def __init__(self, path: str | os.PathLike = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 60000")
        if self.path != ":memory:":
            self._retry(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._retry(lambda: self._db.executescript(SCHEMA))
        self.user = _user()

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
        with self._lock:
            return self._retry(lambda: self._db.execute(sql, args))

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._retry(lambda: self._db.execute(sql, args).fetchall())
            finally:
                self._db.row_factory = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # runs -------------------------------------------------------------------------------
    def start_run(self, params: dict, targets: list[str] | None, notebook: str | None) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.execute(
            "INSERT INTO runs (id, started, status, notebook, user, host, params, targets) VALUES (?,?,?,?,?,?,?,?)",
            (run_id, time.time(), "running", notebook, self.user, socket.gethostname(),
             redact(_json(params)), json.dumps(targets)),
        )
        return run_id

    def end_run(self, run_id: str, status: str, cost: float | None, error: str | None = None) -> None:
        self.execute(
            "UPDATE runs SET ended=?, status=?, cost=?, error=? WHERE id=?",
            (time.time(), status, cost, redact(error) if error else None, run_id),
        )

    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))

    # results ----------------------------------------------------------------------------
    def record(self, run_id: str, result: StepResult, notebook: str | None = None, params: dict | None = None,
               item: int | None = None) -> int:
        """Write one step result (or one item of a --map step); returns its id."""
        r = _Redactor()
        kind, blob = encode_output(result.output, r)
        prompt = r(result.prompt) if result.prompt else None
        u = result.usage
        cur = self.execute(
            """INSERT INTO results (run_id, step, state, cache_key, cached, output_kind, output, prompt,
               model, attempts, attempt_log, gates, input_tokens, output_tokens, cache_read_tokens,
               cache_write_tokens, cost, started, ended, error, items, item, notebook, user, prompt_hash,
               output_hash, params) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                run_id, result.step, result.state, result.cache_key, int(result.cached), kind, blob, prompt,
                result.model, len(result.attempts), _dumps_list(result.attempts, r),
                _dumps_list(result.gates, r), u.input_tokens, u.output_tokens,
                u.cache_read_tokens, u.cache_write_tokens, result.cost, result.started, result.ended,
                r(result.error) if result.error else None, result.items, item, notebook, self.user,
                digest(prompt) if prompt else None, digest(blob), r(_json(params)) if params else "{}",
            ),
        )
        return cur.lastrowid

    def lookup(self, cache_key: str) -> StepResult | None:
        """The latest accepted result with this cache key, or None."""
        rows = self.query(
            "SELECT * FROM results WHERE cache_key=? AND state IN ('passed','flagged','approved','edited') "
            "AND cached=0 "
            "ORDER BY id DESC LIMIT 1",
            (cache_key,),
        )
        return row_to_result(rows[0]) if rows else None

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
        rows = self.query("SELECT * FROM results WHERE id=?", (result_id,))
        return row_to_result(rows[0]) if rows else None

    def update_output(self, result_id: int, output: Any, state: str) -> None:
        kind, blob = encode_output(output)
        self.execute(
            "UPDATE results SET output_kind=?, output=?, state=?, output_hash=? WHERE id=?",
            (kind, blob, state, digest(blob), result_id),
        )

    # reviews ----------------------------------------------------------------------------
    def record_review(self, result_id: int, decision: str, before: Any, after: Any, note: str = "") -> int:
        cur = self.execute(
            "INSERT INTO reviews (result_id, decision, user, at, before, after, note) VALUES (?,?,?,?,?,?,?)",
            (result_id, decision, self.user, time.time(), redact(_json(before)), redact(_json(after)), redact(note)),
        )
        return cur.lastrowid


def row_to_result(row: sqlite3.Row) -> StepResult:
    attempts = [Attempt(**{**a, "usage": Usage(**a["usage"])}) for a in json.loads(row["attempt_log"] or "[]")]
    gates = [GateResult(**{**g, "usage": Usage(**g["usage"]) if g.get("usage") else None})
             for g in json.loads(row["gates"] or "[]")]
    return StepResult(
        step=row["step"], state=row["state"], output=decode_output(row["output_kind"], row["output"]),
        prompt=row["prompt"], model=row["model"], attempts=attempts, gates=gates,
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]),
        cost=row["cost"], started=row["started"], ended=row["ended"], error=row["error"],
        cache_key=row["cache_key"], cached=bool(row["cached"]), items=row["items"], result_id=row["id"],
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")
