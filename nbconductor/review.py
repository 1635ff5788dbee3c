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

import argparse
import html
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._errors import ConductorError
from ._store import Store, decode_output, default_store_path
from ._summary import preview, text_table

#: decision -> the state the result takes
DECISIONS = {"approve": "approved", "edit": "edited", "reject": "rejected", "rerun": "rejected"}
_ALIASES = {"approved": "approve", "edited": "edit", "rejected": "reject", "re-run": "rerun"}


class ReviewError(ConductorError):
    """A review action cannot be done (unknown id, already decided, an edit that does not parse)."""


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

    @property
    def label(self) -> str:
        """``draft``, or ``translate[2]`` for one item of a ``--map`` step."""
        return self.step if self.item is None else f"{self.step}[{self.item}]"


def open_store(path: str | os.PathLike | None) -> Store:
    """The store at ``path`` (default: ``$NBCONDUCTOR_STORE`` or ``.nbconductor/store.sqlite``).

    Raises `ReviewError` when there is no store there, rather than creating an empty one.
    """
    where = Path(path) if path else default_store_path()
    if not where.is_file():
        raise ReviewError(f"no run store at {where}: run a pipeline first, or pass --store PATH")
    return Store(where)


def _as_store(store_or_path: Store | str | os.PathLike | None) -> Store:
    return store_or_path if isinstance(store_or_path, Store) else open_store(store_or_path)


# the queue ----------------------------------------------------------------------------------
_QUEUE_SQL = """
SELECT r.*, runs.params AS run_params FROM results r LEFT JOIN runs ON runs.id = r.run_id
WHERE r.state = 'flagged' AND r.cached = 0 AND NOT (r.item IS NULL AND r.items IS NOT NULL)
ORDER BY r.id
"""


def queue(store: Store | str | os.PathLike | None = None) -> list[ReviewItem]:
    """Every flagged output not yet decided, oldest first.

    A ``--map`` step is reviewed item by item (its step-level row follows its items).
    """
    return [_item(row) for row in _as_store(store).query(_QUEUE_SQL)]


def _item(row) -> ReviewItem:
    gates = json.loads(row["gates"] or "[]")
    failed = [g for g in gates if not g.get("passed")]
    scores = [g["score"] for g in failed if g.get("score") is not None and g.get("name") == "rubric"]
    scores = scores or [g["score"] for g in failed if g.get("score") is not None]
    feedback = "; ".join(f"{g['name']}: {g.get('feedback') or 'failed'}" for g in failed)
    suggestion = next((g["suggestion"] for g in failed if g.get("suggestion")), None)
    try:
        params = json.loads(row["run_params"] or "{}")
    except ValueError:
        params = {}
    return ReviewItem(
        id=row["id"], run_id=row["run_id"], step=row["step"], item=row["item"], params=params,
        output=decode_output(row["output_kind"], row["output"]), output_kind=row["output_kind"],
        score=min(scores) if scores else None, feedback=feedback or (row["error"] or ""),
        suggestion=suggestion, model=row["model"], attempts=row["attempts"] or 0,
        notebook=row["notebook"], cache_key=row["cache_key"], ended=row["ended"], gates=gates,
    )


def queue_table(items: list[ReviewItem], width: int = 48) -> str:
    """The queue as a fixed-width table, then each item's feedback and suggested edit."""
    if not items:
        return "nothing to review: no flagged outputs are waiting"
    rows = [[f"#{i.id}", i.label, i.run_id, _params_text(i.params, 30),
             "—" if i.score is None else f"{i.score:.2f}", preview(i.output, width)] for i in items]
    lines = [text_table(["id", "step", "run", "parameters", "score", "output"], rows), ""]
    for i in items:
        lines.append(f"#{i.id} {i.label}: {i.feedback or 'no feedback'}")
        if i.suggestion:
            lines.append(f"    suggested edit: {i.suggestion}")
    return "\n".join(lines)


