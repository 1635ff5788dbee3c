"""The review queue: flagged outputs waiting for a person, and the decisions made on them.

Functions over a `Store` (usable anywhere, no frontend needed):

- `queue(store)` lists every flagged output not yet decided — from this kernel or from batch
  runs recorded in the same store — with its step, run, parameters, output, score, feedback
  and the judge's suggested edit.
- `decide(store, result_id, decision, after=None, note="")` approves, edits (then approves) or
  rejects one, recording who, when, the output before and after and a note in ``reviews``, and
  setting the result's state to ``approved`` / ``edited`` / ``rejected``. An approved or edited
  result is an accepted result: the cache serves it and ``history()`` returns it.

In a notebook, `ReviewWidget` (``%conductor review``) shows one card per item with buttons;
approving or editing there also replaces the step's output in the kernel and re-runs its
downstream steps. ``nbconductor review`` (`cli_review`) prints the queue in a terminal and
approves or rejects by id.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _trace
from .._errors import ReviewError
from .._summary import preview, text_table
from ._base import (
    APPROVED,
    EDITED,
    FLAGGED,
    PASSED,
    REJECTED,
    connect,
    default_store,
    is_url,
    shown,
)
from ._sqlite import Store, loadable, writable

#: decision -> the state the result takes
DECISIONS = {"approve": APPROVED, "edit": EDITED, "reject": REJECTED, "rerun": REJECTED}
_ALIASES = {"approved": "approve", "edited": "edit", "rejected": "reject", "re-run": "rerun"}


@dataclass
class ReviewItem:
    """One flagged output waiting for a decision."""

    id: int
    run_id: str
    step: str
    item: int | None
    params: dict
    output: Any
    output_kind: str | None
    score: float | None
    feedback: str
    suggestion: str | None
    model: str | None = None
    attempts: int = 0
    notebook: str | None = None
    cache_key: str | None = None
    ended: float | None = None
    gates: list[dict] = field(default_factory=list)
    claimed_by: str | None = None  # a reviewer who has it open (a live claim)
    claim_until: float | None = None
    assigned_to: str | None = None
    audit: bool = False  # a passed output sampled by --audit (the run did not wait for it)

    @property
    def label(self) -> str:
        """``draft``, or ``translate[2]`` for one item of a ``--map`` step."""
        return self.step if self.item is None else f"{self.step}[{self.item}]"


def open_store(path: str | os.PathLike | None, *, readonly: bool | None = False) -> Store:
    """The store at ``path`` (default: ``$NBCONDUCTOR_STORE`` or ``.nbconductor/store.sqlite``).

    Raises `ReviewError` when there is no store there, rather than creating an empty one, and
    `StoreError` when the file is not a run store. ``readonly`` opens it for reading only (a
    read-only file or folder works; nothing is written); ``None``: read-only when it cannot be
    written (a decision on it is then one line saying so).
    """
    where = path or default_store()
    if is_url(str(where)):
        return connect(str(where), readonly=bool(readonly))
    where = Path(where)
    if not where.exists():
        raise ReviewError(f"no run store at {where}: run a pipeline first, or pass --store PATH")
    if readonly is None:
        readonly = not writable(where)
    return connect(where, readonly=readonly)


def _as_store(store_or_path: Store | str | os.PathLike | None, *, readonly: bool = False) -> Store:
    return (
        store_or_path
        if isinstance(store_or_path, Store)
        else open_store(store_or_path, readonly=readonly)
    )


# the queue ----------------------------------------------------------------------------------
_QUEUE_SQL = """
SELECT r.*, runs.params AS run_params, c."user" AS claimed_by, c.until AS claim_until,
       a."user" AS assigned_to
