"""Local batch workers: a pool of warm processes that run rows one at a time.

Workers fork from a forkserver that has already imported papermill, IPython and nbconductor
and run a tiny notebook once (`worker_context`), so every worker is warm from its first row;
where there is no forkserver they are spawned. The coordinator (`run_local`) hands each idle
worker the next row over a pipe. A worker that dies marks its row failed and is replaced on
the next row; the kernels it left behind are found by a marker in their environment
(``WORKER_ENV``) and killed (`sweep`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import types
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import _trace
from .._states import FAILED
from ._row import Row, RowResult, execute_row, host
from ._runner import environ

WORKER_ENV = "NBCONDUCTOR_BATCH_WORKER"  # marks worker processes (and their kernels) for clean-up
_WARM_FLAG = "NBCONDUCTOR_WARM_FORKSERVER"  # set only in the environment the forkserver starts with
_WARM_PROVIDERS = "NBCONDUCTOR_WARM_PROVIDERS"  # the providers whose SDKs the forkserver imports
_MODEL_SPEC = re.compile(r"(?<![\w.-])([a-z][a-z0-9_-]*):[A-Za-z0-9]")


# ------------------------------------------------------------------------ warm start-up


def job_providers(sources: list[str], config: Any = None) -> list[str]:
    """The registered providers a job names: ``name:`` model specs in its cells' sources
    (``--model``, ``--judge``, ``Pipeline.step(model=...)``) and in ``config`` (the default
    model, the aliases' models).

    A hint for warming workers (`worker_context`), not a contract: a provider it misses is
    imported by the first row that uses it, as without the hint.
    """
    from ..providers import registry

    known = registry.names()
    if config is not None:
        aliases = [getattr(a, "model", a) for a in config.aliases.values()]
        sources = [*sources, config.default_model or "", *map(str, aliases)]
    found = {m.group(1) for text in sources for m in _MODEL_SPEC.finditer(text)}
    return sorted((found & known) - {"offline"})


def worker_context(providers: list[str] = ()):
    """The multiprocessing context for workers: a warm forkserver where possible, else spawn.

    The forkserver imports this module with ``_WARM_FLAG`` set, which makes it import
    papermill, IPython, nbconductor and the SDKs of ``providers`` (`job_providers`) and run a
    tiny notebook on the in-process engine once (`_warm_forkserver`); every worker forks from
    that process, warm from its first row (an SDK import is ~0.5–1.1 s a process). Starting it
    early overlaps that work with the coordinator's own. The forkserver is started once per
    process: a later call's ``providers`` do not change it.
    """
    import multiprocessing as mp

    if sys.platform == "win32" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["nbconductor.handoff._workers"])
    os.environ[_WARM_FLAG] = "1"
    os.environ[_WARM_PROVIDERS] = ",".join(providers)
    try:
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - Process.start() will try again and report
        pass
    finally:
        os.environ.pop(_WARM_FLAG, None)
        os.environ.pop(_WARM_PROVIDERS, None)
    return ctx


def _warm_forkserver() -> None:
    """Do once, before workers fork, what each worker's first row would otherwise do."""
    _defer_rfc3987_syntax()
    try:
        import nbformat
        from nbformat.v4 import new_code_cell, new_notebook
        from papermill.engines import papermill_engines

        from ._engine import ENGINE_NAME, register

        register()
        _warm_providers(os.environ.pop(_WARM_PROVIDERS, ""))
        for name in (
            "nbconductor.notebook._magics",
            "nbconductor.notebook._commands",
            "nbconductor._executor",
            "nbconductor.gates._judge",
            "nbconductor.providers.offline",
            "nbconductor.notebook.widgets.live",
            "networkx",
            "jinja2.sandbox",
        ):
            with contextlib.suppress(ImportError):
                __import__(name)
        nb = new_notebook(
            cells=[
                new_code_cell("%load_ext nbconductor"),
                new_code_cell("%%step warm --model offline:warm --lazy\nwarm up"),
                new_code_cell("%conductor run"),
            ],
            metadata={"kernelspec": {"name": "python3", "language": "python"}, "papermill": {}},
        )
        nb = nbformat.reads(nbformat.writes(nb), as_version=4)  # compiles the schema validator
        with environ({"NBCONDUCTOR_STORE": ":memory:"}):
            papermill_engines.execute_notebook_with_engine(
                ENGINE_NAME, nb, kernel_name="python3", output_path=None, progress_bar=False
            )
    except Exception:  # noqa: BLE001 - warming is an optimisation; rows report real problems
        pass


def _warm_providers(names: str) -> None:
    from ..providers import registry

    for name in filter(None, names.split(",")):
        with contextlib.suppress(Exception):  # a provider that cannot load fails in its row
            registry.get(name).warm()


def _defer_rfc3987_syntax() -> None:
    """Defer ``rfc3987_syntax`` until a JSON-schema ``iri`` check needs it.

    nbformat imports jsonschema, which imports rfc3987_syntax when installed (as it is with
    JupyterLab), and that builds an Earley parser at import time: seconds per process. In our
    own worker processes a stand-in module loads the real one on first use, so behaviour is
    unchanged and start-up is not billed for a check nbformat never makes.
    """
    import importlib
    import importlib.util

    name = "rfc3987_syntax"
    if name in sys.modules or "jsonschema" in sys.modules or importlib.util.find_spec(name) is None:
        return

    def real():
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return importlib.import_module(name)

    stand_in = types.ModuleType(name)
    stand_in.is_valid_syntax = lambda term, value: real().is_valid_syntax(term, value)

    def attribute(attr: str):
        if attr.startswith("__"):  # the import system probing the module
            raise AttributeError(attr)
        return getattr(real(), attr)

    stand_in.__getattr__ = attribute
    sys.modules[name] = stand_in


# ----------------------------------------------------------------------- a worker process


def _worker_main(conn, env: dict[str, str], cwd: str, log: str | None) -> None:
    """A worker process: run the rows it is sent, one at a time, until told to stop."""
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    try:
        import nbconductor.handoff._engine  # noqa: F401 - warm imports before the first row
        from nbconductor.handoff._engine import register

        register()
    except Exception:  # noqa: BLE001 - the row will report it
        pass
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            # Nothing is pending (each row closed its store) once the rows' spans are sent:
            # skip the interpreter's slow teardown (os._exit runs no atexit hook).
            _trace.drain(3.0)  # within `_Worker.stop`'s 5 s
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)
        result = execute_row(**job)
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            break
    _trace.drain(3.0)


