"""Tracing across processes and time: batch spans, Dask tasks, review decisions (`_trace`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import _trace as t
from ._states import FLAGGED


def batch_started(label: str, rows: int, config: Any = None) -> Callable[[str], None] | None:
    """Open a ``nbconductor.batch`` span; its rows' runs link to it through the environment.

    Returns the function that closes it (with the batch's status), or None when tracing is off.
    """
    if not t.wanted(config):
        return None
    tracing = t._setup(config)
    if tracing is None:
        return None
    batch_id = f"{label}-{int(time.time() * 1000):x}"
    attrs = {"nbconductor.batch.id": batch_id, "nbconductor.batch.rows": rows}
    span = tracing.start("nbconductor.batch", None, attrs)
    saved = {k: os.environ.get(k) for k in (t.LINK_ENV, t.BATCH_ENV)}
    os.environ[t.LINK_ENV], os.environ[t.BATCH_ENV] = tracing.traceparent(span), batch_id

    def close(status: str) -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        span.set_attribute("nbconductor.status", status)
        span.end()
        tracing.flush_soon()

    return close


def carried_env() -> dict[str, str]:
    """The tracing environment a Dask task takes to its worker: ``OTEL_*`` and the batch link,
    never ``*HEADERS*`` (they carry credentials; a worker keeps its own, like API keys)."""
    return {
        k: v
        for k, v in os.environ.items()
        if (k.startswith("OTEL_") and "HEADERS" not in k) or k in (t.LINK_ENV, t.BATCH_ENV)
    }


def stored(store: Any, result: Any) -> None:
    """Keep the step span's context with a flagged result, for its later review decision."""
    if result.state != FLAGGED or result.result_id is None:
        return
    state = t._step.get()
    span = state.span if state is not None else t._done.get()
    setter = getattr(store, "set_trace", None)
    if span is None or setter is None or not t._tracing:
        return
    setter(result.result_id, t._tracing.traceparent(span))


def decision(
    traceparent: str | None, result_id: int, step: str, decision: str, config=None
) -> None:
    """A review decision as a ``review.decision`` event on a short trace linked to its step."""
    if not traceparent or not t.wanted(config):
        return
    tracing = t._setup(config)
    if tracing is None:
        return
    attrs = {"nbconductor.result.id": result_id, "nbconductor.step": step}
    links = tracing.links(traceparent)
    span_attrs = dict(attrs)
    for link in links[:1]:  # the link's ids as attributes too: Phoenix (20.x) keeps no links
        span_attrs["nbconductor.step.trace_id"] = f"{link.context.trace_id:032x}"
        span_attrs["nbconductor.step.span_id"] = f"{link.context.span_id:016x}"
    span = tracing.start("nbconductor.review", None, span_attrs, links=links)
    span.add_event("review.decision", {"nbconductor.decision": decision, **attrs})
    span.end()
    tracing.flush_soon()