FROM results r LEFT JOIN runs ON runs.id = r.run_id
LEFT JOIN claims c ON c.result_id = r.id AND c.until > ?
LEFT JOIN assignments a ON a.result_id = r.id
WHERE r.state = ? AND r.cached = 0 AND NOT (r.item IS NULL AND r.items IS NOT NULL)
ORDER BY r.id
"""


def queue(
    store: Store | str | os.PathLike | None = None, *, mine: bool = False, user: str | None = None
) -> list[ReviewItem]:
    """Every flagged output not yet decided, oldest first, with who has it open or assigned.

    A ``--map`` step is reviewed item by item (its step-level row follows its items). ``mine``:
    only the items assigned to ``user`` (default: ``$NBCONDUCTOR_USER`` or the OS user).
    """
    store = _as_store(store, readonly=True)
    items = [_item(row, store) for row in store.query(_QUEUE_SQL, (time.time(), FLAGGED))]
    if mine:
        from ._claims import reviewer

        user = user or reviewer()
        items = [i for i in items if i.assigned_to == user]
    return items if mine else items + audit_items(store)


def audit_items(store: Store) -> list[ReviewItem]:
    """Passed outputs sampled by ``--audit``, waiting for a reviewer (`_audit`)."""
    from ._audit import open_audit_ids

    out = []
    for result_id in open_audit_ids(store):
        row = store.row(result_id)
        if row is None or row["state"] != PASSED:
            continue
        runs = store.query("SELECT params FROM runs WHERE id=?", (row["run_id"],))
        extra = {"run_params": runs[0]["params"] if runs else "{}", "claimed_by": None}
        item = _item({**dict(row), **extra, "claim_until": None, "assigned_to": None}, store)
        item.audit, item.feedback = True, "audit: passed every gate; is it really good?"
        out.append(item)
    return out


def _item(row, store: Store) -> ReviewItem:
    gates = json.loads(row["gates"] or "[]")
    failed = [g for g in gates if not g.get("passed")]
    scores = [
        g["score"] for g in failed if g.get("score") is not None and g.get("name") == "rubric"
    ]
    scores = scores or [g["score"] for g in failed if g.get("score") is not None]
    feedback = "; ".join(f"{g['name']}: {g.get('feedback') or 'failed'}" for g in failed)
    suggestion = next((g["suggestion"] for g in failed if g.get("suggestion")), None)
    try:
        params = json.loads(row["run_params"] or "{}")
    except ValueError:
        params = {}
    return ReviewItem(
        id=row["id"],
        run_id=row["run_id"],
        step=row["step"],
        item=row["item"],
        params=params,
        output=store.output(row),
        output_kind=row["output_kind"],
        score=min(scores) if scores else None,
        feedback=feedback or (row["error"] or ""),
        suggestion=suggestion,
        model=row["model"],
        attempts=row["attempts"] or 0,
        notebook=row["notebook"],
        cache_key=row["cache_key"],
        ended=row["ended"],
        gates=gates,
        claimed_by=row["claimed_by"],
        claim_until=row["claim_until"],
        assigned_to=row["assigned_to"],
    )


def queue_table(items: list[ReviewItem], width: int = 48) -> str:
    """The queue as a fixed-width table, then each item's feedback and suggested edit."""
    if not items:
        return "nothing to review: no flagged outputs are waiting"
    rows = [
        [
            f"#{i.id}",
            i.label,
            i.run_id,
            _params_text(i.params, 30),
            "—" if i.score is None else f"{i.score:.2f}",
            preview(i.output, width),
        ]
        for i in items
    ]
    lines = [text_table(["id", "step", "run", "parameters", "score", "output"], rows), ""]
    for i in items:
        lines.append(f"#{i.id} {i.label}: {i.feedback or 'no feedback'}")
        if i.claimed_by or i.assigned_to:
            who = [f"assigned to {i.assigned_to}"] if i.assigned_to else []
            if i.claimed_by:
                who.append(f"being reviewed by {i.claimed_by}")
            lines.append(f"    {' · '.join(who)}")
        if i.suggestion:
            lines.append(f"    suggested edit: {i.suggestion}")
    return "\n".join(lines)


