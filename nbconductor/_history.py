"""``history("draft", n=3)`` in templates: the last approved or passed outputs of a step."""

from __future__ import annotations

from typing import Any

from ._store import Store, decode_output


def history(store: Store, step: str, n: int = 3) -> list[Any]:
    """The last ``n`` outputs of ``step`` that a reviewer approved or that passed every gate.

    Newest first. An edited output counts as its edited text; flagged outputs still waiting
    for review, rejected ones and cache hits (the same output again) are left out. A ``--map``
    step gives its whole list per run.
    """
    rows = store.query(
        "SELECT output_kind, output FROM results WHERE step=? AND cached=0 AND item IS NULL "
        "AND state IN ('passed','approved','edited') ORDER BY id DESC LIMIT ?",
        (step, n),
    )
    return [decode_output(r["output_kind"], r["output"]) for r in rows]


def history_function(store: Store):
    def _history(step: str, n: int = 3) -> list[Any]:
        return history(store, step, n)

    return _history
