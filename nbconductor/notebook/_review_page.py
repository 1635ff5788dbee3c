"""The review page of ``nbconductor review --serve``: the queue's cards for one named reviewer.

Voilà gives every browser page its own kernel, all started by the one server process, so
``$NBCONDUCTOR_USER`` cannot tell two reviewers apart. The page asks instead: the reviewer's
name comes from the URL (``…/?token=…&reviewer=ana``), else from a name box on the page, and
is who decides (``reviews."user"``) and who claims. On top of `ReviewWidget` the page:

- opens the first item nobody else has open (`next_item`: it claims it for the reviewer) and
  puts its card first; another reviewer's page shows that card "being reviewed by ana" and
  opens the next free one;
- after each decision, opens the next free item; **Skip** gives the open item back and opens
  the next; **Refresh** re-reads who has what open (and closes cards decided elsewhere);
- a decision on a card someone else decided meanwhile gets the one-line "already decided by
  X at T", and the card closes;
- when the page's kernel stops (the reviewer left), its open claim is given back;
- under the queue, the blind pairwise review of the store's latest experiment, if pairs are left.

Nothing re-runs: there is no author's kernel here (the Re-run button is hidden).
"""

from __future__ import annotations

import atexit
import html
import os
import re
from urllib.parse import parse_qs

from .._errors import OptionError
from ..store._base import FLAGGED
from ..store._claims import _clock, claim, next_item, release
from ..store._review import ReviewError, ReviewItem, queue, queue_table
from ..store._sqlite import Store
from ._pairwise_widget import PairwiseReview
from ._review_widget import ReviewCard, ReviewWidget, _queue_markdown

#: what a reviewer's name may be: it is shown on pages and stored with each decision
_NAME = re.compile(r"[\w.@+-]{1,64}")


def reviewer_from_query(query: str | None = None) -> str | None:
    """The ``reviewer`` parameter of the page's URL (Voilà's ``$QUERY_STRING``), or None."""
    values = parse_qs(os.environ.get("QUERY_STRING", "") if query is None else query)
    name = (values.get("reviewer") or [""])[0].strip()
    return name or None


def check_name(name: str) -> str:
    """``name`` stripped; raises `ReviewError` unless it is 1-64 letters, digits or ``._@+-``."""
    name = (name or "").strip()
    if not _NAME.fullmatch(name):
        raise ReviewError(
            "a reviewer name is 1-64 letters, digits or . _ @ + - (e.g. ana or ana.lopez)"
        )
    return name


#: the open card stands out (ipywidgets' HTML keeps a <style> element as it is)
_STYLE = "<style>.nbc-review-open{border:2px solid #1570ef !important}</style>"


class ServedReview(ReviewWidget):
    """`ReviewWidget` for one named reviewer among several: claims, next item, skip, refresh."""

    recorded_note = " (in the store: the author's next run uses it)"

    def __init__(self, store: Store, user: str):
        import ipywidgets as w

        store.user = check_name(user)
        super().__init__(store)
        for card in self.cards:
            card.rerun_button.layout.display = "none"  # no author's kernel to re-run in
        self.open: ReviewCard | None = None
        self.whoami = w.HTML()
        self.whoami.add_class("nbc-review-whoami")
        self.skip_button = w.Button(
            description="Skip",
            icon="forward",
            tooltip="give this item back and open the next free one",
        )
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.skip_button.on_click(lambda _: self.skip())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.toolbar = w.HBox([self.whoami, self.skip_button, self.refresh_button, w.HTML(_STYLE)])
        self.box.children = [self.header, self.toolbar, *(c.box for c in self.cards)]
        atexit.register(self.leave)
        self.open_next()

    @property
    def user(self) -> str:
        return self.store.user

    def act(self, card: ReviewCard, action: str) -> str:
        """Decide ``card``'s item, then open the next free one; a card decided elsewhere closes."""
        try:
            message = super().act(card, action)
        except ReviewError:
            row = self.store.row(card.item.id)
            if row is not None and row["state"] != FLAGGED:
                card.close(row["state"])  # decided by someone else: nothing left to do here
                if card is self.open:
                    self.open = None
            self.refresh()
            raise
        if card is self.open:
            self.open = None
        self.open_next()
        return message

    def open_next(self, skip: int | None = None) -> ReviewItem | None:
        """Claim the next item nobody else has open (another than ``skip``, which is given
        back once there is one) and show its card first; returns it, or None."""
        if skip is None:
            item = next_item(self.store, self.user)
        else:
            item = self._claim_other(skip)
            if item is not None:
                release(self.store, skip, self.user)
        if item is not None:
            self.open = self._card_for(item)
        elif skip is None:
            self.open = None
        self.refresh()  # everyone's claims as they are now, the open card first
        return item

    def skip(self) -> None:
        """Give the open item back for the next free one (it stays open if there is none)."""
        self.open_next(skip=self.open.item.id if self.open is not None else None)

    def refresh(self) -> None:
        """Re-read the queue: who has each item open (renewing one's own claim); cards
        decided elsewhere close; items flagged since the page opened get a card."""
        if self.open is not None and self.open.decision is None:
            try:  # still reviewing it: keep it for another claim period
                self.open.item.claim_until = claim(self.store, self.open.item.id, self.user)
            except ReviewError:
                self.open = None  # the claim lapsed and someone else took it
        fresh = {i.id: i for i in queue(self.store)}
        for card in self.cards:
            if card.decision is not None:
                continue
            now = fresh.get(card.item.id)
            if now is None:
                row = self.store.row(card.item.id)
                card.close(row["state"] if row is not None else "gone")
                card.status.value = f"<span style='color:#667085'>{_elsewhere(self, card)}</span>"
                if card is self.open:
                    self.open = None
                continue
            card.item.claimed_by, card.item.claim_until = now.claimed_by, now.claim_until
            card.header.value = card.heading()
        known = {c.item.id for c in self.cards}
        for item in fresh.values():
            if item.id not in known:
                self._card_for(item)
        self._arrange()

    def leave(self) -> None:
        """Give back the open item's claim (the page's kernel is stopping)."""
        atexit.unregister(self.leave)
        if self.open is not None and self.open.decision is None:
            try:
                release(self.store, self.open.item.id, self.user)
            except Exception:  # noqa: BLE001 - at exit, a closed store has nothing to give back
                pass

    # -- helpers ------------------------------------------------------------------------------
    def _claim_other(self, skip: int) -> ReviewItem | None:
        for item in queue(self.store):
            if item.id == skip or item.claimed_by not in (None, self.user):
                continue
            try:
                item.claim_until = claim(self.store, item.id, self.user)
            except ReviewError:
                continue  # taken a moment ago
            item.claimed_by = self.user
            return item
        return None

    def _card_for(self, item: ReviewItem) -> ReviewCard:
        try:
            card = self.card(item.id)
        except KeyError:
            card = ReviewCard(item, self)
            card.rerun_button.layout.display = "none"
            self.items.append(item)
            self.cards.append(card)
        card.item.claimed_by, card.item.claim_until = item.claimed_by, item.claim_until
        card.header.value = card.heading()
        return card

    def _arrange(self) -> None:
        """The open card first, then the waiting ones, then the decided ones."""
        waiting = [c for c in self.cards if c.decision is None and c is not self.open]
        done = [c for c in self.cards if c.decision is not None]
        first = [self.open] if self.open is not None else []
        self.box.children = [self.header, self.toolbar, *(c.box for c in first + waiting + done)]
        for card in self.cards:
            if card is self.open:
                card.box.add_class("nbc-review-open")
            else:
                card.box.remove_class("nbc-review-open")
        self.header.value = self._title()
        mine = (
            f" · open: <b>#{self.open.item.id} {html.escape(self.open.item.label)}</b> until "
            f"{_clock(self.open.item.claim_until)}"
            if self.open is not None and self.open.item.claim_until
            else " · nothing free to open"
        )
        self.whoami.value = f"reviewing as <b>{html.escape(self.user)}</b>{mine}"
        self.skip_button.disabled = self.open is None


