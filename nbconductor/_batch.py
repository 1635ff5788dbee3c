"""``nbconductor batch``: one papermill run per row of parameters, in parallel.

Rows run in warm local worker processes (or on a Dask cluster, `nbconductor._dask`), each row
on the in-process engine for exported jobs (a kernel per row otherwise). Every row writes its
output notebook and its step results into one run store (SQLite in WAL mode, shared through
``NBCONDUCTOR_STORE``). A failing row does not stop the others; a worker that dies marks its
row failed and is replaced. ``manifest.json`` in the output folder records each row's outcome,
which is what ``--resume`` reads to run only the rows that did not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import hashlib
import json
import os
import signal
import sys
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._errors import OptionError

MANIFEST = "manifest.json"
WORKER_ENV = "NBCONDUCTOR_BATCH_WORKER"  # marks worker processes (and their kernels) for clean-up
FINISHED = ("passed", "flagged")
_ROW_LOCK = threading.Lock()  # a row sets process-wide environment variables


@dataclass
class Row:
    index: int
    params: dict[str, Any]
    output: str  # absolute path of the row's output notebook

    @property
    def key(self) -> str:
        return params_key(self.params)


@dataclass
class RowResult:
    index: int
    status: str  # passed | flagged | failed
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    run_ids: list[str] = field(default_factory=list)
    flagged: int = 0
    cost: float | None = None
    worker: str = ""
    key: str = ""
    resumed: bool = False
    attempts: int = 1


def params_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- rows in


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parameter rows from a .csv, .yaml/.yml, .json or .jsonl file; raises `OptionError`."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"--params file {str(path)!r} not found")
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8-sig")
    try:
        if suffix == ".csv":
            rows = [{k.strip(): _csv_value(v) for k, v in r.items() if k and v is not None and v != ""}
                    for r in csv.DictReader(text.splitlines())]
        elif suffix in (".yaml", ".yml"):
            import yaml

            rows = yaml.safe_load(text)
        elif suffix == ".json":
            rows = json.loads(text)
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raise OptionError(f"--params {p.name}: use a .csv, .yaml or .json file of parameter rows")
    except OptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml/json/csv each raise their own
        raise OptionError(f"--params {p.name} cannot be read: {exc}") from None
    if isinstance(rows, dict) and isinstance(rows.get("rows"), list):
        rows = rows["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise OptionError(f"--params {p.name} must hold a list of rows, each a mapping of parameter names "
                          'to values (e.g. [{"topic": "Pricing"}, {"topic": "Onboarding"}])')
    if not rows:
        raise OptionError(f"--params {p.name} has no rows")
    return [{str(k): _plain(v) for k, v in r.items()} for r in rows]


def _csv_value(text: str) -> Any:
    from ._runner import parse_value

    stripped = text.strip()
    if stripped[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(stripped)
    return parse_value(text)


def _plain(value: Any) -> Any:
    # YAML dates and the like become strings papermill can write into a cell.
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def output_name(notebook: Path, index: int, total: int) -> str:
    width = max(3, len(str(total - 1)))
    return f"{notebook.stem}-{index:0{width}d}.ipynb"


# ------------------------------------------------------------------------- running one row


def execute_row(notebook: str, output: str, params: dict[str, Any], engine: str | None, store: str,
                label: str, index: int = 0) -> dict[str, Any]:
    """Run one row with papermill; never raises. Returns a `RowResult` as a dict."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ._runner import failure_message, redact_file

    started = time.time()
    status, error, attempts = "passed", None, 0
    with _ROW_LOCK:
        saved = {k: os.environ.get(k) for k in ("NBCONDUCTOR_STORE", "JPY_SESSION_NAME")}
        os.environ["NBCONDUCTOR_STORE"] = store
        os.environ["JPY_SESSION_NAME"] = label  # runs.notebook: how this row's runs are found
        try:
            while True:
                attempts += 1
                try:
                    pm.execute_notebook(
                        notebook, output, parameters=params, engine_name=engine,
                        cwd=str(Path(notebook).resolve().parent), progress_bar=False,
                        request_save_on_cell_execute=engine != "nbconductor",
                    )
                    status, error = "passed", None
                except PapermillExecutionError as exc:
                    status, error = "failed", failure_message(exc, output)
                except Exception as exc:  # noqa: BLE001 - a row's failure is reported, not raised
                    status, error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
                    if attempts < 3 and _kernel_start_failed(exc):
                        time.sleep(0.2 * attempts)
                        continue  # a port race between kernels starting at once: try again
                break
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    redact_file(output)
    run_ids, flagged, cost, run_failed = _row_runs(store, label, started)
    if status == "passed" and flagged:
        status = "flagged"
    if status == "passed" and run_failed and not error:
        status, error = "failed", "a run did not finish"
    from ._redact import redact

    return asdict(RowResult(
        index=index, status=status, output=output, params=params, error=redact(error) if error else None,
        seconds=round(time.time() - started, 3), run_ids=run_ids, flagged=flagged, cost=cost,
        worker=f"{_host()}:{os.getpid()}", key=params_key(params), attempts=attempts,
    ))


