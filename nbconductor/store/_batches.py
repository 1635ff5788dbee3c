"""Provider batches in the run store: what ``--provider-batch`` submitted, for ``--resume``.

The coordinator records each batch it submits — its id, the provider and where it was sent,
every request's custom id and the hash of its body — here and in the batch's manifest
*before* it waits for the batch, so a coordinator that died can be resumed from either one.
A batch belongs to a job: the batch's output folder. The DDL is plain SQL that SQLite and
PostgreSQL both accept; `_sqlite.SCHEMA` includes it. Stored values are JSON, decoded as
data; the request bodies themselves are not stored (only their hashes).
"""

from __future__ import annotations

import json
from typing import Any

BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS provider_batches (
    id TEXT PRIMARY KEY, job TEXT, provider TEXT, destination TEXT, requests TEXT,
    submitted REAL, last_call REAL, collected REAL
);
CREATE INDEX IF NOT EXISTS provider_batches_job ON provider_batches(job);
"""


def record_batch(store: Any, job: str, batch_id: str, entry: dict) -> None:
    """Record (or update: its collection time) the batch ``batch_id`` of ``job``.

    ``entry`` is the broker's journal entry: ``provider``, ``group`` (base URL, key variable
    name, model), ``requests`` (custom id -> body hash), ``submitted``, ``last_call`` and, once
    its results are in, ``collected``.
    """
    store.execute(
        "INSERT INTO provider_batches (id, job, provider, destination, requests, submitted, "
        "last_call, collected) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "collected = excluded.collected",
        (
            batch_id,
            job,
            str(entry.get("provider")),
            json.dumps(entry.get("group") or {}, sort_keys=True),
            json.dumps(entry.get("requests") or {}, sort_keys=True),
            entry.get("submitted"),
            entry.get("last_call"),
            entry.get("collected"),
        ),
    )


def recorded_batches(store: Any, job: str) -> dict[str, dict]:
    """``{batch_id: entry}`` of every batch recorded for ``job``, in the journal's form."""
    if not store._columns("provider_batches"):
        return {}  # a store from before provider batches
    out: dict[str, dict] = {}
    rows = store.query(
        "SELECT * FROM provider_batches WHERE job = ? ORDER BY submitted, id", (job,)
    )
    for row in rows:
        entry: dict[str, Any] = {
            "provider": row["provider"],
            "group": _mapping(row["destination"]),
            "requests": {str(k): str(v) for k, v in _mapping(row["requests"]).items()},
            "submitted": row["submitted"],
            "last_call": row["last_call"],
        }
        if row["collected"] is not None:
            entry["collected"] = row["collected"]
        out[row["id"]] = entry
    return out


def forget_batches(store: Any, job: str) -> None:
    """Drop the batches recorded for ``job``: a fresh run of it starts a new journal (as its
    manifest does)."""
    if store._columns("provider_batches"):
        store.execute("DELETE FROM provider_batches WHERE job = ?", (job,))


def _mapping(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