def _elsewhere(page: ServedReview, card: ReviewCard) -> str:
    last = page.store.query(
        "SELECT * FROM reviews WHERE result_id=? ORDER BY id DESC LIMIT 1", (card.item.id,)
    )
    if not last:
        return f"no longer waiting ({card.decision})"
    return f"decided by {html.escape(last[0]['user'])} ({card.decision})"


class ServedPairwise(PairwiseReview):
    """The blind pairwise review on the page: a pair another reviewer decided meanwhile is
    one line, and the next pair shows."""

    def choose(self, choice: str) -> str:
        try:
            return super().choose(choice)
        except OptionError as exc:
            if self.tasks:
                self.tasks.pop(0)
            self._show()
            self.status.value = f"<span style='color:#b42318'>{html.escape(str(exc))}</span>"
            return ""


def pairwise_section(store: Store) -> ServedPairwise | None:
    """The blind pairwise review of the store's latest experiment, if pairs are left; or None."""
    import ipywidgets as w

    from .._compare import load_comparison
    from .._preferences import pending
    from ..store._experiments import experiments

    found = experiments(store, limit=1)
    if not found:
        return None
    comparison = load_comparison(store, found[0]["id"])
    tasks = pending(comparison, store)
    if not tasks:
        return None
    section = ServedPairwise(store, comparison, tasks)
    title = w.HTML(
        f"<b>Blind comparison</b> · experiment {html.escape(found[0]['id'])} "
        f"(step {html.escape(found[0]['step'])}): which output is better? The variants' names "
        "show once you have chosen."
    )
    section.box.children = [title, *section.box.children]
    section.box.add_class("nbc-pairwise")
    return section


class ReviewPage:
    """What the served notebook shows: a name box until the reviewer is known, then the queue."""

    def __init__(self, store: Store, reviewer: str | None = None):
        import ipywidgets as w

        self.store, self.review, self.pairwise = store, None, None
        self.name = w.Text(placeholder="your name", description="Reviewer")
        self.start_button = w.Button(description="Start reviewing", button_style="primary")
        self.status = w.HTML("")
        self.start_button.on_click(lambda _: self.start(self.name.value))
        self.box = w.VBox(
            [
                w.HTML("<b>Review queue</b>: who is reviewing? Your name goes with each decision."),
                w.HBox([self.name, self.start_button]),
                self.status,
            ]
        )
        if reviewer:
            self.start(reviewer)

    def start(self, name: str) -> ServedReview | None:
        """Show the queue for reviewer ``name``; a bad name is one line on the page."""
        try:
            self.review = ServedReview(self.store, name)
        except ReviewError as exc:
            self.status.value = f"<span style='color:#b42318'>{html.escape(str(exc))}</span>"
            return None
        pairwise = pairwise_section(self.store)
        self.box.children = [self.review.box] + ([pairwise.box] if pairwise else [])
        self.pairwise = pairwise
        return self.review

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = self.box._repr_mimebundle_(**kwargs) or {}
        pending = queue(self.store)
        bundle["text/plain"] = queue_table(pending)
        bundle["text/markdown"] = _queue_markdown(pending)
        return bundle