def _kernel_start_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in ("address already in use", "zmqerror", "kernel died before replying",
                                   "kernel didn't respond", "timeout waiting for kernel"))


def _row_runs(store: str, label: str, since: float) -> tuple[list[str], int, float | None, bool]:
    import sqlite3

    if not Path(store).is_file():
        return [], 0, None, False
    db = sqlite3.connect(store, timeout=60)
    try:
        db.execute("PRAGMA busy_timeout = 60000")
        runs = db.execute("SELECT id, status, cost FROM runs WHERE notebook=? AND started>=? ORDER BY started",
                          (label, since - 1)).fetchall()
        ids = [r[0] for r in runs]
        flagged = 0
        if ids:
            marks = ",".join("?" * len(ids))
            flagged = db.execute(f"SELECT COUNT(*) FROM results WHERE run_id IN ({marks}) AND state='flagged' "
                                 "AND item IS NULL", ids).fetchone()[0]
    except sqlite3.Error:
        return [], 0, None, False
    finally:
        db.close()
    costs = [r[2] for r in runs]
    cost = None if not runs or any(c is None for c in costs) else round(sum(costs), 6)
    return ids, flagged, cost, any(r[1] in ("running", "interrupted") for r in runs)


def _host() -> str:
    import socket

    return socket.gethostname()


# --------------------------------------------------------------------------- local workers


_WARM_FLAG = "NBCONDUCTOR_WARM_FORKSERVER"  # set only in the environment the forkserver starts with


def _context():
    """The multiprocessing context for workers: a warm forkserver where possible, else spawn.

    The forkserver imports this module with ``_WARM_FLAG`` set, which makes it import
    papermill, IPython and nbconductor and run a tiny notebook on the in-process engine once
    (`_warm_forkserver`); every worker forks from that process, warm from its first row.
    Starting it here, early, overlaps that work with the coordinator's own.
    """
    import multiprocessing as mp

    if sys.platform == "win32" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["nbconductor._batch"])
    os.environ[_WARM_FLAG] = "1"
    try:
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - Process.start() will try again and report
        pass
    finally:
        os.environ.pop(_WARM_FLAG, None)
    return ctx


def _warm_forkserver() -> None:
    """Do once, before workers fork, what each worker's first row would otherwise do."""
    _defer_rfc3987_syntax()
    try:
        import nbformat
        from nbformat.v4 import new_code_cell, new_notebook
        from papermill.engines import papermill_engines

        from .engine import ENGINE_NAME, register

        register()
        for name in ("nbconductor._magics", "nbconductor._commands", "nbconductor._executor", "nbconductor._judge",
                     "nbconductor.providers.offline", "nbconductor.widgets.live", "networkx", "jinja2.sandbox"):
            with contextlib.suppress(ImportError):
                __import__(name)
        nb = new_notebook(cells=[new_code_cell("%load_ext nbconductor"),
                                 new_code_cell("%%step warm --model offline:warm --lazy\nwarm up"),
                                 new_code_cell("%conductor run")],
                          metadata={"kernelspec": {"name": "python3", "language": "python"}, "papermill": {}})
        nb = nbformat.reads(nbformat.writes(nb), as_version=4)  # compiles the schema validator
        saved = os.environ.get("NBCONDUCTOR_STORE")
        os.environ["NBCONDUCTOR_STORE"] = ":memory:"
        try:
            papermill_engines.execute_notebook_with_engine(ENGINE_NAME, nb, kernel_name="python3", output_path=None,
                                                           progress_bar=False)
        finally:
            if saved is None:
                os.environ.pop("NBCONDUCTOR_STORE", None)
            else:
                os.environ["NBCONDUCTOR_STORE"] = saved
    except Exception:  # noqa: BLE001 - warming is an optimisation; rows report real problems
        pass


