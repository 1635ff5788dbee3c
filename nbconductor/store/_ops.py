"""What a run store does, in SQL both backends run: runs, results, the cache, reviews.

`StoreOps` holds the operations; a backend supplies the connection layer (``execute``,
``query``, ``insert``, ``transaction``, ``_columns``) and the schema: `_sqlite.SQLiteStore`
(the default) and `_postgres.PostgresStore`. Statements use ``?`` placeholders and quote the
``"user"`` column (a reserved word in PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from .._redact import redact, redactor
from .._types import Attempt, GateResult, StepResult, Usage
from ._base import SERVED, UNFINISHED, WAS_FLAGGED
from ._codec import Unstored, decode_output, encode_output, loadable
from ._liveness import own_start, process_gone

_WARNED: set[str] = set()  # stores already warned about (pickled outputs)
#: every table of a store (what `dump` reads by default)
TABLES = ("runs", "results", "reviews", "claims", "assignments")


class StoreOps:
    """The operations of a run store over a backend's ``execute``/``query``/``insert``."""

    path: str
    user: str
    _checkpointed: float

    def output(self, row: Any) -> Any:
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
        mine = (os.getpid(), own_start())  # this process is alive: its runs (a compare's
        # hundred in flight) need no look at /proc each, nor a trip out of the database
        rows = self.query(
            "SELECT id, host, pid, pid_start FROM runs WHERE status=? AND host=? "
            "AND pid IS NOT NULL AND NOT (pid=? AND pid_start=?)",
            ("running", socket.gethostname(), *mine),
        )
        gone = [
            r["id"]
            for r in rows
            if (r["pid"], r["pid_start"]) != mine
            and process_gone(r["host"], r["pid"], r["pid_start"])
        ]
        for run_id in gone:
            self.execute(
                "UPDATE runs SET status='interrupted', "
                "ended=COALESCE((SELECT MAX(ended) FROM results WHERE run_id=runs.id), started), "
                "error=COALESCE(error, 'its process ended before the run finished (killed or crashed)') "
                "WHERE id=? AND status='running'",
                (run_id,),
            )
        return gone

    def runs(self, limit: int = 50) -> list[Any]:
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
        sql, args = (
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
            return self._insert_map_row(sql, args, run_id, result.step)
        return self.insert(sql, args)

    def _insert_map_row(self, sql: str, args: tuple, run_id: str, step: str) -> int:
        """Insert a --map step's row and point its items (recorded before it, in this run) at it.

        Two statements here; `PostgresStore` makes them one round trip."""
        result_id = self.insert(sql, args)
        self.execute(
            "UPDATE results SET parent_id=? WHERE run_id=? AND step=? AND item IS NOT NULL "
            "AND parent_id IS NULL AND id<?",
            (result_id, run_id, step, result_id),
        )
        return result_id

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

    def results(self, run_id: str | None = None, step: str | None = None) -> list[Any]:
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
        """A batch row's runs since ``since``: (run ids, step results flagged when they ran —
        a reviewer may have decided them since —, total cost or None when a run's cost is
        unknown, whether a run did not finish)."""
        runs = self.query(
            "SELECT id, status, cost FROM runs WHERE notebook=? AND started>=? ORDER BY started",
            (notebook, since - 1),
        )
        ids = [r["id"] for r in runs]
        flagged = 0
        if ids:
            flagged = self.query(
                f"SELECT COUNT(*) AS n FROM results WHERE run_id IN ({','.join('?' * len(ids))}) "
                f"AND state IN ({','.join('?' * len(WAS_FLAGGED))}) AND item IS NULL",
                (*ids, *WAS_FLAGGED),
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


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _q(column: str) -> str:
    return f'"{column}"' if column == "user" else column


def row_to_result(row: Any, store: StoreOps | None = None) -> StepResult:
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
