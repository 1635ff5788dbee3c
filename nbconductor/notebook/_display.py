"""How step outputs and run progress look in a notebook (IPython display only, no widgets)."""

from __future__ import annotations

import base64
import html
import json
import threading
import time
from typing import Any

from IPython.core.formatters import format_display_data
from IPython.display import HTML, JSON, Markdown, display

from .._format import GLYPHS, fmt_cost, fmt_tokens, gate_mark
from .._redact import redact, redactor
from .._states import FAILED, FLAGGED, PASSED, SKIPPED
from .._summary import pngs, run_images
from .._types import StepResult


def footer(result: StepResult) -> str:
    """One line about a step result: state, model, attempts, tokens, cost, time."""
    parts = [f"{GLYPHS.get(result.state, '')} {result.step}", result.state]
    if result.model:
        parts.append(result.model)
    if result.items is not None:
        parts.append(f"{result.items} items")
    if result.attempts:
        n = len(result.attempts)
        parts.append(f"{n} attempt{'s' if n != 1 else ''}")
    if result.usage.total is not None:
        est = result.usage.estimated
        parts.append(
            f"{fmt_tokens(result.usage.total, estimated=est)} tokens" + " (estimated)" * est
        )
    if result.cost is not None and result.model:
        parts.append(fmt_cost(result.cost))
    if result.latency is not None:
        parts.append(f"{result.latency:.2f}s")
    for g in result.gates:
        mark = gate_mark(g.passed)
        score = f" {g.score:.2f}" if g.score is not None and g.name == "rubric" else ""
        parts.append(f"{g.name} {mark}{score}")
    return " · ".join(parts)


def show_result(result: StepResult):
    """Display a step's output inline, then its footer; secrets in either are redacted.

    Returns the footer's display handle (`mark_stale` updates it)."""
    out = result.output
    clean = redactor()
    if result.state == SKIPPED:
        pass
    elif pngs(out):
        for i, png in enumerate(pngs(out)):  # full size, tagged with its step (batch files them)
            data, metadata = image_bundle(result.step, png, i if isinstance(out, list) else None)
            display(data, metadata=metadata, raw=True)
    elif hasattr(out, "model_dump"):
        display(JSON(clean.value(out.model_dump(mode="json")), expanded=True))
    elif isinstance(out, str):
        display(Markdown(clean(out)))
    elif isinstance(out, list) and out and all(isinstance(x, str) for x in out):
        display(Markdown(clean("\n\n---\n\n".join(out))))
    elif isinstance(out, (dict, list)):
        display(_json_bundle(clean.value(out)), raw=True)
    elif out is not None:
        data, metadata = format_display_data(out)  # its rich reprs, each redacted
        display(_redact_bundle(data), metadata=metadata, raw=True)
    flagged = [g for g in result.gates if not g.passed]
    text = footer(result)
    if result.error:
        text += f"\n{result.error}"
    elif flagged and result.state == FLAGGED:
        text += "\n" + "\n".join(f"⚑ {g.name}: {g.feedback}" for g in flagged)
    text = clean(text)
    color = {FAILED: "#b42318", FLAGGED: "#b54708"}.get(result.state, "#667085")
    return display(_footer_bundle(text, color), raw=True, display_id=True)


def _footer_bundle(text: str, color: str) -> dict:
    return {
        "text/plain": text,
        "text/html": f'<pre style="color:{color};font-size:0.85em;margin:0;white-space:pre-wrap">'
        f"{html.escape(text)}</pre>",
    }


def mark_stale(handle, result: StepResult, why: str) -> None:
    """Add ``why`` (the output above is stale) to a footer shown by `show_result`."""
    if handle is None:
        return
    text = redactor()(f"{footer(result)}\n⟳ stale: {why}")
    handle.update(_footer_bundle(text, "#b54708"), raw=True)


#: width in pixels of an image step's thumbnail in the run summary
THUMBNAIL_WIDTH = 160


