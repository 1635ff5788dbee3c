"""What one notebook may change in the engine's process, given fresh and put back afterwards.

A kernel starts each notebook in a new process; the in-process engine (`_engine`) runs notebooks
one after another in one process instead, so it hands each one the state a fresh kernel would
have and restores the process's own afterwards: the IPython singletons, ``sys`` streams and
hooks, ``__main__``, ``os.environ``, ``sys.path`` and cell source lines (`isolated`), warning
filters (`fresh_warnings`) and the root logger (`fresh_logging`).
"""

from __future__ import annotations

import builtins
import contextlib
import linecache
import os
import sys
from collections.abc import Iterator

_MISSING = object()


def is_cell_file(name: str) -> bool:
    """Whether a linecache entry is a notebook cell's source (IPython's or ipykernel's name)."""
    if name.startswith(("<ipython-input-", "<step ")):
        return True
    try:
        from ipykernel.compiler import get_tmp_directory
    except ImportError:
        return False
    return name.startswith(get_tmp_directory())


def inline_matplotlib() -> None:
    """Plots as a kernel shows them: inline (set in the environment, restored by `isolated`)."""
    if "MPLBACKEND" not in os.environ:
        with contextlib.suppress(ImportError):
            import importlib.util

            if importlib.util.find_spec("matplotlib_inline"):
                os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def isolated(notebook: str | None, shell_class: type) -> Iterator[None]:
    """Give a notebook the process state a fresh kernel would have, and put everything back;
    ``shell_class`` is the engine's shell (its singletons are new for this notebook)."""
    from IPython.core.interactiveshell import InteractiveShell

    klasses = [k for k in shell_class.mro() if hasattr(k, "_instance")]
    saved_instances = {k: k.__dict__.get("_instance", _MISSING) for k in klasses}
    saved_sys = {
        name: getattr(sys, name) for name in ("stdout", "stderr", "displayhook", "excepthook")
    }
    saved_main = sys.modules.get("__main__")
    saved_builtins = {
        name: builtins.__dict__.get(name, _MISSING)
        for name in ("__IPYTHON__", "display", "get_ipython")
    }
    saved_env = dict(os.environ)
    saved_path = list(sys.path)
    saved_lines = set(linecache.cache)
    # a new singleton for this notebook (restored afterwards, e.g. inside a kernel)
    for k in klasses:
        k._instance = None
    InteractiveShell._instance = None
    if notebook and not os.environ.get("JPY_SESSION_NAME") and os.path.isfile(notebook):
        os.environ["JPY_SESSION_NAME"] = os.path.abspath(notebook)  # as Jupyter does
    inline_matplotlib()
    try:
        yield
    finally:
        for name, value in saved_sys.items():
            setattr(sys, name, value)
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        for name, value in saved_builtins.items():
            if value is _MISSING:
                builtins.__dict__.pop(name, None)
            else:
                builtins.__dict__[name] = value
        for k, value in saved_instances.items():
            if value is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(k, "_instance")
            else:
                k._instance = value
        for key in [k for k in os.environ if k not in saved_env]:
            del os.environ[key]
        for key, value in saved_env.items():  # only what changed: other threads may be reading
            if os.environ.get(key) != value:
                os.environ[key] = value
        sys.path[:] = saved_path
        for key in set(linecache.cache) - saved_lines:
            if is_cell_file(key):
                linecache.cache.pop(key, None)


@contextlib.contextmanager
def fresh_warnings() -> Iterator[None]:
    """Warning filters as a fresh interpreter has them (IPython adds its own for the notebook's
    module), shown on the running cell's ``sys.stderr`` — whatever the host process does with
    warnings (pytest records them, an application may silence them). Put back afterwards."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        with contextlib.suppress(OSError, ValueError):
            (file or sys.stderr).write(text)

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (
            ResourceWarning,
            ImportWarning,
            PendingDeprecationWarning,
            DeprecationWarning,
        ):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def fresh_logging() -> Iterator[None]:
    """A root logger as a fresh kernel has it — no handlers, level WARNING — for one notebook.

    So ``logging.basicConfig(...)`` in a cell configures it (in a process that already logs,
    basicConfig would otherwise do nothing) and its handler writes to the cell's captured
    ``sys.stderr``; with no handler, warnings reach stderr through `logging.lastResort` at
    the time of the call, as in a kernel. The process's logging is put back afterwards, and
    loggers the notebook created lose the handlers and levels it gave them.
    """
    import logging

    root, manager = logging.getLogger(), logging.Logger.manager
    saved = root.handlers[:], root.level, root.disabled, manager.disable
    existing = set(manager.loggerDict)
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    root.disabled = False
    logging.disable(logging.NOTSET)
    try:
        yield
    finally:
        for handler in root.handlers:
            with contextlib.suppress(Exception):
                handler.close()
        root.handlers[:], level, root.disabled, disable = saved
        root.setLevel(level)
        logging.disable(disable)
        for name in set(manager.loggerDict) - existing:
            logger = manager.loggerDict[name]
            if isinstance(logger, logging.Logger):
                logger.handlers[:] = []
                logger.setLevel(logging.NOTSET)
                logger.propagate, logger.disabled = True, False