def _defer_rfc3987_syntax() -> None:
    """Defer ``rfc3987_syntax`` until a JSON-schema ``iri`` check needs it.

    nbformat imports jsonschema, which imports rfc3987_syntax when installed (as it is with
    JupyterLab), and that builds an Earley parser at import time: seconds per process. In our
    own worker processes a stand-in module loads the real one on first use, so behaviour is
    unchanged and start-up is not billed for a check nbformat never makes.
    """
    import importlib
    import importlib.util
    import types

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
        import nbconductor.engine  # noqa: F401 - warm imports before the first row
        from nbconductor.engine import register

        register()
    except Exception:  # noqa: BLE001 - the row will report it
        pass
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            # Nothing is pending (each row closed its store): skip the interpreter's slow teardown.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)
        result = execute_row(**job)
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            break


class _Worker:
    def __init__(self, ctx, n: int, env: dict[str, str], log_dir: Path | None):
        self.ctx, self.n, self.env, self.log_dir = ctx, n, env, log_dir
        self.row: Row | None = None
        self.proc = None
        self.conn = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        log = str(self.log_dir / f"worker-{self.n}.log") if self.log_dir else None
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.env, os.getcwd(), log),
                                     name=f"nbconductor-worker-{self.n}", daemon=True)
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


def run_local(rows: list[Row], job: dict[str, Any], workers: int, on_done: Callable[[dict], None],
              log_dir: Path | None = None) -> None:
    """Run ``rows`` on ``workers`` local processes; calls ``on_done(result)`` as each row ends."""
    from multiprocessing.connection import wait

    ctx = _context()
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
                        w.conn.send({**job, "output": row.output, "params": row.params, "label": row.output,
                                     "index": row.index})
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
            print(f"nbconductor: stopped {leftover} leftover kernel process{'es' if leftover > 1 else ''}",
                  file=sys.stderr)


def _receive(w: _Worker, live_pids: set[int]) -> dict | None:
    row = w.row
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    if w.alive():
        return None
    code = w.proc.exitcode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    w.stop()
    sweep(w.env.get(WORKER_ENV, ""), keep_parents=live_pids)
    return asdict(RowResult(index=row.index, status="failed", output=row.output, params=row.params,
                            error=f"the worker process died ({how}) while running this row",
                            key=row.key, worker=f"{_host()}:worker-{w.n}"))


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


# -------------------------------------------------------------------------------- manifest


