"""Moving rows between stores: Dask rows into the batch's store, and ``nbconductor store copy``.

`dump` reads every row of some tables; `merge` writes such rows into another store (either
backend) in one transaction. A copy into an empty store keeps every id; a merge gives results
and reviews new ids and carries them to what points at them (reviews, claims, assignments,
experiment cells, audits, a ``--map`` item's ``parent_id``); experiments, their cells, pairwise
judgements, people's preferences and audits are replaced by their keys. A new table is one line
in `TABLES`. Rows are data: columns are matched by name
against the destination's own columns, values are passed as parameters, nothing is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import StoreError
from ._base import connect, shown


@dataclass(frozen=True)
class Table:
    """One table a copy moves: how its rows are ordered, what identifies a row that is replaced
    when seen again (empty: a counter ``id``, renumbered by a merge), and whether it points at a
    result (its ``result_id`` follows the result's new id)."""

    name: str
    order: str = "id"
    key: tuple[str, ...] = ()
    result_ref: bool = False


#: every table a copy moves, parents before what points at them (one line per table)
TABLES = (
    Table("runs", "started, id", ("id",)),
    Table("results"),
    Table("reviews", result_ref=True),
    Table("claims", "result_id", ("result_id",), result_ref=True),
    Table("assignments", "result_id", ("result_id",), result_ref=True),
    Table("experiments", "id", ("id",)),
    Table(
        "experiment_cells",
        "experiment_id, row_index, variant, repeat_index",
        ("experiment_id", "row_index", "variant", "repeat_index"),
        result_ref=True,
    ),
    Table(
        "experiment_pairs",
        "experiment_id, row_index, variant, vs, judge",
        ("experiment_id", "row_index", "variant", "vs", "judge"),
    ),
    Table(
        "experiment_prefs",
        "experiment_id, row_index, variant, vs",
        ("experiment_id", "row_index", "variant", "vs"),
    ),
    Table("audits", "result_id", ("result_id",), result_ref=True),
    Table("provider_batches", "submitted, id", ("id",)),
)
COPIED = tuple(t.name for t in TABLES)
_BY_NAME = {t.name: t for t in TABLES}


def _q(column: str) -> str:
    return f'"{column}"' if column == "user" else column


def dump(store, tables: tuple[str, ...] = COPIED) -> dict[str, list[dict]]:
    """Every row of ``tables`` that ``store`` has, oldest first."""
    out: dict[str, list[dict]] = {}
    for t in tables:
        if not store._columns(t):
            continue  # an older store without it
        order = _BY_NAME[t].order if t in _BY_NAME else "id"
        out[t] = [dict(r) for r in store.query(f"SELECT * FROM {t} ORDER BY {order}")]
    return out


def merge(store, rows: dict[str, list[dict]], *, keep_ids: bool = False) -> dict[str, int]:
    """Write dumped ``rows`` into ``store`` in one transaction; returns rows written per table."""
    counts: dict[str, int] = {}
    ids: dict[int, int] = {}
    with store.transaction():
        for spec in TABLES:
            table = spec.name
            records = rows.get(table)
            if records is None:
                continue
            known = store._columns(table)
            for rec in records:
                rec = dict(rec)
                if spec.result_ref and rec.get("result_id") is not None:
                    rec["result_id"] = ids.get(rec["result_id"], rec["result_id"])
                elif table == "results" and rec.get("parent_id") is not None and not keep_ids:
                    rec["parent_id"] = None  # set below, once the parent has its new id
                if spec.key:
                    _upsert(store, spec, rec, known)
                else:
                    cols = [c for c in rec if c in known and (keep_ids or c != "id")]
                    new = store.insert(
                        f"INSERT INTO {table} ({', '.join(map(_q, cols))}) "
                        f"VALUES ({', '.join('?' * len(cols))})",
                        tuple(rec[c] for c in cols),
                    )
                    if table == "results":
                        ids[rec["id"]] = new
            counts[table] = len(records)
        # a --map step's row comes after its items: point the items at its new id
        for rec in [] if keep_ids else rows.get("results", []):
            if rec.get("parent_id") is not None:
                store.execute(
                    "UPDATE results SET parent_id=? WHERE id=?",
                    (ids.get(rec["parent_id"], rec["parent_id"]), ids[rec["id"]]),
                )
    return counts


def _upsert(store, spec: Table, rec: dict[str, Any], known: set[str]) -> None:
    cols = [c for c in rec if c in known]
    table, keys = spec.name, spec.key
    update = ", ".join(f"{_q(c)}=excluded.{_q(c)}" for c in cols if c not in keys)
    store.execute(
        f"INSERT INTO {table} ({', '.join(map(_q, cols))}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({', '.join(keys)}) "
        + (f"DO UPDATE SET {update}" if update else "DO NOTHING"),
        tuple(rec[c] for c in cols),
    )


def copy_store(src: str, dst: str, *, merge_into: bool = False) -> dict[str, int]:
    """Copy every row of the store at ``src`` into ``dst`` (SQLite or PostgreSQL, either way).

    Returns rows copied per table. A ``dst`` that holds rows already is refused (`StoreError`)
    unless ``merge_into``: then results and reviews get new ids and runs are replaced by id.
    """
    from ._review import open_store

    source = open_store(src, readonly=True)
    try:
        rows = dump(source)
    finally:
        source.close()
    target = connect(dst)
    try:
        filled = {t: target.count(t) for t in COPIED if target._columns(t)}
        if any(filled.values()) and not merge_into:
            what = ", ".join(f"{n} {t}" for t, n in filled.items() if n)
            raise StoreError(
                f"{shown(dst)} is not empty ({what}): pass --merge to add to it", shown(dst)
            )
        counts = merge(target, rows, keep_ids=not any(filled.values()))
        if hasattr(target, "after_copy"):
            target.after_copy()
    finally:
        target.close()
    return counts


def cli_store_copy(src: str, dst: str, *, merge_into: bool = False) -> int:
    """``nbconductor store copy SRC DST [--merge]``: prints rows copied per table."""
    counts = copy_store(src, dst, merge_into=merge_into)
    print(
        f"copied {shown(src)} -> {shown(dst)}: "
        + ", ".join(f"{n} {table}" for table, n in counts.items())
    )
    return 0
