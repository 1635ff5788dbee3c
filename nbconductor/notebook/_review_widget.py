"""The review queue in a notebook: one card per flagged output, and what a decision does to
the kernel (the step's output replaced, its downstream steps re-run)."""

from __future__ import annotations

import html
import json
import os
from typing import Any

from .._format import md_table
from .._states import EDITED
from .._summary import preview
from ..store._base import ACCEPTED
from ..store._claims import _clock
from ..store._review import (
    ReviewError,
    ReviewItem,
    _coerce,
    _params_text,
    decide,
    open_store,
    queue,
    queue_table,
)
from ..store._sqlite import Store, Unstored


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
            return current.result_id == item.id or (
                item.cache_key is not None and current.cache_key == item.cache_key
            )
        return (
            item.cache_key in p.memory
            and isinstance(current.output, list)
            and item.item < len(current.output)
        )

    def apply(self, item: ReviewItem, output: Any, edited: bool) -> str:
        """Put the decided output in place and re-run the steps downstream; returns a message."""
        p = self.pipeline
        value = self._typed(p.steps[item.step], output)
        # The next run takes this step from the cache: downstream steps see the decided output.
        self.magics.shell.user_ns[item.step] = p.accept(
            item.step,
            value,
            edited,
            item=item.item,
            cache_key=item.cache_key,
            result_id=item.id,
        )
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
            p.steps[keep] = saved.replace(
                no_cache=False
            )  # so the decided output is used, not regenerated
        try:
            self.magics.run(targets, force=force)
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
                    raise ReviewError(
                        f"the edited output of `{step.name}` does not match {step.schema}: {exc}"
                    ) from None
        if step.kind == "image" and isinstance(output, (bytes, bytearray)):
            from .._types import PNG

            return PNG(output)
        return output


