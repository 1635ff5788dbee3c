"""The review queue: `queue`, `decide`, the CLI's `cli_review` (in `store`), and in a notebook
`ReviewWidget` (in `notebook`, imported only when asked for: it needs IPython and ipywidgets)."""

from typing import Any

from .store import _review

_WIDGET_NAMES = ("ReviewWidget", "ReviewCard", "KernelHooks", "review_widget")


def __getattr__(name: str) -> Any:
    if name in _WIDGET_NAMES:
        from .notebook import _review_widget

        return getattr(_review_widget, name)
    return getattr(_review, name)
