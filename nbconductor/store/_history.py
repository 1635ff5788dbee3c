"""``history("draft", n=3)`` in templates: memory of *other* work, from the run store.

The rule: ``history(step)`` returns the outputs of ``step`` that were accepted (passed every gate,
or approved or edited by a reviewer) **before the current run started** — for a batch row,
before the batch started (``NBCONDUCTOR_HISTORY_BEFORE``, set by ``nbconductor batch``) — and
that were produced for **other parameters** than the current run's. So a step that calls
``history()`` of itself never sees its own output: re-running an unchanged brief renders the
same prompt (a cache hit, no model call), and the rows of a batch do not see each other, so two
identical batches on identical stores give identical outputs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ._sqlite import Store, Unstored

#: a Unix time; set by ``nbconductor batch`` for its rows: history ends where the batch began
HISTORY_ENV = "NBCONDUCTOR_HISTORY_BEFORE"

_SQL = """
SELECT r.output_kind, r.output, runs.params AS run_params FROM results r LEFT JOIN runs ON runs.id = r.run_id
WHERE r.step=? AND r.cached=0 AND r.item IS NULL AND r.run_id != ?
  AND r.output_kind NOT IN ('unstored', 'pickle')
  AND ((r.state = 'passed' AND r.ended < ?)
       OR (r.state IN ('approved', 'edited') AND (SELECT MAX(v.at) FROM reviews v WHERE v.result_id = r.id
                                                  AND v.decision IN ('approve', 'edit')) < ?))
ORDER BY r.id DESC LIMIT ? OFFSET ?
"""


def history(
    store: Store,
    step: str,
    n: int = 3,
    *,
    before: float | None = None,
    params: dict[str, Any] | None = None,
    run_id: str = "",
) -> list[Any]:
    """The last ``n`` accepted outputs of ``step``, newest first, by the rule above.

    ``before`` is when the current run started (default: now, or ``$NBCONDUCTOR_HISTORY_BEFORE``
    when that is earlier); ``params`` are its parameters: a run whose parameters agree with them
    on every name both have is the same brief, and left out. An edited output counts as its edited
    text; flagged outputs still waiting for review, rejected ones, cache hits and outputs the store
    holds no value for are left out. A ``--map`` step gives its whole list per run.
    """
    cutoff = history_cutoff(before)
    mine = _params_of(params)
    out: list[Any] = []
    page, offset = max(4 * n, 16), 0
    while len(out) < n:
        rows = store.query(_SQL, (step, run_id, cutoff, cutoff, page, offset))
        for row in rows:
            if mine is None or not _same_brief(mine, row["run_params"]):
                value = store.output(row)
                if isinstance(value, Unstored):  # e.g. a DataFrame where pyarrow is not installed
                    continue
                out.append(value)
                if len(out) >= n:
                    break
        if len(rows) < page:
            break
        offset += page
    return out


def history_cutoff(before: float | None = None) -> float:
    """When history ends: ``before`` (default now), or the batch's start when that is earlier."""
    cutoff = time.time() if before is None else before
    env = os.environ.get(HISTORY_ENV)
    if env:
        try:
            cutoff = min(cutoff, float(env))
        except ValueError:
            pass
    return cutoff


def _params_of(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    from .._redact import redact

    # Compared as the store holds them: JSON, redacted (`Store.start_run` writes them so).
    return json.loads(redact(json.dumps(params, ensure_ascii=False, default=repr)))


def _same_brief(mine: dict[str, Any], stored: str | None) -> bool:
    try:
        theirs = json.loads(stored or "{}")
    except ValueError:
        return False
    if not isinstance(theirs, dict):
        return False
    return all(theirs[k] == v for k, v in mine.items() if k in theirs)


def history_function(
    store: Store,
    *,
    before: float | None = None,
    params: dict[str, Any] | None = None,
    run_id: str = "",
):
    """The ``history(step, n=3)`` a template calls, bound to a store and the current run."""
    cutoff = history_cutoff(before)

    def _history(step: str, n: int = 3) -> list[Any]:
        return history(store, step, n, before=cutoff, params=params, run_id=run_id)

    return _history
