"""Experiments in the run store: a compare of a step's variants over a dataset, cell by cell.

An experiment is one compare (its id is a digest of the step, the variants as declared, the
data rows and the repeats, so the same compare run again resumes it). Each cell — one data row
× one variant × one repeat — is recorded as soon as it finishes, with the figures the compare
shows; a resumed compare skips recorded cells and pays for none of them again. The DDL is plain
SQL both SQLite and PostgreSQL accept; `_sqlite.SCHEMA` includes it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .._redact import redact

EXPERIMENT_TABLES = (
    "experiments",
    "experiment_cells",
    "experiment_pairs",
    "experiment_prefs",
    "audits",
)  # audits: `_audit`
#: what a person may answer in a blind pairwise review
CHOICES = ("A", "B", "tie", "both bad")
EXPERIMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, step TEXT, created REAL, updated REAL, notebook TEXT,
    variants TEXT, row_count INTEGER, repeats INTEGER, status TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS experiment_cells (
    experiment_id TEXT, row_index INTEGER, variant TEXT, repeat_index INTEGER,
    run_id TEXT, result_id INTEGER, state TEXT, first_pass INTEGER, accepted INTEGER,
    failed INTEGER, score REAL, tokens INTEGER, cost REAL, latency REAL, gates TEXT,
    output TEXT, params TEXT, at REAL,
    PRIMARY KEY (experiment_id, row_index, variant, repeat_index)
);
CREATE TABLE IF NOT EXISTS experiment_pairs (
    experiment_id TEXT, row_index INTEGER, variant TEXT, vs TEXT, judge TEXT, winner TEXT,
    flipped INTEGER, reasons TEXT, at REAL,
    PRIMARY KEY (experiment_id, row_index, variant, vs, judge)
);
CREATE TABLE IF NOT EXISTS experiment_prefs (
    experiment_id TEXT, row_index INTEGER, variant TEXT, vs TEXT, choice TEXT, reviewer TEXT,
    at REAL, shown_first TEXT,
    PRIMARY KEY (experiment_id, row_index, variant, vs)
);
CREATE TABLE IF NOT EXISTS audits (
    result_id INTEGER PRIMARY KEY, step TEXT, rate REAL, at REAL, status TEXT
);
"""

CELL_FIELDS = (
    "row_index",
    "variant",
    "repeat_index",
    "run_id",
    "result_id",
    "state",
    "first_pass",
    "accepted",
    "failed",
    "score",
    "tokens",
    "cost",
    "latency",
    "gates",
    "output",
    "params",
)
MAX_OUTPUT = 4000  # characters of a cell's output kept for the grid


def save_experiment(
    store,
    experiment_id: str,
    step: str,
    variants: list[str],
    rows: int,
    repeats: int,
    notebook: str | None,
    status: str = "running",
    summary: dict | None = None,
) -> None:
    """Create or update the experiment's row (its status and, when finished, its summary)."""
    now = time.time()
    store.execute(
        "INSERT INTO experiments (id, step, created, updated, notebook, variants, row_count, "
        "repeats, status, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
        "UPDATE SET updated=excluded.updated, status=excluded.status, summary=excluded.summary",
        (
            experiment_id,
            step,
            now,
            now,
            notebook,
            json.dumps(variants),
            rows,
            repeats,
            status,
            redact(json.dumps(summary)) if summary is not None else None,
        ),
    )


def record_cell(store, experiment_id: str, cell: dict[str, Any]) -> None:
    """Record one finished cell (recorded once: a second record of the same cell is ignored)."""
    values = dict(cell)
    values["gates"] = json.dumps(values.get("gates") or [])
    values["params"] = redact(json.dumps(values.get("params") or {}, default=str))
    output = values.get("output")
    values["output"] = None if output is None else redact(str(output)[:MAX_OUTPUT])
    for key in ("first_pass", "accepted", "failed"):
        values[key] = int(bool(values.get(key)))
    columns = ", ".join(CELL_FIELDS)
    store.execute(
        f"INSERT INTO experiment_cells (experiment_id, {columns}, at) VALUES "
        f"(?, {', '.join('?' for _ in CELL_FIELDS)}, ?) "
        "ON CONFLICT (experiment_id, row_index, variant, repeat_index) DO NOTHING",
        (experiment_id, *(values.get(k) for k in CELL_FIELDS), time.time()),
    )


def _query(store, sql: str, args: tuple) -> list:
    """The rows of one query on the experiment tables; none from an older, read-only store
    that does not have them."""
    try:
        return store.query(sql, args)
    except Exception:  # noqa: BLE001 - an older, read-only store without the table
        return []


