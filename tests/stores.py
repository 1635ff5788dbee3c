"""Stores with known contents that the store and handoff tests share."""

from __future__ import annotations

from nbconductor._types import GateResult, StepResult
from nbconductor.store._base import connect


def flagged_store(target, n=6):
    """A store with ``n`` flagged drafts waiting for review; returns (store, ids)."""
    store = connect(target)
    run = store.start_run({"topic": "t"}, None, "nb.ipynb")
    ids = [
        store.record(
            run,
            StepResult(
                "draft",
                "flagged",
                f"draft {i}",
                gates=[GateResult("max_words(2)", False, None, "too long")],
                cache_key=f"k{i}",
            ),
        )
        for i in range(n)
    ]
    store.end_run(run, "flagged", 0.0)
    return store, ids


def as_user(target, user):
    store = connect(target)
    store.user = user
    return store