# the widget ---------------------------------------------------------------------------------
class ReviewCard:
    """One flagged output: what it is, why it was flagged, an editor and the four actions."""

    def __init__(self, item: ReviewItem, owner: ReviewWidget):
        import ipywidgets as w

        self.item, self.owner, self.error = item, owner, None
        self.decision: str | None = None
        self.header = w.HTML(self.heading())
        if isinstance(item.output, (bytes, bytearray)):
            self.output = w.Image(
                value=bytes(item.output), format="png", layout=w.Layout(max_width="320px")
            )
        else:
            self.output = w.HTML(_pre(_editable(item.output)))
        self.feedback = w.HTML(f"<b>Feedback</b>: {html.escape(item.feedback or '—')}")
        self.suggestion = w.HTML(f"<b>Suggested edit</b>: {html.escape(item.suggestion or '—')}")
        editable = not isinstance(item.output, (bytes, bytearray))
        self.textarea = w.Textarea(
            value=_editable(item.output) if editable else "",
            disabled=not editable,
            rows=min(16, max(4, _editable(item.output).count("\n") + 2)),
            layout=w.Layout(width="100%"),
        )
        self.note = w.Text(placeholder="note (optional)", layout=w.Layout(width="100%"))
        self.approve_button = w.Button(description="Approve", button_style="success", icon="check")
        self.edit_button = w.Button(
            description="Edit & approve", button_style="info", icon="pencil", disabled=not editable
        )
        self.reject_button = w.Button(description="Reject", button_style="danger", icon="times")
        self.rerun_button = w.Button(
            description="Re-run",
            icon="refresh",
            disabled=owner.kernel is None or not owner.kernel.owns(item),
            tooltip="re-run this step (only for this kernel's current output)",
        )
        self.approve_button.on_click(lambda _: self.act("approve"))
        self.edit_button.on_click(lambda _: self.act("edit"))
        self.reject_button.on_click(lambda _: self.act("reject"))
        self.rerun_button.on_click(lambda _: self.act("rerun"))
        self.buttons = [
            self.approve_button,
            self.edit_button,
            self.reject_button,
            self.rerun_button,
        ]
        self.status = w.HTML("")
        self.status.add_class("nbc-review-status")
        self.out = w.Output()
        self.box = w.VBox(
            [
                self.header,
                self.output,
                self.feedback,
                self.suggestion,
                self.textarea,
                self.note,
                w.HBox(self.buttons),
                self.status,
                self.out,
            ],
            layout=w.Layout(border="1px solid #d0d5dd", padding="8px", margin="0 0 8px 0"),
        )
        self.box.add_class("nbc-review-card")
        self.box.add_class(f"nbc-review-{item.id}")  # a handle for browser tests and styles

    def heading(self) -> str:
        """The card's first lines: what the item is, its score, model, assignee and claim."""
        item, me = self.item, self.owner.store.user
        head = (
            f"<b>{html.escape(item.label)}</b> · result #{item.id} · run {html.escape(item.run_id or '?')}"
            + (f" · score <b>{item.score:.2f}</b>" if item.score is not None else "")
            + (f" · {html.escape(item.model)}" if item.model else "")
            + (f" · assigned to {html.escape(item.assigned_to)}" if item.assigned_to else "")
        )
        if item.claimed_by and item.claimed_by != me and self.decision is None:
            head += f" · <b>being reviewed by {html.escape(item.claimed_by)}</b>"
        elif item.claimed_by == me and self.decision is None and item.claim_until:
            head += f" · <b>open: yours until {_clock(item.claim_until)}</b>"
        params = _params_text(item.params, 200)
        return (
            f"<div>{head}</div><div style='color:#667085'>parameters: {html.escape(params)}</div>"
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
            self.status.value = (
                f"<span style='color:#b42318'>{html.escape(str(self.error), quote=False)}</span>"
            )
            return
        self.status.value = (
            f"<span style='color:#067647'>{html.escape(message, quote=False)}</span>"
        )

    def close(self, decision: str) -> None:
        self.decision = decision
        self.header.value = self.heading()
        for b in self.buttons:
            b.disabled = True
        self.textarea.disabled = self.note.disabled = True


class ReviewWidget:
    """The review queue as cards (``%conductor review``). ``cards[i].approve_button.click()``
    etc. drive it from Python too; ``_repr_mimebundle_`` adds a Markdown/text fallback."""

    #: what an accepted decision says when this kernel does not hold the output
    recorded_note = " (recorded in the store; not this kernel's current output, so nothing re-ran)"

    def __init__(
        self, store: Store, items: list[ReviewItem] | None = None, kernel: KernelHooks | None = None
    ):
        import ipywidgets as w

        self.store, self.kernel = store, kernel
        self.items = queue(store) if items is None else items
        self.cards = [ReviewCard(item, self) for item in self.items]
        self.header = w.HTML(self._title())
        self.header.add_class("nbc-review-title")
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
                raise ReviewError(
                    f"{item.label} (result #{item.id}) is not this kernel's current output: "
                    "re-run it where it ran, e.g. nbconductor run / batch --resume"
                )
            message = kernel.rerun(item)
            decide(self.store, item.id, "rerun", note=card.note.value)
            card.close("rerun")
            self.header.value = self._title()
            return f"superseded by a re-run: {message}"
        after = card.textarea.value if action == "edit" else None
        if (
            after is not None and owned
        ):  # a kernel-typed edit that does not validate is refused before recording
            kernel._typed(
                kernel.pipeline.steps[item.step], _coerce(after, item.output_kind, item.label)
            )
        decide(self.store, item.id, action, after, note=card.note.value)
        row = self.store.row(item.id)
        card.close(row["state"])
        self.header.value = self._title()
        message = f"{row['state']} by {self.store.user}"
        if row["state"] in ACCEPTED and owned:
            output = self.store.output(row)
            if isinstance(
                output, Unstored
            ):  # the store has only its repr: the kernel holds the value
                held = kernel.pipeline.results[item.step].output
                output = held if item.item is None else held[item.item]
            message += "; " + kernel.apply(item, output, edited=row["state"] == EDITED)
        elif row["state"] in ACCEPTED:
            message += self.recorded_note
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
    header = ["id", "step", "run", "score", "feedback", "suggested edit", "output"]
    rows = [
        [
            f"#{i.id}",
            i.label,
            i.run_id,
            "—" if i.score is None else f"{i.score:.2f}",
            preview(i.feedback, 80),
            preview(i.suggestion, 60),
            preview(i.output, 60),
        ]
        for i in items
    ]
    return "\n".join(["**Review queue**", "", *md_table(header, rows)])


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
    return (
        "<pre style='white-space:pre-wrap;max-height:24em;overflow:auto;background:#f9fafb;"
        f"padding:6px'>{html.escape(text)}</pre>"
    )


def review_widget(magics, store_path: str | os.PathLike | None = None) -> ReviewWidget:
    """``%conductor review [--store PATH]``: the queue of the kernel's store (or another).

    Decisions on this kernel's current outputs also replace them and re-run downstream steps.
    """
    own = magics.pipeline.store
    store = own if store_path is None else open_store(store_path, readonly=None)
    same = store is own or _same_file(store.path, own.path)
    return ReviewWidget(store, kernel=KernelHooks(magics) if same else None)


def _same_file(a: str, b: str) -> bool:
    if ":memory:" in (a, b):
        return False
    if "://" in a or "://" in b:  # a database server: the same URL (without password)
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