def _params_text(params: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={preview(v, 24)}" for k, v in params.items()) or "—"
    return text if len(text) <= width else text[: width - 1] + "…"


# decisions ----------------------------------------------------------------------------------
def decide(store: Store | str | os.PathLike, result_id: int, decision: str, after: Any = None,
           note: str = "") -> int:
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
    rows = store.query("SELECT * FROM results WHERE id=?", (int(result_id),))
    if not rows:
        raise ReviewError(f"no result #{result_id} in {store.path}: `nbconductor review` lists the queue")
    row = rows[0]
    label = row["step"] if row["item"] is None else f"{row['step']}[{row['item']}]"
    if row["item"] is None and row["items"] is not None:
        raise ReviewError(f"result #{result_id} is the whole --map step `{row['step']}`: review its items")
    if row["state"] != "flagged" or row["cached"]:
        last = store.query("SELECT * FROM reviews WHERE result_id=? ORDER BY id DESC LIMIT 1", (row["id"],))
        why = f" ({last[0]['decision']} by {last[0]['user']})" if last else ""
        raise ReviewError(f"result #{result_id} ({label}) is {'cached' if row['cached'] else row['state']}"
                          f"{why}, not waiting for review")
    before = decode_output(row["output_kind"], row["output"])
    if action == "edit":
        if after is None:
            raise ReviewError(f"an edit of #{result_id} ({label}) needs the edited output")
        after = _coerce(after, row["output_kind"], label)
        if after == before:
            action = "approve"  # nothing was changed: record what actually happened
    if action != "edit":
        after = before
    state = DECISIONS[action]
    with store._lock:
        # Claim the result atomically: another reviewer (another process) may decide it meanwhile.
        claimed = store.execute("UPDATE results SET state=? WHERE id=? AND state='flagged'", (state, row["id"]))
        if claimed.rowcount != 1:
            raise ReviewError(f"result #{result_id} ({label}) was decided by someone else meanwhile")
        if action == "edit":
            store.update_output(row["id"], after, state)
        review_id = store.record_review(row["id"], action, before, after, note)
        if row["item"] is not None:
            _update_map_step(store, row, after if action == "edit" else None)
    return review_id


def _coerce(after: Any, kind: str | None, label: str) -> Any:
    if kind == "bytes":
        raise ReviewError(f"{label} is an image: approve, reject or re-run it; it cannot be edited as text")
    if kind in ("json", "pydantic") and isinstance(after, str):
        try:
            return json.loads(after)
        except ValueError as exc:
            raise ReviewError(f"the edited output of {label} must be JSON, like the step's output: {exc}") from None
    if kind == "text" and not isinstance(after, str):
        return str(after)
    return after


def _update_map_step(store: Store, row, edited: Any) -> None:
    """Carry an item's decision to its step-level row: the list output, and the state once
    no item is waiting any more (rejected > edited > approved)."""
    parents = store.query(
        "SELECT * FROM results WHERE run_id=? AND step=? AND item IS NULL AND items IS NOT NULL AND cached=0 "
        "AND id>? ORDER BY id LIMIT 1", (row["run_id"], row["step"], row["id"]))
    if not parents:
        return
    parent = parents[0]
    items = store.query(
        "SELECT state FROM results WHERE run_id=? AND step=? AND item IS NOT NULL AND cached=0 AND id<?",
        (row["run_id"], row["step"], parent["id"]))
    states = {r["state"] for r in items}
    state = next((s for s in ("flagged", "rejected", "edited", "approved") if s in states), parent["state"])
    output = decode_output(parent["output_kind"], parent["output"])
    if edited is not None and isinstance(output, list) and row["item"] < len(output):
        output[row["item"]] = edited
        store.update_output(parent["id"], output, state)
    else:
        store.execute("UPDATE results SET state=? WHERE id=?", (state, parent["id"]))


def reviews(store: Store | str | os.PathLike, result_id: int | None = None) -> list[dict]:
    """Recorded decisions (newest last), optionally for one result."""
    store = _as_store(store)
    sql, args = "SELECT * FROM reviews", ()
    if result_id is not None:
        sql, args = sql + " WHERE result_id=?", (result_id,)
    return [dict(r) for r in store.query(sql + " ORDER BY id", args)]


# the kernel side ----------------------------------------------------------------------------
class KernelHooks:
    """What a decision does in a live kernel: replace the step's output, re-run downstream."""

    def __init__(self, magics):
        self.magics = magics

    @property
    def pipeline(self):
        return self.magics.pipeline

    def owns(self, item: ReviewItem) -> bool:
        """Whether ``item`` is the output this kernel currently holds for its step."""
        p = self.pipeline
        current = p.results.get(item.step)
        if item.step not in p.steps or current is None:
            return False
        if item.item is None:
            return current.result_id == item.id or (item.cache_key is not None and current.cache_key == item.cache_key)
        return (item.cache_key in p.memory and isinstance(current.output, list)
                and item.item < len(current.output))

    def apply(self, item: ReviewItem, output: Any, edited: bool) -> str:
        """Put the decided output in place and re-run the steps downstream; returns a message."""
        p = self.pipeline
        step = p.steps[item.step]
        value = self._typed(step, output)
        if item.cache_key:
            hit = p.memory.get(item.cache_key) or p.store.result(item.id)
            if hit is not None:
                # The next run takes this step from the cache: downstream steps see the decided output.
                p.memory[item.cache_key] = replace(hit, output=value, state="edited" if edited else "approved")
        current = p.results[item.step]
        if item.item is None:
            current.output = value
        else:
            current.output = [*current.output]
            current.output[item.item] = value
        self.magics.shell.user_ns[item.step] = current.output
        downstream = self._downstream(item.step)
        if not downstream:
            return "no downstream steps have run"
        self._run(downstream, force=set(downstream) if edited else False, keep=item.step)
        return f"re-ran {', '.join(downstream)}"

    def rerun(self, item: ReviewItem) -> str:
        targets = sorted({item.step, *self._downstream(item.step)})
        self._run(targets, force={item.step})
        return f"re-ran {', '.join(targets)}"

    def _downstream(self, step: str) -> list[str]:
        # Only steps that have run in this kernel: a --lazy step nobody ran yet stays unrun.
        p = self.pipeline
        return sorted(n for n in p.graph.downstream([step]) if n in p.results)

    def _run(self, targets: list[str], force, keep: str | None = None) -> None:
        p = self.pipeline
        saved = p.steps.get(keep) if keep else None
        if saved is not None and saved.no_cache:
            p.steps[keep] = saved.replace(no_cache=False)  # so the decided output is used, not regenerated
        try:
            self.magics._run(targets, force=force)
        finally:
            if saved is not None:
                p.steps[keep] = saved

    def _typed(self, step, output: Any) -> Any:
        """The decided output as the step's own type: a pydantic model for ``--schema``, PNG for images."""
        if step.schema and isinstance(output, dict):
            cls = self.pipeline.namespace.get(step.schema)
            if hasattr(cls, "model_validate"):
                try:
                    return cls.model_validate(output)
                except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError
                    raise ReviewError(f"the edited output of `{step.name}` does not match {step.schema}: {exc}") from None
        if step.kind == "image" and isinstance(output, (bytes, bytearray)):
            from ._types import PNG

            return PNG(output)
        return output


# the widget ---------------------------------------------------------------------------------
class ReviewCard:
    """One flagged output: what it is, why it was flagged, an editor and the four actions."""

    def __init__(self, item: ReviewItem, owner: ReviewWidget):
        import ipywidgets as w

        self.item, self.owner, self.error = item, owner, None
        self.decision: str | None = None
        head = (f"<b>{html.escape(item.label)}</b> · result #{item.id} · run {html.escape(item.run_id or '?')}"
                + (f" · score <b>{item.score:.2f}</b>" if item.score is not None else "")
                + (f" · {html.escape(item.model)}" if item.model else ""))
        params = _params_text(item.params, 200)
        self.header = w.HTML(f"<div>{head}</div><div style='color:#667085'>parameters: {html.escape(params)}</div>")
        if isinstance(item.output, (bytes, bytearray)):
            self.output = w.Image(value=bytes(item.output), format="png", layout=w.Layout(max_width="320px"))
        else:
            self.output = w.HTML(_pre(_editable(item.output)))
        self.feedback = w.HTML(f"<b>Feedback</b>: {html.escape(item.feedback or '—')}")
        self.suggestion = w.HTML(f"<b>Suggested edit</b>: {html.escape(item.suggestion or '—')}")
        editable = not isinstance(item.output, (bytes, bytearray))
        self.textarea = w.Textarea(value=_editable(item.output) if editable else "", disabled=not editable,
                                   rows=min(16, max(4, _editable(item.output).count("\n") + 2)),
                                   layout=w.Layout(width="100%"))
        self.note = w.Text(placeholder="note (optional)", layout=w.Layout(width="100%"))
        self.approve_button = w.Button(description="Approve", button_style="success", icon="check")
        self.edit_button = w.Button(description="Edit & approve", button_style="info", icon="pencil",
                                    disabled=not editable)
        self.reject_button = w.Button(description="Reject", button_style="danger", icon="times")
        self.rerun_button = w.Button(description="Re-run", icon="refresh",
                                     disabled=owner.kernel is None or not owner.kernel.owns(item),
                                     tooltip="re-run this step (only for this kernel's current output)")
        self.approve_button.on_click(lambda _: self.act("approve"))
        self.edit_button.on_click(lambda _: self.act("edit"))
        self.reject_button.on_click(lambda _: self.act("reject"))
        self.rerun_button.on_click(lambda _: self.act("rerun"))
        self.buttons = [self.approve_button, self.edit_button, self.reject_button, self.rerun_button]
        self.status = w.HTML("")
        self.out = w.Output()
        self.box = w.VBox(
            [self.header, self.output, self.feedback, self.suggestion, self.textarea, self.note,
             w.HBox(self.buttons), self.status, self.out],
            layout=w.Layout(border="1px solid #d0d5dd", padding="8px", margin="0 0 8px 0"),
        )

    def act(self, action: str) -> None:
        """Carry out a button's action; failures are shown on the card (and kept in ``.error``)."""
        self.error = None
        message = ""
        with self.out:  # the Output widget would swallow an exception: catch it inside
            try:
                message = self.owner.act(self, action)
            except Exception as exc:  # noqa: BLE001 - a widget callback has nowhere else to report
                self.error = exc
        if self.error is not None:
            self.status.value = f"<span style='color:#b42318'>{html.escape(str(self.error), quote=False)}</span>"
            return
        self.status.value = f"<span style='color:#067647'>{html.escape(message, quote=False)}</span>"

    def close(self, decision: str) -> None:
        self.decision = decision
        for b in self.buttons:
            b.disabled = True
        self.textarea.disabled = self.note.disabled = True


class ReviewWidget:
    """The review queue as cards (``%conductor review``). ``cards[i].approve_button.click()``
    etc. drive it from Python too; ``_repr_mimebundle_`` adds a Markdown/text fallback."""

    def __init__(self, store: Store, items: list[ReviewItem] | None = None, kernel: KernelHooks | None = None):
        import ipywidgets as w

        self.store, self.kernel = store, kernel
        self.items = queue(store) if items is None else items
        self.cards = [ReviewCard(item, self) for item in self.items]
        self.header = w.HTML(self._title())
        self.box = w.VBox([self.header, *(c.box for c in self.cards)])

    def _title(self) -> str:
        waiting = sum(1 for c in getattr(self, "cards", []) if c.decision is None)
        if not self.items:
            return f"<b>Review queue</b>: nothing to review in {html.escape(self.store.path)}"
        return f"<b>Review queue</b>: {waiting} of {len(self.items)} flagged outputs waiting · {html.escape(self.store.path)}"

    def card(self, result_id: int) -> ReviewCard:
        """The card of result ``result_id``; raises KeyError."""
        for c in self.cards:
            if c.item.id == result_id:
                return c
        raise KeyError(result_id)

    def act(self, card: ReviewCard, action: str) -> str:
        item, kernel = card.item, self.kernel
        owned = kernel is not None and kernel.owns(item)
        if action == "rerun":
            if not owned:
                raise ReviewError(f"{item.label} (result #{item.id}) is not this kernel's current output: "
                                  "re-run it where it ran, e.g. nbconductor run / batch --resume")
            message = kernel.rerun(item)
            decide(self.store, item.id, "rerun", note=card.note.value)
            card.close("rerun")
            self.header.value = self._title()
            return f"superseded by a re-run: {message}"
        after = card.textarea.value if action == "edit" else None
        if after is not None and owned:  # a kernel-typed edit that does not validate is refused before recording
            kernel._typed(kernel.pipeline.steps[item.step], _coerce(after, item.output_kind, item.label))
        decide(self.store, item.id, action, after, note=card.note.value)
        row = self.store.query("SELECT state, output_kind, output FROM results WHERE id=?", (item.id,))[0]
        card.close(row["state"])
        self.header.value = self._title()
        message = f"{row['state']} by {self.store.user}"
        if row["state"] in ("approved", "edited") and owned:
            output = decode_output(row["output_kind"], row["output"])
            message += "; " + kernel.apply(item, output, edited=row["state"] == "edited")
        elif row["state"] in ("approved", "edited"):
            message += " (recorded in the store; not this kernel's current output, so nothing re-ran)"
        return message

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = self.box._repr_mimebundle_(**kwargs) or {}
        pending = [c.item for c in self.cards if c.decision is None]
        bundle["text/plain"] = queue_table(pending)
        bundle["text/markdown"] = _queue_markdown(pending)
        return bundle


def _queue_markdown(items: list[ReviewItem]) -> str:
    if not items:
        return "**Review queue**: nothing to review"
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["**Review queue**", "", "| id | step | run | score | feedback | suggested edit | output |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| #{i.id} | {esc(i.label)} | {esc(i.run_id)} | {'—' if i.score is None else f'{i.score:.2f}'} | "
              f"{esc(preview(i.feedback, 80))} | {esc(preview(i.suggestion, 60))} | {esc(preview(i.output, 60))} |"
              for i in items]
    return "\n".join(lines)


def _editable(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return ""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _pre(text: str) -> str:
    return ("<pre style='white-space:pre-wrap;max-height:24em;overflow:auto;background:#f9fafb;"
            f"padding:6px'>{html.escape(text)}</pre>")


def review_widget(magics, store_path: str | os.PathLike | None = None) -> ReviewWidget:
    """``%conductor review [--store PATH]``: the queue of the kernel's store (or another).

    Decisions on this kernel's current outputs also replace them and re-run downstream steps.
    """
    own = magics.pipeline.store
    store = own if store_path is None else open_store(store_path)
    same = store is own or _same_file(store.path, own.path)
    return ReviewWidget(store, kernel=KernelHooks(magics) if same else None)


def _same_file(a: str, b: str) -> bool:
    if ":memory:" in (a, b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# the command line ---------------------------------------------------------------------------
def cli_review(args: argparse.Namespace) -> int:
    """``nbconductor review [--store PATH] [--approve ID] [--reject ID] [--note TEXT]``."""
    store = open_store(args.store)
    try:
        for action, ids in (("approve", args.approve or []), ("reject", args.reject or [])):
            for result_id in ids:
                decide(store, result_id, action, note=args.note or "")
                row = store.query("SELECT step, item, state FROM results WHERE id=?", (result_id,))[0]
                label = row["step"] if row["item"] is None else f"{row['step']}[{row['item']}]"
                print(f"#{result_id} {label}: {row['state']}")
        items = queue(store)
        print(queue_table(items))
        if items:
            print("\napprove or reject: nbconductor review --approve ID / --reject ID [--note TEXT]; "
                  "edit in a notebook: %conductor review")
    finally:
        store.close()
    return 0