def experiment_cells(store, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's recorded cells, decoded (JSON fields parsed, flags as bools)."""
    rows = _query(
        store,
        f"SELECT {', '.join(CELL_FIELDS)} FROM experiment_cells WHERE experiment_id=? "
        "ORDER BY row_index, variant, repeat_index",
        (experiment_id,),
    )
    out = []
    for row in rows:
        cell = {k: row[k] for k in CELL_FIELDS}
        cell["gates"] = json.loads(cell["gates"] or "[]")
        cell["params"] = json.loads(cell["params"] or "{}")
        for key in ("first_pass", "accepted", "failed"):
            cell[key] = bool(cell[key])
        out.append(cell)
    return out


def experiments(store, limit: int = 50) -> list[dict[str, Any]]:
    """The latest experiments, newest first: id, step, variants, rows, repeats, status, summary."""
    rows = _query(
        store,
        "SELECT id, step, created, updated, notebook, variants, row_count, repeats, status, "
        "summary FROM experiments ORDER BY updated DESC LIMIT ?",
        (limit,),
    )
    return [
        {
            "id": r["id"],
            "step": r["step"],
            "created": r["created"],
            "notebook": r["notebook"],
            "variants": json.loads(r["variants"] or "[]"),
            "rows": r["row_count"],
            "repeats": r["repeats"],
            "status": r["status"],
            "summary": json.loads(r["summary"]) if r["summary"] else None,
        }
        for r in rows
    ]


def record_pair(store, experiment_id: str, pair: dict[str, Any]) -> None:
    """Record one pairwise judgement (``row_index``, ``variant``, ``vs``, ``judge``, ``winner``:
    the variant's name, ``vs``'s or ``tie``, ``flipped``, ``reasons``); once."""
    store.execute(
        "INSERT INTO experiment_pairs (experiment_id, row_index, variant, vs, judge, winner, "
        "flipped, reasons, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (experiment_id, "
        "row_index, variant, vs, judge) DO NOTHING",
        (
            experiment_id,
            pair["row_index"],
            pair["variant"],
            pair["vs"],
            pair["judge"],
            pair["winner"],
            int(bool(pair["flipped"])),
            redact(json.dumps(pair.get("reasons") or [])),
            time.time(),
        ),
    )


def experiment_pairs(store, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's pairwise judgements."""
    rows = _query(
        store,
        "SELECT row_index, variant, vs, judge, winner, flipped, reasons FROM experiment_pairs "
        "WHERE experiment_id=? ORDER BY row_index, variant",
        (experiment_id,),
    )
    return [
        {
            **{k: r[k] for k in ("row_index", "variant", "vs", "judge", "winner")},
            "flipped": bool(r["flipped"]),
            "reasons": json.loads(r["reasons"] or "[]"),
        }
        for r in rows
    ]


def cli_experiment(store: str | None, experiment: str, *, as_json: bool = False) -> int:
    """``nbconductor report --experiment ID|latest|list [--json]``: a recorded compare's
    figures and verdicts, read from the store; returns the exit status. Raises `OptionError`
    (exit 2) for an id the store does not hold."""
    from .._errors import OptionError
    from .._summary import text_table
    from ..render._compare import compare_text
    from ._review import open_store

    db = open_store(store, readonly=True)
    try:
        found = experiments(db, limit=1000)
    finally:
        db.close()
    if experiment == "list":
        if as_json:
            print(
                json.dumps(
                    [{k: v for k, v in e.items() if k != "summary"} for e in found], indent=2
                )
            )
        else:
            rows = [
                [e["id"], e["step"], ",".join(e["variants"]), str(e["rows"]), e["status"]]
                for e in found
            ]
            print(text_table(["experiment", "step", "variants", "rows", "status"], rows))
        return 0
    match = found[:1] if experiment == "latest" else [e for e in found if e["id"] == experiment]
    if not match:
        known = ", ".join(e["id"] for e in found[:5]) or "none yet: run nbconductor compare"
        raise OptionError(f"no experiment {experiment!r} in the store (latest: {known})")
    e = match[0]
    from .._compare import load_comparison  # the figures as they are now (people's choices too)

    db = open_store(store, readonly=True)
    try:
        comparison = load_comparison(db, e["id"])
    finally:
        db.close()
    if not comparison.cells:
        raise OptionError(f"experiment {e['id']} has no finished cell: run the same compare again")
    done = "" if e["status"] == "finished" else " (unfinished: run the same compare to finish it)"
    print(
        json.dumps(comparison.to_json(), indent=2) if as_json else compare_text(comparison) + done
    )
    return 0


def record_preference(
    store, experiment_id: str, row_index: int, variant: str, vs: str, choice: str, shown_first: str
) -> bool:
    """Record a person's blind preference between ``variant`` and ``vs`` on one row: ``choice``
    is the winner's name, ``tie`` or ``both bad``; ``shown_first`` the one shown as A. Who and
    when are recorded. Returns False when the pair was decided already (decided once)."""
    cur = store.execute(
        "INSERT INTO experiment_prefs (experiment_id, row_index, variant, vs, choice, reviewer, "
        "at, shown_first) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (experiment_id, row_index, "
        "variant, vs) DO NOTHING",
        (experiment_id, row_index, variant, vs, choice, store.user, time.time(), shown_first),
    )
    return cur.rowcount == 1


def experiment_prefs(store, experiment_id: str) -> list[dict[str, Any]]:
    """People's pairwise preferences in an experiment (who, when, what was shown first)."""
    rows = _query(
        store,
        "SELECT row_index, variant, vs, choice, reviewer, at, shown_first FROM "
        "experiment_prefs WHERE experiment_id=? ORDER BY at",
        (experiment_id,),
    )
    keys = ("row_index", "variant", "vs", "choice", "reviewer", "at", "shown_first")
    return [{k: r[k] for k in keys} for r in rows]
