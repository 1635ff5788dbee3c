"""nbconductor: orchestrate multi-step, multi-model AI pipelines from a Jupyter notebook.

``%load_ext nbconductor`` registers the magics; `Pipeline` is the same engine without IPython.
Importing this package is cheap: it loads no provider SDK, widget library or papermill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "ConductorError",
    "DefinitionError",
    "Pipeline",
    "RunResult",
    "Step",
    "StepFailed",
    "StepResult",
    "batch",
    "export",
    "load_ipython_extension",
    "template_function",
    "unload_ipython_extension",
]

# name -> "module" or "module:attribute", imported on first use: `import nbconductor` stays cheap.
_LAZY = {
    "batch": ".handoff._batch",
    "export": ".handoff._export:export_pipeline",
    "Pipeline": "._pipeline",
    "RunResult": "._executor",
    "Step": "._types",
    "StepResult": "._types",
    "ConductorError": "._errors",
    "DefinitionError": "._errors",
    "StepFailed": "._errors",
    "template_function": "._sandbox",
}

if TYPE_CHECKING:
    from ._errors import ConductorError, DefinitionError, StepFailed
    from ._pipeline import Pipeline
    from ._result import RunResult
    from ._sandbox import template_function
    from ._types import Step, StepResult
    from .handoff._batch import batch
    from .handoff._export import export_pipeline as export


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'nbconductor' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module, __name__), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbconductor``: register the magics with this shell."""
    from .notebook._magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .notebook._magics import unload

    unload(ipython)
