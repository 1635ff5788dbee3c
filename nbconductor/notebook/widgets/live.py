"""The graph widget bound to a pipeline: ``%conductor graph`` and the live view during a run."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..._redact import redact_value
from ..._states import INTERRUPTED, RUNNING
from ...render._snapshot import node, run_line, step_model, step_node
from ...render._snapshot import snapshot as _snapshot
from .graph import GraphWidget

__all__ = ["LiveGraph", "graph_widget", "snapshot"]


def snapshot(pipeline, *args, **kwargs) -> dict:
    """`nbconductor.render._snapshot.snapshot` with every string redacted: prompts, outputs and errors
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
    their previous result. `finish` shows the run's final state.

    Updates are incremental and throttled: an event only marks its step changed (constant
    time); at most once per ``interval`` seconds the changed nodes — and only those — are
    redrawn and sent, by the event that finds the interval passed or by a timer for the last
    ones. So a run of N steps costs O(N) here, not O(N²), and a widget gets at most
    ``1 / interval`` updates a second. `finish` sends the exact final state once.
    """

    def __init__(self, pipeline, *, targets: Iterable[str] | None = None, interval: float = 0.25):
        self.pipeline = pipeline
        self.graph = graph = pipeline.graph  # built once: building parses every step
        targets = list(targets or [])
        self.planned: set[str] = graph.upstream(targets) if targets else set(graph.steps)
        self.results = {n: r for n, r in pipeline.results.items() if n not in self.planned}
        self.ended: set[str] = set()
        self.running: dict[str, float] = {}
        self.attempts: dict[str, list] = {}
        self.interval = interval
        self.sends = 0  # widget updates sent during the run, for tests and benchmarks
        self._models = {name: step_model(pipeline, step) for name, step in graph.steps.items()}
        self._dirty: set[str] = set()
        self._tokens = 0
        self._any_tokens = False
        self._cost = 0.0
        self._cost_known = True
        self._paid = 0  # steps that ended computed, not cached: what the totals add up
        self._before = pipeline.last_run
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._finished = False
        self._lock = threading.Lock()
        # Planned steps start pending: a name, a kind and a model, nothing to redact.
        nodes = [
            node(name, graph.steps[name], None, None, self._models[name])
            if name in self.planned
            else redact_value(self._node(name))
            for name in graph.order()
        ]
        edges = [list(e) for e in graph.edges]
        self.widget = GraphWidget({"nodes": nodes, "edges": edges, "run": self._run_line()})

    def _run_line(self) -> dict[str, Any]:
        return {
            "status": RUNNING,
            "tokens": self._tokens if self._any_tokens else None,
            "cost": self._cost if self._paid and self._cost_known else None,
            "now": time.time(),
        }

    def show(self) -> Any:
        """Display the widget; its static SVG is refreshed when the run ends (papermill, nbviewer)."""
        return self.widget.show()

    def observe(self, event: str, step: str, payload: Any) -> None:
        """The run observer: ``start`` / ``attempt`` / ``end`` events update the graph."""
        with self._lock:
            if self._finished or step not in self.graph.steps:
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
                if step not in self.ended and not payload.cached:
                    self._paid += 1
                    if payload.usage.total is not None:
                        self._tokens += payload.usage.total
                        self._any_tokens = True
                    if payload.cost is None:
                        self._cost_known = False
                    else:
                        self._cost += payload.cost
                self.ended.add(step)
            else:
                return  # streamed text: not drawn
            self._dirty.add(step)
            wait = self.interval - (time.monotonic() - self._last)
            if wait <= 0:
                self._send()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if not self._finished and self._dirty:
                self._send()

    def _node(self, name: str) -> dict:
        return step_node(
            self.pipeline,
            name,
            self.graph.steps[name],
            self._models.get(name),
            self.results.get(name),
            self.running.get(name),
            self.attempts.get(name, ()),
        )

    def _send(self) -> None:
        # under self._lock
        self._last = time.monotonic()
        changed = redact_value([self._node(name) for name in self._dirty])  # one redactor a send
        self._dirty.clear()
        self.widget.patch(changed, self._run_line())
        self.sends += 1

    def finish(self, pipeline=None) -> None:
        """Show the final state: the run's results, or — if the run never completed (an
        interrupt, a definition error) — what finished, with the run marked stopped.

        The final state is exact: every node whose result differs from what was last drawn is
        redrawn (only those: the others are already right), with the run's own line."""
        pipeline = pipeline or self.pipeline
        with self._lock:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.running.clear()
            self.attempts.clear()
            if pipeline.last_run is not self._before:
                if any(pipeline.steps.get(n) is not s for n, s in self.graph.steps.items()) or len(
                    pipeline.steps
                ) != len(self.graph.steps):
                    self.widget.update(snapshot(pipeline))  # the steps changed meanwhile
                    return
                final = pipeline.results
                for name in self.graph.steps:
                    if final.get(name) is not self.results.get(name):
                        self.results[name] = final.get(name)
                        self._dirty.add(name)
                run = run_line(pipeline)
            else:
                interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
                run = {**self._run_line(), "status": INTERRUPTED if interrupted else "stopped"}
                run.pop("now")
                self._dirty.update(self.graph.steps)  # running ones drawn as what they are now
            changed = redact_value([self._node(name) for name in self._dirty])
            self._dirty.clear()
            self.widget.patch(changed, redact_value(run))
