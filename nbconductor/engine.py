"""The in-process papermill engine (``papermill --engine nbconductor``); it lives in `handoff`."""

from typing import Any

from .handoff import _engine

__all__ = list(_engine.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_engine, name)  # lazy: the engine class is built on first use
