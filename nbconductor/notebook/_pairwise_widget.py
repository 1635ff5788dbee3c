"""``%conductor review --pairwise EXPERIMENT``: blind pairwise review of a compare in a notebook.

Two variants' outputs for one brief, side by side, in random order, the names hidden until a
choice is made (A, B, tie, both bad); each choice is recorded with who and when
(`nbconductor._preferences`), and the compare's figures then show the people's win rate next
to the judges'.
"""

from __future__ import annotations

import html

from IPython.display import Markdown, display

from .._compare import load_comparison
from .._errors import OptionError
from .._preferences import pending
from ..store._experiments import CHOICES, experiments


class PairwiseReview:
    """The widget: ``choose("A")`` is what a click does (tests drive it the same way)."""

    def __init__(self, store, comparison, tasks):
        import ipywidgets as w

        self.store, self.comparison, self.tasks = store, comparison, list(tasks)
        self.brief, self.status = w.HTML(), w.HTML()
        self.a, self.b = w.HTML(layout={"width": "50%"}), w.HTML(layout={"width": "50%"})
        self.buttons = []
        for choice in CHOICES:
            label = {"A": "A is better", "B": "B is better"}.get(choice, choice)
            button = w.Button(description=label)
            button.on_click(lambda _b, c=choice: self.choose(c))
            self.buttons.append(button)
        self.box = w.VBox([self.brief, w.HBox([self.a, self.b]), w.HBox(self.buttons), self.status])
        self._show()

    @property
    def current(self):
        return self.tasks[0] if self.tasks else None

    def _show(self) -> None:
        task = self.current
        if task is None:
            self.brief.value = "<b>nothing left to compare</b>"
            self.a.value = self.b.value = ""
            for button in self.buttons:
                button.disabled = True
            return
        left = len(self.tasks)
        self.brief.value = f"<b>brief</b> ({left} left): {html.escape(task.brief)}"
        self.a.value = f"<b>A</b><pre style='white-space:pre-wrap'>{html.escape(task.a)}</pre>"
        self.b.value = f"<b>B</b><pre style='white-space:pre-wrap'>{html.escape(task.b)}</pre>"

    def choose(self, choice: str) -> str:
        """Record ``choice`` for the pair shown, reveal the names, show the next pair."""
        task = self.current
        if task is None:
            raise OptionError("nothing left to compare in this experiment")
        winner = task.decide(self.store, choice)
        a, b = task.names()
        self.tasks.pop(0)
        self.status.value = html.escape(
            f"A was {a}, B was {b}: recorded {winner} (by {self.store.user})"
            + self._figures(task.variant)
        )
        self._show()
        return winner

    def _figures(self, variant: str) -> str:
        fresh = load_comparison(self.store, self.comparison.experiment_id)
        human = fresh.verdicts().get(variant, {}).get("human")
        if not human:
            return ""
        return (
            f" · people so far: {variant} win rate {human['win_rate']:.0%} over {human['decided']}"
        )


def pairwise_review(m, experiment: str, seed: int | None = None):
    """Show the blind review of ``experiment`` (an id or ``latest``); returns the widget."""
    store = m.pipeline.store
    if experiment == "latest":
        found = experiments(store, limit=1)
        if not found:
            raise OptionError("no experiment in the store yet: run %conductor compare first")
        experiment = found[0]["id"]
    comparison = load_comparison(store, experiment)
    tasks = pending(comparison, store, seed)
    if not tasks:
        display(Markdown(f"*nothing left to compare in experiment `{experiment}`*"))
        return None
    try:
        review = PairwiseReview(store, comparison, tasks)
    except ImportError:
        display(Markdown("*the blind review needs ipywidgets: pip install 'nbconductor[lab]'*"))
        return None
    display(review.box)
    return review