def _params_text(params: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={preview(v, 24)}" for k, v in params.items()) or "—"
    return text if len(text) <= width else text[: width - 1] + "…"


# decisions ----------------------------------------------------------------------------------
def decide(
    store: Store | str | os.PathLike,
    result_id: int,
    decision: str,
    after: Any = None,
    note: str = "",
) -> int:
    """Approve, edit (then approve), reject or mark for re-run one flagged result.

    ``decision`` is ``approve``, ``edit`` (``after`` is the edited output: text, or JSON text
    for a JSON step), ``reject`` or ``rerun``. Records who, when, before and after in the
    ``reviews`` table and sets the result's state; for an item of a ``--map`` step the step's
    list output and state follow. Returns the review's id. Raises `ReviewError` for an unknown
    id, a result that is not waiting for review, or an edit that does not fit the output.
    """
    store = _as_store(store)
    action = _ALIASES.get(decision, decision)
    if action not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}: use approve, edit, reject or rerun")
    row = store.row(int(result_id))
    if row is None:
        raise ReviewError(
            f"no result #{result_id} in {shown(store.path)}: `nbconductor review` lists the queue"
        )
    label = row["step"] if row["item"] is None else f"{row['step']}[{row['item']}]"
    if row["item"] is None and row["items"] is not None:
        raise ReviewError(
            f"result #{result_id} is the whole --map step `{row['step']}`: review its items"
        )
    from ._audit import decide_audit, is_open_audit

    if row["state"] == PASSED and is_open_audit(store, row["id"]):
        before = store.output(row)
        if action == "edit":
            if after is None:
                raise ReviewError(f"an edit of #{result_id} ({label}) needs the edited output")
            after = _coerce(after, row["output_kind"], label)
            action = "approve" if after == before else "edit"
        kept = after if action == "edit" else before
        return decide_audit(store, row, action, before, kept, note)
    if row["state"] != FLAGGED or row["cached"]:
        raise _not_waiting(store, row, label)
    before = store.output(row)
    if action == "edit":
        if after is None:
            raise ReviewError(f"an edit of #{result_id} ({label}) needs the edited output")
        after = _coerce(after, row["output_kind"], label)
        if after == before:
            action = "approve"  # nothing was changed: record what actually happened
    if action != "edit":
        after = before
    state = DECISIONS[action]
    with store.transaction():
        # One transaction: the state flips from flagged exactly once, whoever else (another
        # thread, process or machine) decides the same result at the same moment; an item
        # someone else has open (a live claim) is theirs to decide.
        claimed = store.execute(
            "UPDATE results SET state=? WHERE id=? AND state=? AND NOT EXISTS (SELECT 1 FROM "
            'claims WHERE claims.result_id=? AND claims."user"<>? AND claims.until>?)',
            (state, row["id"], FLAGGED, row["id"], store.user, time.time()),
        )
        if claimed.rowcount == 1:
            if action == "edit":
                store.update_output(row["id"], after, state)
            review_id = store.record_review(row["id"], action, before, after, note)
            _trace.decision(_traceparent(row), row["id"], label, action)
            store.execute("DELETE FROM claims WHERE result_id=?", (row["id"],))
            if row["item"] is not None:
                _update_map_step(store, row, after if action == "edit" else None)
            return review_id
    raise _not_waiting(store, store.row(row["id"]), label)


def _traceparent(row) -> str | None:
    """The step span a result was made in (stored when its run was traced), or None."""
    return row["trace"] if "trace" in row.keys() else None


def _not_waiting(store: Store, row, label: str) -> ReviewError:
    """Why a result cannot be decided: already decided by X at T, being reviewed by Y, or its state."""
    from ._claims import _clock, holder

    held = holder(store, row["id"]) if row["state"] == FLAGGED else None
    if held and held[0] != store.user:
        return ReviewError(
            f"result #{row['id']} ({label}) is being reviewed by {held[0]} until {_clock(held[1])}"
        )
    last = store.query(
        "SELECT * FROM reviews WHERE result_id=? ORDER BY id DESC LIMIT 1", (row["id"],)
    )
    if last:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last[0]["at"]))
        return ReviewError(
            f"result #{row['id']} ({label}) is already decided by {last[0]['user']} at {at} "
            f"({row['state']})"
        )
    return ReviewError(
        f"result #{row['id']} ({label}) is {'cached' if row['cached'] else row['state']}, "
        "not waiting for review"
    )


