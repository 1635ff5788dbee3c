"""The graph widget bound to a pipeline: ``%conductor graph`` and the live view during a run."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from .._redact import redact_value
from .._snapshot import snapshot as _snapshot
from .graph import GraphWidget

__all__ = ["LiveGraph", "graph_widget", "snapshot"]


def snapshot(pipeline, *args, **kwargs) -> dict:
    """`nbconductor._snapshot.snapshot` with every string redacted: prompts, outputs and errors
    are shown in the graph widget and saved in the notebook with its state."""
    return redact_value(_snapshot(pipeline, *args, **kwargs))


def graph_widget(pipeline) -> GraphWidget:
    """A graph widget showing the pipeline's steps with their latest results."""
    snap = snapshot(pipeline)
    if not snap["run"]:
        snap["run"] = {"status": "not run yet"}
    return GraphWidget(snap)


class LiveGraph:
    """A graph widget that follows one run: pass `observe` as the run's observer.

    The steps the run will execute (``targets`` and their upstream; all steps by default)
    start as pending, turn running on their ``start`` event — with attempts, tokens and cost
    so far as ``attempt`` events arrive — and take their result on ``end``. Other steps keep
    their previous result. Updates are throttled to one per ``interval`` seconds (a pending
    one is sent when the interval has passed); a step ending is always sent at once.
    `finish` shows the run's final state.
    """

    def __init__(self, pipeline, *, targets: Iterable[str] | None = None, interval: float = 0.2):
        self.pipeline = pipeline
        graph = pipeline.graph
        targets = list(targets or [])
        self.planned: set[str] = graph.upstream(targets) if targets else set(graph.steps)
        self.results = {n: r for n, r in pipeline.results.items() if n not in self.planned}
        self.ended: set[str] = set()
        self.running: dict[str, float] = {}
        self.attempts: dict[str, list] = {}
        self.interval = interval
        self._before = pipeline.last_run
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._finished = False
        self._lock = threading.Lock()
        self.widget = GraphWidget(self._snapshot())

    def _run_line(self) -> dict[str, Any]:
        done = [self.results[n] for n in self.ended if not self.results[n].cached]
        tokens = [r.usage.total for r in done if r.usage.total is not None]
        costs = [r.cost for r in done]
        return {
            "status": "running",
            "tokens": sum(tokens) if tokens else None,
            "cost": sum(costs) if done and None not in costs else None,
            "now": time.time(),
        }

    def _snapshot(self) -> dict:
        return snapshot(
            self.pipeline, self.results, self.running, self._run_line(), attempts=self.attempts
        )

    def show(self) -> Any:
        """Display the widget; its static SVG is refreshed when the run ends (papermill, nbviewer)."""
        return self.widget.show()

    def observe(self, event: str, step: str, payload: Any) -> None:
        """The run observer: ``start`` / ``attempt`` / ``end`` events update the graph."""
        with self._lock:
            if self._finished:
                return
            if event == "start":
                self.running[step] = time.time()
                self.attempts[step] = []
            elif event == "attempt":
                if step not in self.running:
                    return
                self.attempts.setdefault(step, []).append(payload)
            elif event == "end":
                self.running.pop(step, None)
                self.attempts.pop(step, None)
                self.results[step] = payload
                self.ended.add(step)
            else:
                return  # streamed text: not drawn
            wait = self.interval - (time.monotonic() - self._last)
            if event == "end" or wait <= 0:
                self._send()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if not self._finished:
                self._send()

    def _send(self) -> None:
        # under self._lock
        self._last = time.monotonic()
        self.widget.update(self._snapshot())

    def finish(self, pipeline=None) -> None:
        """Show the final state: the run's results, or — if the run never completed (an
        interrupt, a definition error) — what finished, with the run marked stopped."""
        pipeline = pipeline or self.pipeline
        with self._lock:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.running.clear()
            if pipeline.last_run is not self._before:
                self.widget.update(snapshot(pipeline))
                return
            interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
            run = {**self._run_line(), "status": "interrupted" if interrupted else "stopped"}
            run.pop("now")
            self.widget.update(snapshot(pipeline, self.results, None, run))
