"""Recording a cell's output as nbformat outputs, the way nbclient records a kernel's messages.

Used by the in-process papermill engine (`nbconductor.handoff._engine`). `install_write_redaction` makes
papermill redact every notebook it writes that uses nbconductor, whichever engine runs it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .._redact import redact, redactor

if TYPE_CHECKING:
    from nbformat import NotebookNode


def new_output(output_type: str, **fields: Any):
    from nbformat.v4 import new_output as make

    return make(output_type, **fields)


#: ipykernel's ``OutStream.flush_interval``: a stream's text is sent at most this long after
#: it was written, or earlier when the cell displays something, ends, or flushes the stream.
FLUSH_INTERVAL = 0.2


class OutputSink:
    """Turns what a cell prints and displays into nbformat outputs, the way nbclient does.

    Streams are buffered the way ipykernel buffers them, so outputs come out in the same order
    as from a kernel: a stream's pending text is flushed when it is older than
    `FLUSH_INTERVAL`, when the stream is flushed (``sys.stdout.flush()``, every logging
    handler's emit), and — stdout first, then stderr — before any display, result, error,
    ``clear_output`` and at the end of the cell. A quick cell that prints to both therefore
    shows all its stdout, then all its stderr, as in a kernel.
    """

    def __init__(self, nb: NotebookNode):
        self.nb = nb
        self.index = -1
        self.outputs: list = []
        self.clear_pending = False
        self.display_ids: dict[str, list[tuple[int, NotebookNode]]] = {}
        self.lock = threading.RLock()
        self.widgets_before = _widget_ids()
        self.pending: dict[str, list] = {}  # stream name -> [text, first write (monotonic)]
        # one object per stream for the whole notebook, as a kernel's sys.stdout / sys.stderr,
        # so a logging handler made in one cell writes into whichever cell is running
        self.streams = {name: SinkStream(self, name) for name in ("stdout", "stderr")}

    def start(self, index: int, cell: NotebookNode) -> None:
        self.index = index
        self.outputs = cell.outputs = []
        self.clear_pending = False

    def _add(self, output: NotebookNode) -> None:
        self._flush_streams()
        if self.clear_pending:
            self._clear_now()
        self.outputs.append(output)

    def _clear_now(self) -> None:
        self.clear_pending = False
        self.outputs[:] = []
        for entries in self.display_ids.values():
            entries[:] = [(i, o) for i, o in entries if i != self.index]

    def stream(self, name: str, text: str) -> None:
        """Buffer ``text`` written to stream ``name``, as a kernel's output stream does."""
        if not text:
            return
        with self.lock:
            now = time.monotonic()
            due = [
                (since, n)
                for n, (_, since) in self.pending.items()
                if now - since >= FLUSH_INTERVAL
            ]
            for _, n in sorted(due):
                self.flush_stream(n)
            buffered = self.pending.get(name)
            if buffered is None:
                self.pending[name] = [text, now]
            else:
                buffered[0] += text

    def flush_stream(self, name: str) -> None:
        """Record stream ``name``'s pending text as an output now."""
        with self.lock:
            buffered = self.pending.pop(name, None)
            if buffered is not None:
                self._emit(name, buffered[0])

    def _flush_streams(self) -> None:
        for name in ("stdout", "stderr", *self.pending):
            self.flush_stream(name)

    def _emit(self, name: str, text: str) -> None:
        with self.lock:
            if self.clear_pending:
                self._clear_now()
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last.output_type == "stream" and last.name == name:
                last.text += text
            else:
                self.outputs.append(new_output("stream", name=name, text=text))

    def display(self, data: dict, metadata: dict, transient: dict, update: bool) -> None:
        data, metadata = _clean(data), _jsonable(metadata)
        display_id = transient.get("display_id")
        with self.lock:
            self._flush_streams()
            if display_id:
                for _, out in self.display_ids.get(display_id, []):
                    out["data"], out["metadata"] = data, metadata
            if update:
                return
            out = new_output("display_data", data=data, metadata=metadata)
            if display_id:
                self.display_ids.setdefault(display_id, []).append((self.index, out))
            self._add(out)

    def result(self, data: dict, metadata: dict, count: int) -> None:
        with self.lock:
            self._add(
                new_output(
                    "execute_result",
                    data=_clean(data),
                    metadata=_jsonable(metadata),
                    execution_count=count,
                )
            )

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        with self.lock:
            self._add(
                new_output(
                    "error",
                    ename=ename,
                    evalue=redact(evalue),
                    traceback=[redact(line) for line in traceback],
                )
            )

    def clear(self, wait: bool) -> None:
        with self.lock:
            self._flush_streams()
            if wait:
                self.clear_pending = True
            else:
                self._clear_now()

    def finish(self) -> None:
        with self.lock:
            self._flush_streams()
        for out in self.outputs:
            if out.output_type == "stream":
                out.text = redact(out.text)


def _clean(data: dict) -> dict:
    """JSON-safe output data: bytes become base64 (as ipykernel does), text is redacted."""
    out = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif isinstance(value, str):
            if not mime.startswith("image/") or mime == "image/svg+xml":
                value = redact(value)
        else:
            value = _jsonable(value)
            text = json.dumps(value, ensure_ascii=False)
            if redact(text) != text:
                value = json.loads(redact(text))
        out[mime] = value
    return out


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


class SinkStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` while a cell runs."""

    def __init__(self, sink: OutputSink, name: str):
        self.sink, self.name = sink, name

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.sink.stream(self.name, text)
        return len(text)

    def flush(self) -> None:
        self.sink.flush_stream(self.name)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


# ---------------------------------------------------------------------- papermill's writes

_INPUT_PATH = re.compile(r'"input_path": "((?:[^"\\]|\\.)*)"')


def install_write_redaction() -> None:
    """Redact secrets in every notebook papermill writes that uses nbconductor (its text mentions
    ``nbconductor``): the injected parameters cell, outputs, error messages, at every save.

    papermill imports `nbconductor.handoff._engine` through its ``papermill.engine`` entry point, so this is
    in place for plain ``papermill`` runs with either engine, as for ``nbconductor run`` and ``batch``.
    The notebook in memory (what the kernel runs) is unchanged; only what is written is redacted.
    """
    from papermill.iorw import papermill_io

    if getattr(papermill_io.write, "_nbconductor", False):
        return
    write = papermill_io.write

    def redacting_write(buf, path, *args, **kwargs):
        if isinstance(buf, str) and (_EVERY_WRITE[0] or "nbconductor" in buf):
            match = _INPUT_PATH.search(buf)
            if match:
                _config_near(os.path.dirname(json.loads(f'"{match.group(1)}"')))
            buf = redactor().json_text(buf)
        return write(buf, path, *args, **kwargs)

    redacting_write._nbconductor = True  # type: ignore[attr-defined]
    papermill_io.write = redacting_write


_EVERY_WRITE = [0]  # > 0 while nbconductor itself runs a notebook


@contextlib.contextmanager
def redacting_every_write() -> Iterator[None]:
    """While nbconductor runs a notebook (``nbconductor run``, a batch row), redact every save
    papermill makes of it, even of a notebook that never mentions nbconductor."""
    install_write_redaction()
    _EVERY_WRITE[0] += 1
    try:
        yield
    finally:
        _EVERY_WRITE[0] -= 1


@lru_cache(maxsize=64)
def _config_near(folder: str) -> None:
    """Read the ``[redact]`` section of the config beside the notebook (the run reports a bad file)."""
    from .._config import load_config
    from .._errors import ConductorError

    try:
        load_config(start=folder or None)
    except (ConductorError, OSError):
        pass


# ------------------------------------------------------------------------- widget state


def _widget_registry() -> dict | None:
    module = sys.modules.get("ipywidgets.widgets.widget")
    return getattr(module, "_instances", None) if module is not None else None


def _widget_ids() -> set:
    registry = _widget_registry()
    return set(registry) if registry is not None else set()


def save_widget_state(nb: NotebookNode, before: set) -> None:
    """Save the state of widgets this notebook created in its metadata, as nbclient does; close them."""
    registry = _widget_registry()
    if not registry:
        return
    new = {k: w for k, w in list(registry.items()) if k not in before}
    if not new:
        return
    from ipywidgets.widgets.widget import _remove_buffers

    state = {}
    for model_id, widget in new.items():
        try:
            st, paths, buffers = _remove_buffers(widget.get_state())
        except Exception:  # noqa: BLE001 - a widget that cannot serialise is left out
            continue
        entry = {
            "model_name": st.get("_model_name"),
            "model_module": st.get("_model_module"),
            "model_module_version": st.get("_model_module_version"),
            "state": _jsonable(st),
        }
        if buffers:
            entry["buffers"] = [
                {
                    "data": base64.b64encode(bytes(b)).decode("ascii"),
                    "encoding": "base64",
                    "path": p,
                }
                for p, b in zip(paths, buffers, strict=False)
            ]
        state[model_id] = entry
    for widget in new.values():
        with contextlib.suppress(Exception):
            widget.close()
    if state:
        nb.metadata["widgets"] = {
            "application/vnd.jupyter.widget-state+json": {
                "state": state,
                "version_major": 2,
                "version_minor": 0,
            }
        }
