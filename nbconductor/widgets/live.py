"""The graph widget bound to a pipeline: ``%conductor graph`` and the live view during a run."""

from __future__ import annotations

import threading
import time
from typing import Any

from .._snapshot import snapshot
from .graph import GraphWidget


def graph_widget(pipeline) -> GraphWidget:
    """A graph widget showing the pipeline's steps with their latest results."""
    return GraphWidget(snapshot(pipeline))


class LiveGraph:
    """Observes a run's events and updates a graph widget (throttled) as steps start and end."""

    def __init__(self, pipeline, interval: float = 0.2):
        self.pipeline = pipeline
        self.results = dict(pipeline.results)
        self.running: dict[str, float] = {}
        self.widget = GraphWidget(self._snapshot({"status": "running"}))
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def _snapshot(self, run: dict[str, Any]) -> dict:
        return snapshot(self.pipeline, self.results, self.running, run)

    def show(self) -> None:
        # The widget's own show() refreshes the saved static SVG when the run ends, so
        # papermill outputs, nbviewer and GitHub show the final states.
        self.widget.show()

    def observe(self, event: str, step: str, payload: Any) -> None:
        with self._lock:
            if event == "start":
                self.running[step] = time.time()
            elif event == "end":
                self.running.pop(step, None)
                self.results[step] = payload
            else:
                return
            now = time.monotonic()
            if event == "end" or now - self._last >= self.interval:
                self._last = now
                self.widget.update(self._snapshot({"status": "running"}))

    def finish(self, pipeline) -> None:
        with self._lock:
            self.running.clear()
            self.widget.update(snapshot(pipeline))