class Manifest:
    """``manifest.json`` in the output folder: every row's last outcome."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self._lock = threading.Lock()

    @classmethod
    def open(cls, out_dir: Path, notebook: Path, params_file: str, store: str, resume: bool) -> Manifest:
        path = out_dir / MANIFEST
        data = None
        if resume and path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = None
        if data is None:
            data = {"version": 1, "rows": {}}
        data.update(notebook=str(notebook), params=str(params_file), store=store)
        return cls(path, data)

    def finished(self, row: Row) -> dict | None:
        entry = self.data["rows"].get(str(row.index))
        if entry and entry.get("status") in FINISHED and entry.get("key") == row.key:
            return entry
        return None

    def record(self, result: dict) -> None:
        with self._lock:
            self.data["rows"][str(result["index"])] = {**result, "finished": time.time()}
            self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# -------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal, else one plain line per finished row (on stderr)."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label
        self.bar = None
        if total and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="row", desc=label, file=sys.stderr)

    def update(self, result: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if result["status"] == "failed":
                self.bar.write(f"row {result['index']} failed: {result['error']}", file=sys.stderr)
            return
        width = len(str(self.total))
        tail = f": {result['error']}" if result["status"] == "failed" else ""
        print(f"[{self.done:>{width}}/{self.total}] row {result['index']} {result['status']} "
              f"in {result['seconds']:.1f}s{tail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------- the CLI


def cli_batch(args: argparse.Namespace) -> int:
    """``nbconductor batch``; returns 0 when every row finished, 1 when one failed, 2 for bad input."""
    from ._runner import choose_engine, engine_label

    notebook = Path(args.notebook).resolve()
    nb = _read_notebook(notebook)  # as JSON: the coordinator never imports nbformat or papermill
    rows_in = read_rows(args.params)
    if not args.dask:
        _context()  # the workers' start-up overlaps with what the coordinator does next
    _warn_unknown(nb, rows_in)
    engine = choose_engine(nb, args.engine, register=False)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = str(_store_path(args.store, notebook))
    manifest = Manifest.open(out_dir, notebook, args.params, store, args.resume)
    rows = [Row(i, params, str(out_dir / output_name(notebook, i, len(rows_in)))) for i, params in enumerate(rows_in)]
    results: dict[int, dict] = {}
    todo = []
    for row in rows:
        done = manifest.finished(row) if args.resume else None
        if done is not None:
            results[row.index] = {**done, "resumed": True}
        else:
            todo.append(row)
    if args.resume and results:
        print(f"nbconductor: resuming: {len(results)} of {len(rows)} rows already finished", file=sys.stderr)
    where = f"Dask at {args.dask}" if args.dask else f"{_workers(args.workers, len(todo))} local workers"
    print(f"nbconductor: {len(todo)} rows of {notebook.name} on {where}, {engine_label(engine)} engine; "
          f"store {store}", file=sys.stderr)
    progress = Progress(len(todo), notebook.stem)
    started = time.time()

    def done(result: dict) -> None:
        results[result["index"]] = result
        manifest.record(result)
        progress.update(result)

    job = {"notebook": str(notebook), "engine": engine, "store": store}
    try:
        if not todo:
            pass
        elif args.dask:
            from ._dask import run_dask

            run_dask(args.dask, todo, job, done)
        else:
            run_local(todo, job, _workers(args.workers, len(todo)), done, log_dir=out_dir / "logs")
    finally:
        progress.close()
        manifest.write()
        for log in (out_dir / "logs").glob("*.log"):
            from ._runner import redact_file

            redact_file(log)
    ordered = [results[i] for i in sorted(results)]
    print(summary(ordered, out_dir, time.time() - started, store))
    missing = len(rows) - len(ordered)
    failed = sum(1 for r in ordered if r["status"] == "failed") + missing
    return 1 if failed else 0


def _workers(requested: int | None, rows: int) -> int:
    n = requested if requested else (os.cpu_count() or 2)
    if n < 1:
        raise OptionError(f"--workers must be 1 or more, got {n}")
    return max(1, min(n, rows or 1))


def _store_path(arg: str | None, notebook: Path) -> Path:
    if arg:
        return Path(arg).resolve()
    if os.environ.get("NBCONDUCTOR_STORE"):
        return Path(os.environ["NBCONDUCTOR_STORE"]).resolve()
    from ._config import load_config
    from ._store import default_store_path

    config = load_config(start=notebook.parent)
    if config.store:
        return (notebook.parent / config.store).resolve()
    return default_store_path(notebook.parent).resolve()


def _read_notebook(path: Path) -> dict:
    if not path.is_file():
        raise OptionError(f"notebook {str(path)!r} not found")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        nb["cells"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{path.name} is not a readable notebook: {exc}") from None
    return nb


def _warn_unknown(nb: dict, rows: list[dict]) -> None:
    from ._notebook import parameter_values

    cell = next((c for c in nb["cells"] if c.get("cell_type") == "code"
                 and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        print("nbconductor: the notebook has no cell tagged `parameters`; papermill puts row values "
              "at the top", file=sys.stderr)
        return
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    known = set(parameter_values(source))
    unknown = sorted({k for r in rows for k in r} - known)
    if unknown and known:
        print(f"nbconductor: parameters not in the notebook's parameters cell: {', '.join(unknown)} "
              f"(it has {', '.join(sorted(known))})", file=sys.stderr)


def summary(results: list[dict], out_dir: Path, seconds: float, store: str) -> str:
    """The table printed at the end: row, status, flagged, cost, time, notebook or error."""
    from ._summary import fmt_cost, text_table

    rows = []
    for r in results:
        status = r["status"] + (" (earlier)" if r.get("resumed") else "")
        where = r["error"] if r["status"] == "failed" else _relative(r["output"], out_dir)
        rows.append([str(r["index"]), status, str(r.get("flagged") or 0), fmt_cost(r.get("cost")),
                     f"{r.get('seconds') or 0:.1f}s", _short(_params_text(r.get("params") or {}), 32),
                     _short(where or "", 80)])
    table = text_table(["row", "status", "flagged", "cost", "time", "params", "notebook / error"], rows)
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("passed", "flagged", "failed")}
    costs = [r.get("cost") for r in results if not r.get("resumed")]
    total = None if any(c is None for c in costs) else sum(costs)
    lines = [table, "",
             f"{len(results)} rows: {counts['passed']} passed, {counts['flagged']} flagged, {counts['failed']} failed"
             f" · {fmt_cost(total)} · {seconds:.1f}s · notebooks in {out_dir}"]
    if counts["flagged"]:
        lines.append(f"flagged outputs wait for review: nbconductor review --store {store}")
    if counts["failed"]:
        lines.append("re-run the failed rows only: add --resume")
    return "\n".join(lines)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


if os.environ.get(_WARM_FLAG) == "1":  # imported by the batch's forkserver: see _context()
    _warm_forkserver()
