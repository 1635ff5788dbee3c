"""Recording a cell's output as nbformat outputs, the way nbclient records a kernel's messages.

Used by the in-process papermill engine (`nbconductor.engine`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._redact import redact

if TYPE_CHECKING:
    from nbformat import NotebookNode


def new_output(output_type: str, **fields: Any):
    from nbformat.v4 import new_output as make

    return make(output_type, **fields)


class OutputSink:
    """Turns what a cell prints and displays into nbformat outputs, the way nbclient does."""

    def __init__(self, nb: NotebookNode):
        self.nb = nb
        self.index = -1
        self.outputs: list = []
        self.clear_pending = False
        self.display_ids: dict[str, list[tuple[int, NotebookNode]]] = {}
        self.lock = threading.RLock()
        self.widgets_before = _widget_ids()

    def start(self, index: int, cell: NotebookNode) -> None:
        self.index = index
        self.outputs = cell.outputs = []
        self.clear_pending = False

    def _add(self, output: NotebookNode) -> None:
        if self.clear_pending:
            self._clear_now()
        self.outputs.append(output)

    def _clear_now(self) -> None:
        self.clear_pending = False
        self.outputs[:] = []
        for entries in self.display_ids.values():
            entries[:] = [(i, o) for i, o in entries if i != self.index]

    def stream(self, name: str, text: str) -> None:
        if not text:
            return
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
            self._add(new_output("execute_result", data=_clean(data), metadata=_jsonable(metadata),
                                 execution_count=count))

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        with self.lock:
            self._add(new_output("error", ename=ename, evalue=redact(evalue),
                                 traceback=[redact(line) for line in traceback]))

    def clear(self, wait: bool) -> None:
        with self.lock:
            if wait:
                self.clear_pending = True
            else:
                self._clear_now()

    def finish(self) -> None:
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

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


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
        entry = {"model_name": st.get("_model_name"), "model_module": st.get("_model_module"),
                 "model_module_version": st.get("_model_module_version"), "state": _jsonable(st)}
        if buffers:
            entry["buffers"] = [{"data": base64.b64encode(bytes(b)).decode("ascii"), "encoding": "base64",
                                 "path": p} for p, b in zip(paths, buffers, strict=False)]
        state[model_id] = entry
    for widget in new.values():
        with contextlib.suppress(Exception):
            widget.close()
    if state:
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
            "state": state, "version_major": 2, "version_minor": 0}}
