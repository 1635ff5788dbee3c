"""Notebook widgets: the live step graph, the run timeline, the intake form and the compare.

Names are imported lazily so that ``nbconductor.render._layout`` (pure Python, used by
export and the CLI) does not pull in ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CompareWidget",
    "GraphWidget",
    "IntakeForm",
    "TimelineView",
    "render_svg",
    "render_text",
]

_HOME = {
    "CompareWidget": "compare",
    "GraphWidget": "graph",
    "IntakeForm": "form",
    "TimelineView": "nbconductor.render.timeline",
    "render_svg": "nbconductor.render._layout",
    "render_text": "nbconductor.render._layout",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(
            importlib.import_module(home if "." in (home := _HOME[name]) else f"{__name__}.{home}"),
            name,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
