"""A kernel-free papermill engine: each notebook runs in a fresh in-process IPython shell.

Registered with papermill as ``nbconductor`` (entry point group ``papermill.engine``)::

    papermill job.ipynb out.ipynb -p topic "Pricing pages" --engine nbconductor

Starting a kernel costs a second or more per notebook (a process, ZMQ sockets, the imports);
here a notebook costs a new `InteractiveShell` (tens of milliseconds) in a process whose
imports are already warm. Outputs are recorded the way nbclient records a kernel's messages
(``stream``, ``display_data`` with display-id updates, ``execute_result``, ``error``), with the
same papermill cell metadata, so output notebooks look alike. Differences from a kernel: no
``input()``, cells of one process run one notebook at a time, and imported modules are shared
between notebooks run in the same process (the shell, its namespace and ``os.environ`` are not).
Outputs are redacted (`nbconductor._redact`) before they are recorded.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._engine_outputs import OutputSink, install_write_redaction, save_widget_state
from ._engine_process import fresh_logging, fresh_warnings, isolated

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["NBConductorEngine", "register"]
NBConductorEngine: type  # built on first access, see __getattr__

ENGINE_NAME = "nbconductor"
# One notebook at a time per process: the shell singleton, sys.stdout and os.environ are global.
_LOCK = threading.RLock()


def register() -> None:
    """Register the engine with papermill under ``nbconductor`` (the entry point does this too)."""
    from papermill.engines import papermill_engines

    engine = __getattr__("NBConductorEngine")
    if papermill_engines._engines.get(ENGINE_NAME) is not engine:
        papermill_engines.register(ENGINE_NAME, engine)


def __getattr__(name: str) -> Any:
    # The class is built on first use: importing papermill scans its entry points, which import
    # this module, so papermill cannot be imported while this module is being imported.
    if name == "NBConductorEngine":
        cls = globals().get("_ENGINE")
        if cls is None:
            built = _build_engine()  # may re-enter through papermill's entry-point scan
            cls = globals().setdefault("_ENGINE", built)
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_engine():
    from papermill.engines import Engine
    from papermill.exceptions import PapermillException

    class NBConductorEngine(Engine):
        """papermill engine that runs code cells in an in-process IPython shell, one per notebook."""

        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            **kwargs,
        ):
            """Run every cell of ``nb_man.nb`` in order; stop at the first error, as papermill does."""
            nb = nb_man.nb
            language = (nb.metadata.get("kernelspec") or {}).get("language") or "python"
            if language != "python":
                raise PapermillException(
                    f"the {ENGINE_NAME} engine runs Python notebooks; this one is {language}: use --engine nbclient"
                )
            input_path = kwargs.get("input_path")
            _execute(
                nb_man,
                input_path if isinstance(input_path, str) else None,
                execution_timeout,
                log_output,
                stdout_file,
                stderr_file,
            )
            return nb

        @classmethod
        def nb_kernel_name(cls, nb, name=None):
            """The kernel name papermill records; no kernel starts, so any Python kernel name will do."""
            return name or (nb.metadata.get("kernelspec") or {}).get("name") or "python3"

        @classmethod
        def nb_language(cls, nb, language=None):
            return language or (nb.metadata.get("kernelspec") or {}).get("language") or "python"

    NBConductorEngine.__module__, NBConductorEngine.__qualname__ = __name__, "NBConductorEngine"
    # papermill loads this engine through its entry point when it is imported, so every papermill
    # run in a process with nbconductor installed writes parameters through the checked translator.
    from ._translator import install_translator

    install_translator()
    install_write_redaction()
    return NBConductorEngine


def _execute(nb_man, notebook: str | None, timeout, log_output, stdout_file, stderr_file) -> None:
    nb = nb_man.nb
    _check_injected(nb)
    with (
        _LOCK,
        isolated(notebook, _engine_shell_class()),
        fresh_logging(),
        fresh_warnings(),
        _saves_throttled(nb_man),
    ):
        shell = _new_shell()
        sink = OutputSink(nb)
        shell._nbc_sink = sink
        try:
            for index, cell in enumerate(nb.cells):
                try:
                    nb_man.cell_start(cell, index)
                    if not _run_cell(shell, sink, cell, index, timeout):
                        nb_man.cell_exception(nb.cells[index], cell_index=index)
                        break
                finally:
                    nb_man.cell_complete(nb.cells[index], cell_index=index)
                    _log(cell, log_output, stdout_file, stderr_file)
            save_widget_state(nb, sink.widgets_before)
        finally:
            _dispose(shell)
    nb.metadata["language_info"] = _language_info()


#: seconds between saves of the output notebook while cells run (papermill saves after every
#: cell: a whole-notebook write per cell makes a many-cell job quadratic)
SAVE_EVERY = 1.0


@contextlib.contextmanager
def _saves_throttled(nb_man) -> Iterator[None]:
    """While the cells run, papermill's per-cell saves happen at most every `SAVE_EVERY`
    seconds; papermill's own final save (``notebook_complete``, also after a failure) is
    untouched, so the output notebook ends exact."""
    import time

    save = nb_man.save
    last = [time.monotonic()]

    def throttled(**kwargs: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= SAVE_EVERY:
            save(**kwargs)
            last[0] = time.monotonic()

    nb_man.save = throttled
    try:
        yield
    finally:
        del nb_man.save  # the class's method again


def _check_injected(nb) -> None:
    """Refuse to run a notebook whose injected parameters cell is more than `name = literal` lines."""
    from papermill.exceptions import PapermillException

    from .._errors import ParameterError
    from .._params import check_injected

    for cell in nb.cells:
        if cell.cell_type == "code" and "injected-parameters" in cell.get("metadata", {}).get(
            "tags", []
        ):
            try:
                check_injected(cell.source)
            except ParameterError as exc:
                raise PapermillException(str(exc)) from None


# ------------------------------------------------------------------------------- the shell


def _shell_class():
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type

    class _Publisher(DisplayPublisher):
        def publish(
            self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs
        ):
            self.shell._nbc_sink.display(data, metadata or {}, transient or {}, update)

        def clear_output(self, wait=False):
            self.shell._nbc_sink.clear(wait)

    class _DisplayHook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            self.shell._nbc_sink.result(format_dict, md_dict or {}, self.prompt_count)

        def finish_displayhook(self):
            pass

    class EngineShell(InteractiveShell):
        """An InteractiveShell whose display and tracebacks go into notebook outputs."""

        display_pub_class = Type(_Publisher)
        displayhook_class = Type(_DisplayHook)
        compiler_class = Type(_kernel_compiler())
        system = InteractiveShell.system_piped  # `!cmd` output goes to sys.stdout, as in ipykernel
        _nbc_sink = None

        def _showtraceback(self, etype, evalue, stb):
            self._nbc_sink.error(etype.__name__, str(evalue), list(stb))

        def init_environment(self):
            # What ipykernel sets for commands run from cells.
            os.environ.update(
                {"TERM": "xterm-color", "CLICOLOR": "1", "PAGER": "cat", "GIT_PAGER": "cat"}
            )

        def enable_gui(self, gui=None):
            pass

    return EngineShell


def _kernel_compiler():
    """ipykernel's compiler when installed: cells get a kernel's file names
    (``/tmp/ipykernel_<pid>/<hash>.py``), so warnings and tracebacks read as in a kernel."""
    try:
        from ipykernel.compiler import XCachingCompiler

        return XCachingCompiler
    except ImportError:
        from IPython.core.compilerop import CachingCompiler

        return CachingCompiler


_SHELL_CLASS = None


def _engine_shell_class():
    global _SHELL_CLASS
    if _SHELL_CLASS is None:
        _SHELL_CLASS = _shell_class()
    return _SHELL_CLASS


def _new_shell():
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no shared history.sqlite between worker processes
    shell = _engine_shell_class().instance(config=config)
    atexit.unregister(shell.atexit_operations)  # it is disposed of explicitly, per notebook
    _matplotlib_inline(shell)
    return shell


def _matplotlib_inline(shell) -> None:
    # Figures become display_data outputs, as with ipykernel's default inline backend.
    if "matplotlib_inline.backend_inline" in sys.modules:
        try:
            from matplotlib_inline.backend_inline import configure_inline_support

            configure_inline_support(shell, "inline")
        except Exception:  # noqa: BLE001 - plotting support is best effort
            pass


def _dispose(shell) -> None:
    magics = shell.user_ns.get("__nbconductor__")
    pipeline = getattr(magics, "pipeline", None)
    if pipeline is not None:
        with contextlib.suppress(Exception):
            pipeline.close()
    # Not shell.reset(): its gc.collect() costs more than the whole notebook; the shell is dropped.
    for ns in (shell.user_ns, shell.user_ns_hidden):
        ns.clear()
    shell._nbc_sink = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


class _CellTimeout(Exception):
    pass


def _run_cell(
    shell, sink: OutputSink, cell: NotebookNode, index: int, timeout: float | None
) -> bool:
    """Execute one cell; returns False when it raised (the run stops there)."""
    if cell.cell_type != "code" or not cell.source.strip():
        return True
    tags = cell.get("metadata", {}).get("tags", [])
    if "skip-execution" in tags:
        return True
    sink.start(index, cell)
    cell.execution_count = shell.execution_count
    timing = cell.metadata.setdefault("execution", {})
    timing["iopub.status.busy"] = timing["iopub.execute_input"] = _now()
    alarm = (
        timeout
        and threading.current_thread() is threading.main_thread()
        and hasattr(signal, "setitimer")
    )
    if alarm:

        def on_alarm(signum, frame):
            raise _CellTimeout(f"cell {index} ran longer than {timeout} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, float(timeout))
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sink.streams["stdout"], sink.streams["stderr"]
    try:
        result = shell.run_cell(cell.source, store_history=True, cell_id=cell.get("id"))
    finally:
        sys.stdout, sys.stderr = old
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    sink.finish()
    timing["shell.execute_reply"] = timing["iopub.status.idle"] = _now()
    return result.success or "raises-exception" in tags


def _log(cell: NotebookNode, log_output: bool, stdout_file, stderr_file) -> None:
    if cell.cell_type != "code" or not (log_output or stdout_file or stderr_file):
        return
    from papermill.log import logger

    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            target = stdout_file if out.name == "stdout" else stderr_file
            if target is not None:
                target.write(out.text)
                target.flush()
            if log_output:
                (logger.info if out.name == "stdout" else logger.warning)(out.text)
        elif log_output and "text/plain" in out.get("data", {}):
            logger.info(out.data["text/plain"])


def _language_info() -> dict:
    major = sys.version_info[0]
    return {
        "codemirror_mode": {"name": "ipython", "version": major},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": f"ipython{major}",
        "version": sys.version.split()[0],
    }


# --------------------------------------------------------------------------------- widgets