class _Worker:
    def __init__(self, ctx, n: int, env: dict[str, str], log_dir: Path | None):
        self.ctx, self.n, self.env, self.log_dir = ctx, n, env, log_dir
        self.row: Row | None = None
        self.proc = None
        self.conn = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        log = str(self.log_dir / f"worker-{self.n}.log") if self.log_dir else None
        self.proc = self.ctx.Process(
            target=_worker_main,
            args=(child, self.env, os.getcwd(), log),
            name=f"nbconductor-worker-{self.n}",
            daemon=True,
        )
        # Workers need nothing from the caller's __main__ (a script, stdin, a kernel): without this,
        # multiprocessing would re-run that script in every worker.
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.proc.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main
        child.close()
        self.conn = parent

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self.conn.send(None)
        if timeout:
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        with contextlib.suppress(Exception):
            self.conn.close()
        self.proc = None


# ------------------------------------------------------------------------------- the pool


def run_local(
    rows: list[Row],
    job: dict[str, Any],
    workers: int,
    on_done: Callable[[dict], None],
    log_dir: Path | None = None,
) -> None:
    """Run ``rows`` on ``workers`` local processes; calls ``on_done(result)`` as each row ends."""
    from multiprocessing.connection import wait

    ctx = worker_context()
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    env = {**os.environ, WORKER_ENV: token}
    pool = [_Worker(ctx, n, env, log_dir) for n in range(max(1, min(workers, len(rows))))]
    queue = deque(rows)
    finished = False
    try:
        while queue or any(w.row is not None for w in pool):
            for w in pool:
                if w.row is None and queue:
                    if not w.alive():
                        w.stop()
                        w.start()
                    row = queue.popleft()
                    try:
                        w.conn.send(
                            {
                                **job,
                                "output": row.output,
                                "params": row.params,
                                "label": row.output,
                                "index": row.index,
                            }
                        )
                        w.row = row
                    except (BrokenPipeError, OSError):
                        queue.appendleft(row)
                        w.stop()
            busy = {}
            for w in pool:
                if w.row is not None:
                    busy[w.conn] = w
                    busy[w.proc.sentinel] = w
            for w in {busy[obj] for obj in wait(list(busy), timeout=1.0)}:
                result = _receive(w, {x.proc.pid for x in pool if x is not w and x.alive()})
                if result is None:
                    continue
                w.row = None
                on_done(result)
        finished = True
    finally:
        for w in pool:  # all at once, then wait: workers exit in parallel
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in pool:
            w.stop(5.0 if finished else 0.0)  # interrupted: do not wait for rows in flight
        leftover = sweep(token)
        if leftover:
            print(
                f"nbconductor: stopped {leftover} leftover kernel process{'es' if leftover > 1 else ''}",
                file=sys.stderr,
            )


def _receive(w: _Worker, live_pids: set[int]) -> dict | None:
    """The row's result; a failed result when the worker died; None while it is still running."""
    row = w.row
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    if w.alive():
        return None
    code = w.proc.exitcode
    how = (
        f"signal {signal.Signals(-code).name}"
        if code is not None and code < 0
        else f"exit code {code}"
    )
    w.stop()
    sweep(w.env.get(WORKER_ENV, ""), keep_parents=live_pids)
    return asdict(
        RowResult(
            index=row.index,
            status=FAILED,
            output=row.output,
            params=row.params,
            error=f"the worker process died ({how}) while running this row",
            key=row.key,
            worker=f"{host()}:worker-{w.n}",
        )
    )


def sweep(token: str, keep_parents: set[int] | frozenset = frozenset()) -> int:
    """Kill leftover processes (kernels) started by this batch's workers; returns how many.

    Kernels inherit the worker marker in their environment; those whose parent is a live
    worker (in ``keep_parents``) are still in use. Needs psutil; without it, does nothing.
    """
    if not token:
        return 0
    try:
        import psutil
    except ImportError:
        return 0
    killed = 0
    for proc in psutil.process_iter(["pid", "ppid"]):
        try:
            if proc.info["ppid"] in keep_parents or proc.environ().get(WORKER_ENV) != token:
                continue
            proc.kill()
            killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


if os.environ.get(_WARM_FLAG) == "1":  # imported by the batch's forkserver: see worker_context()
    _warm_forkserver()
