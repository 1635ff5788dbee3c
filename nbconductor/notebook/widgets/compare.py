"""The compare widget (anywidget): what ``%conductor compare`` shows in a live kernel.

``CompareWidget(comparison, store)`` draws the figures table (the best value per column
marked), each variant's verdict sentences and the grid — a row per brief, a column per
variant, the row's winner marked. Clicking a cell sets ``selected`` (``"ROW:VARIANT"``) from
the browser; ``detail`` then carries that cell's output in full with its score and gate
results (outputs stay in Python until asked for). When the compare has a pairwise judge or
people's preferences, each row offers a pick: it is recorded in the store as a person's
preference (`nbconductor._preferences.Task.decide`, decided once) and the verdicts — people's
wins, losses, win rate, agreement with the judge — are redrawn without running anything.

Displayed, the widget also carries the static HTML of `nbconductor.render._compare` and the
text table, which is what papermill outputs, nbviewer and GitHub show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..._errors import OptionError
from ..._preferences import Task
from ...render._compare import brief_text, cell_detail, compare_html, compare_text, compare_view
from ...store._experiments import CHOICES, experiment_prefs

__all__ = ["CompareWidget"]

_HERE = Path(__file__).parent


class CompareWidget(anywidget.AnyWidget):
    """A compare's figures, verdicts and grid, clickable; ``prefer`` is what a pick does."""

    _esm = _HERE / "compare.js"
    _css = _HERE / "compare.css"

    view = traitlets.Dict(help="render._compare.compare_view: table, verdicts, grid").tag(sync=True)
    selected = traitlets.Unicode("", help="'ROW:VARIANT' of the expanded cell").tag(sync=True)
    detail = traitlets.Dict(help="the expanded cell: output, score, gates").tag(sync=True)
    status = traitlets.Unicode("", help="what the last pick recorded (or why not)").tag(sync=True)

    def __init__(self, comparison, store=None, *, pickable: bool | None = None, **kwargs: Any):
        self.comparison = comparison
        self.store = store
        if pickable is None:
            pickable = bool(comparison.pairs or comparison.prefs)
        self.pickable = bool(pickable and store is not None)
        super().__init__(**kwargs)
        self.view = compare_view(comparison, self.pickable)
        self.on_msg(self._on_msg)

    # -- the browser's requests ----------------------------------------------------------

    @traitlets.observe("selected")
    def _on_selected(self, change: dict) -> None:
        self.detail = self._detail(change["new"])

    def _detail(self, key: str) -> dict[str, Any]:
        row, _, variant = key.partition(":")
        if not row.isdigit():
            return {}
        return cell_detail(self.comparison, int(row), variant)

    def select(self, row: int | None, variant: str = "") -> None:
        """Expand the cell of ``row`` × ``variant`` (``None`` closes it), as a click does."""
        self.selected = "" if row is None else f"{row}:{variant}"

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("kind") != "prefer":
            return
        try:
            self.prefer(int(content["row"]), str(content["variant"]), str(content["choice"]))
        except (OptionError, KeyError, TypeError, ValueError) as exc:
            self.status = str(exc)

    def prefer(self, row: int, variant: str, choice: str) -> str:
        """Record a person's preference on ``row`` between ``variant`` and base: ``choice`` is
        either's name, ``tie`` or ``both bad``. Redraws the verdicts from the store; returns
        the winner's name (or ``tie`` / ``both bad``). Raises `OptionError` for a compare
        without picks, an unknown row, variant or answer, or a pair decided already."""
        c = self.comparison
        base = c.variants[0]
        if not self.pickable:
            raise OptionError("this compare has no pairwise judge or review to add a pick to")
        if variant == base or variant not in c.variants:
            others = ", ".join(c.variants[1:])
            raise OptionError(f"a pick compares one of {others} with {base}, not {variant!r}")
        if not 0 <= row < c.rows:
            raise OptionError(f"no brief {row} in this compare (0-{c.rows - 1})")
        answer = {base: "A", variant: "B"}.get(choice, choice)
        if answer not in CHOICES:
            raise OptionError(f"a pick is {variant}, {base}, tie or both bad, got {choice!r}")
        params = next((x["params"] for x in c.cells if x["row_index"] == row), {})
        task = Task(c.experiment_id, row, brief_text(params), "", "", variant, base, base)
        winner = task.decide(self.store, answer)
        c.prefs = experiment_prefs(self.store, c.experiment_id)
        with self.hold_sync():
            self.view = compare_view(c, self.pickable)
            self.status = (
                f"brief {row}: recorded {winner} ({variant} vs {base}, by {self.store.user})"
            )
        return winner

    # -- display -------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict, dict]:
        # The widget view for a live frontend; the static HTML and text for every other one.
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = {
            **data,
            "text/plain": compare_text(self.comparison),
            "text/html": compare_html(self.comparison),
        }
        return data, metadata
