"""Several reviewers, one queue: who reviews, claims on open items, and assignments.

- Who decides is ``$NBCONDUCTOR_USER``, else the OS user (`reviewer`).
- Opening an item claims it for ``$NBCONDUCTOR_CLAIM_MINUTES`` (default 5) minutes (`claim`):
  one row per result in ``claims``, taken atomically (its primary key), so of two reviewers
  opening the same item at once exactly one gets it; the other hears "being reviewed by X" and
  moves on (`next_item`). A claim that has expired (its reviewer left) is taken over.
- `assign` spreads waiting items over reviewers round-robin (``assignments``); ``--mine``
  shows one's own. Decisions themselves are atomic in `_review.decide`.
"""

from __future__ import annotations

import os
import time

from .._errors import ReviewError

CLAIM_ENV = "NBCONDUCTOR_CLAIM_MINUTES"


def reviewer() -> str:
    """``$NBCONDUCTOR_USER``, else the OS user."""
    from ._sqlite import _user

    return _user()


def claim_seconds(minutes: float | None = None) -> float:
    """How long a claim lasts: ``minutes``, else ``$NBCONDUCTOR_CLAIM_MINUTES``, else 5 minutes."""
    if minutes is None:
        try:
            minutes = float(os.environ.get(CLAIM_ENV, "5"))
        except ValueError:
            raise ReviewError(f"{CLAIM_ENV} must be a number of minutes") from None
    return max(0.0, float(minutes)) * 60


def holder(store, result_id: int, now: float | None = None) -> tuple[str, float] | None:
    """(user, until) of the live claim on a result, or None."""
    rows = store.query(
        'SELECT "user", until FROM claims WHERE result_id=? AND until>?',
        (int(result_id), time.time() if now is None else now),
    )
    return (rows[0]["user"], rows[0]["until"]) if rows else None


def claim(store, result_id: int, user: str | None = None, minutes: float | None = None) -> float:
    """Claim a result for ``user`` (default: `reviewer`); returns when the claim ends.

    Renews one's own claim and takes over an expired one. Raises `ReviewError` ("being
    reviewed by X until T") when someone else holds it, and ("already decided by X at T") when
    someone decided it a moment ago: no claim is left on a decided item.
    """
    user = user or reviewer()
    now = time.time()
    until = now + claim_seconds(minutes)
    with store.transaction():
        store.execute(
            'DELETE FROM claims WHERE result_id=? AND (until<=? OR "user"=?)',
            (int(result_id), now, user),
        )
        got = store.execute(
            'INSERT INTO claims (result_id, "user", until) VALUES (?,?,?) '
            "ON CONFLICT (result_id) DO NOTHING",
            (int(result_id), user, until),
        )
    if got.rowcount == 1:
        _still_waiting(store, result_id, user)
        return until
    held = holder(store, result_id)
    who, end = held if held else ("someone", now)
    raise ReviewError(f"result #{result_id} is being reviewed by {who} until {_clock(end)}")


def _still_waiting(store, result_id: int, user: str) -> None:
    """After taking a claim: if the item was decided meanwhile, give the claim back and raise
    why. (A decision made after this check is refused: it sees the claim.)"""
    from .._states import FLAGGED
    from ._audit import is_open_audit
    from ._review import _not_waiting

    row = store.row(int(result_id))
    if row is None or row["state"] == FLAGGED or is_open_audit(store, row["id"]):
        return
    release(store, result_id, user)
    label = row["step"] if row["item"] is None else f"{row['step']}[{row['item']}]"
    raise _not_waiting(store, row, label)


def release(store, result_id: int, user: str | None = None) -> None:
    """Give up one's claim on a result (nothing happens for someone else's)."""
    store.execute(
        'DELETE FROM claims WHERE result_id=? AND "user"=?', (int(result_id), user or reviewer())
    )


def next_item(store, user: str | None = None, *, mine: bool = False, minutes: float | None = None):
    """Claim and return the first waiting item nobody else is reviewing (one's own claims and
    assignments first; with ``mine``, only items assigned to ``user``); None when there is none."""
    from ._review import queue

    user = user or reviewer()
    items = queue(store, mine=mine, user=user)
    items.sort(key=lambda i: (i.claimed_by != user, i.assigned_to not in (None, user), i.id))
    for item in items:
        if item.claimed_by not in (None, user):
            continue  # being reviewed by someone else: skip to the next
        try:
            item.claim_until = claim(store, item.id, user, minutes)
        except ReviewError:
            continue  # taken a moment ago
        item.claimed_by = user
        return item
    return None


def assign(store, users: list[str], ids: list[int] | None = None) -> dict[str, int]:
    """Assign waiting items (``ids``, default: every unassigned one) round-robin to ``users``;
    returns how many each got."""
    from ._review import queue

    users = [u.strip() for u in users if u.strip()]
    if not users:
        raise ReviewError("--assign needs one or more user names: --assign ana,ben")
    items = [i for i in queue(store) if (i.id in ids if ids else i.assigned_to is None)]
    counts = dict.fromkeys(users, 0)
    with store.transaction():
        for n, item in enumerate(items):
            user = users[n % len(users)]
            store.execute("DELETE FROM assignments WHERE result_id=?", (item.id,))
            store.execute(
                'INSERT INTO assignments (result_id, "user") VALUES (?,?)', (item.id, user)
            )
            counts[user] += 1
    return counts


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