def image_bundle(
    step: str, png: bytes, index: int | None = None, width: int | None = None
) -> tuple[dict, dict]:
    """A display bundle for one image of ``step`` (item ``index`` of a map), ``width`` pixels
    wide if given. Its metadata names the step, so `nbconductor batch` can file the image."""
    label = step if index is None else f"{step}[{index}]"
    data = {
        "image/png": base64.b64encode(png).decode("ascii"),
        "text/plain": f"<image {label}, {len(png):,} bytes>",
    }
    tag: dict[str, Any] = {"step": step}
    if index is not None:
        tag["index"] = index
    metadata: dict[str, Any] = {"nbconductor": tag}
    if width:
        metadata["image/png"] = {"width": width}
    return data, metadata


def show_images(run) -> None:
    """A thumbnail of every image a run produced, each under its step's name; the full size
    is in ``%conductor show STEP``."""
    for step, images in run_images(run):
        n = len(images)
        what = "1 image" if n == 1 else f"{n} images"
        display(Markdown(f"**{step}** · {what} · full size: `%conductor show {step}`"))
        mapped = isinstance(run.results[step].output, list)
        for i, png in enumerate(images):
            data, metadata = image_bundle(step, png, i if mapped else None, THUMBNAIL_WIDTH)
            display(data, metadata=metadata, raw=True)


def _json_bundle(value: Any) -> dict:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return {"application/json": json.loads(json.dumps(value, default=str)), "text/plain": text}


class LiveText:
    """Streams a step's text into one output area, throttled; `close` removes it.

    What is shown is the accumulated text redacted as a whole (a key split across chunks is still
    found), without the last characters that may be the first part of a secret still arriving.
    """

    def __init__(self, interval: float = 0.15):
        self.handle = None
        self.buffer: dict[str, str] = {}
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: str, step: str, payload: Any) -> None:
        if event == "attempt" and getattr(payload, "outcome", None) != PASSED:
            with self._lock:
                self.buffer.pop(step, None)  # a retry streams afresh, not after the cut text
            return
        if event != "text":
            return
        with self._lock:
            self.buffer[step] = self.buffer.get(step, "") + payload
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            preview = redactor().preview
            text = "\n\n".join(
                f"**{name}** (streaming…)\n\n{preview(t)}" for name, t in self.buffer.items()
            )
            if self.handle is None:
                self.handle = display(Markdown(text), display_id=True)
            else:
                self.handle.update(Markdown(text))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update(HTML(""))


def install_shell_redaction(shell) -> None:
    """Redact what ``shell`` shows: tracebacks, `UsageError` lines and the text of every display
    (summaries, tables, outputs), in Jupyter, papermill's kernel and the in-process engine alike."""
    publisher = shell.display_pub
    if not getattr(publisher, "_nbc_redacting", False):
        publish = publisher.publish

        def _publish(data, *args, **kwargs):
            return publish(_redact_bundle(data), *args, **kwargs)

        publisher.publish, publisher._nbc_redacting = _publish, True
    if getattr(shell, "_nbc_redacting", False):
        return
    show_traceback, show_usage_error = shell._showtraceback, shell.show_usage_error

    def _showtraceback(etype, evalue, stb):
        text = str(evalue)
        clean = redact(text)
        return show_traceback(
            etype, clean if clean != text else evalue, [redact(line) for line in stb]
        )

    def _show_usage_error(exc):
        text = str(exc)
        clean = redact(text)
        return show_usage_error(type(exc)(clean) if clean != text else exc)

    shell._showtraceback, shell.show_usage_error = _showtraceback, _show_usage_error
    shell._nbc_redacting = True


def _redact_bundle(data: Any) -> Any:
    """A display's mime bundle with its text redacted (binary images left alone)."""
    if not isinstance(data, dict):
        return data
    clean = redactor()
    return {
        k: clean.value(v) if k[:6] != "image/" or k == "image/svg+xml" else v
        for k, v in data.items()
    }