def _coerce(after: Any, kind: str | None, label: str) -> Any:
    if kind == "bytes":
        raise ReviewError(
            f"{label} is an image: approve, reject or re-run it; it cannot be edited as text"
        )
    if not loadable(kind):
        raise ReviewError(
            f"{label} is a Python object the store keeps only as its repr: approve, reject or "
            "re-run it; it cannot be edited as text"
        )
    if kind in ("json", "pydantic") and isinstance(after, str):
        try:
            return json.loads(after)
        except ValueError as exc:
            raise ReviewError(
                f"the edited output of {label} must be JSON, like the step's output: {exc}"
            ) from None
    if kind == "text" and not isinstance(after, str):
        return str(after)
    return after


def _update_map_step(store: Store, row, edited: Any) -> None:
    """Carry an item's decision to its step-level row: the list output, and the state once
    no item is waiting any more (rejected > edited > approved)."""
    parent = store.row(row["parent_id"]) if row["parent_id"] is not None else None
    if parent is None:  # recorded before items pointed at their step (parent_id)
        parents = store.query(
            "SELECT * FROM results WHERE run_id=? AND step=? AND item IS NULL AND items IS NOT NULL "
            "AND cached=0 AND id>? ORDER BY id LIMIT 1",
            (row["run_id"], row["step"], row["id"]),
        )
        if not parents:
            return
        parent = parents[0]
    items = store.query(
        "SELECT state FROM results WHERE run_id=? AND step=? AND item IS NOT NULL AND cached=0 AND id<?",
        (row["run_id"], row["step"], parent["id"]),
    )
    states = {r["state"] for r in items}
    state = next((s for s in (FLAGGED, REJECTED, EDITED, APPROVED) if s in states), parent["state"])
    output = store.output(parent)
    if edited is not None and isinstance(output, list) and row["item"] < len(output):
        output[row["item"]] = edited
        store.update_output(parent["id"], output, state)
    else:
        store.execute("UPDATE results SET state=? WHERE id=?", (state, parent["id"]))


# the command line ---------------------------------------------------------------------------
def cli_review(
    store: str | None = None,
    *,
    approve: Sequence[int] = (),
    reject: Sequence[int] = (),
    note: str = "",
    assign: str | None = None,
    mine: bool = False,
    take_next: bool = False,
) -> int:
    """``nbconductor review [--store PATH|URL] [--approve ID] [--reject ID] [--note TEXT]
    [--assign USER[,USER…]] [--mine] [--next]``; returns the exit status."""
    from ._claims import assign as assign_items
    from ._claims import next_item

    deciding = bool(approve or reject or assign or take_next)
    path = store
    store = open_store(path, readonly=not deciding)  # listing only reads: a read-only store works
    try:
        if assign:
            counts = assign_items(store, assign.split(","))
            print("assigned: " + ", ".join(f"{n} to {u}" for u, n in counts.items()))
        for action, ids in (("approve", approve), ("reject", reject)):
            for result_id in ids:
                decide(store, result_id, action, note=note or "")
                row = store.row(result_id)
                label = row["step"] if row["item"] is None else f"{row['step']}[{row['item']}]"
                print(f"#{result_id} {label}: {row['state']} by {store.user}")
        if take_next:
            item = next_item(store, store.user, mine=mine)
            if item is None:
                print("nothing to review: every waiting item is decided or being reviewed")
                return 0
            print(queue_table([item]))
            print(f"\nclaimed #{item.id} for {store.user} until {_until(item.claim_until)}")
            return 0
        items = queue(store, mine=mine, user=store.user)
        print(queue_table(items))
        if items:
            print(
                "\napprove or reject: nbconductor review --approve ID / --reject ID [--note TEXT]; "
                "edit in a notebook: %conductor review"
            )
    finally:
        store.close()
    return 0


def _until(at: float | None) -> str:
    from ._claims import _clock

    return _clock(at or time.time())
