"""Tracing set-up: the TracerProvider, the OTLP exporter and the guard around it.

Imported by `nbconductor._trace` only once tracing is on (it imports OpenTelemetry). Our own
provider honours the standard variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``), with ``[otel]`` in the config
filling in what the environment leaves unset; an application's own SDK provider is joined instead.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_DOWN_FOR = 30.0  # seconds a failed collector is not tried again (its spans are dropped)
_PROBE_TIMEOUT = 0.5  # seconds to connect to the collector before a batch after a quiet spell


class Guard(SpanExporter):
    """The exporter, guarded: a collector that fails is skipped for a while, and each run whose
    spans could not be sent gets one warning line on stderr (the SDK's own log lines are quieted)."""

    def __init__(self, inner: SpanExporter, endpoint: str, address: tuple | None = None):
        self.inner, self.endpoint, self.address = inner, endpoint, address
        self.down_until = 0.0
        self.up_at = -_DOWN_FOR  # when an export last succeeded
        self.runs: dict[int, str] = {}  # trace id → run id, for the warning
        self.warned: set[int] = set()
        self.lock = threading.Lock()
        self.failures = 0

    def expect(self, span: Any, run_id: str) -> None:
        with self.lock:
            self.runs[span.get_span_context().trace_id] = run_id
            if len(self.runs) > 10_000:  # a long batch: forget the oldest
                for key in list(self.runs)[:5_000]:
                    self.runs.pop(key, None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        now = time.monotonic()
        # The exporter retries an unreachable collector with backoff for up to its timeout (10 s),
        # which would hold the process at exit: one quick connect says first, unless it just worked.
        if now < self.down_until or (now - self.up_at > _DOWN_FOR and not self._reachable()):
            self.down_until = max(self.down_until, now + _DOWN_FOR)
            self._warn(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter's failure never reaches the run
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.up_at = time.monotonic()
        else:
            self.down_until = time.monotonic() + _DOWN_FOR
            self._warn(spans)
        return result

    def _reachable(self) -> bool:
        if self.address is None:
            return True
        try:
            socket.create_connection(self.address, timeout=_PROBE_TIMEOUT).close()
            return True
        except OSError:
            return False

    def _warn(self, spans: Sequence[ReadableSpan]) -> None:
        self.failures += 1
        with self.lock:
            fresh = {s.context.trace_id for s in spans if s.context} - self.warned
            self.warned |= fresh
        for trace_id in fresh:
            run = self.runs.get(trace_id)
            if run is None:
                continue
            print(
                f"nbconductor: tracing: could not send run {run}'s spans to {self.endpoint} "
                "(collector unreachable?); the run itself is unaffected",
                file=sys.stderr,
            )

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """nbconductor's tracer and what it needs: spans, contexts, links, flushing."""

    def __init__(self, otel: Any = None):
        from . import __version__

        app = trace.get_tracer_provider()
        self.own = not isinstance(app, TracerProvider)
        if self.own:
            self.provider, self.guard = _provider(otel)
        else:  # the application's provider: its exporters, its sampler, its resource
            self.provider, self.guard = app, Guard(_Nothing(), "the application's exporter")
        self.tracer = self.provider.get_tracer("nbconductor", __version__)

    def start(
        self,
        name: str,
        parent: Any,
        attributes: dict,
        *,
        links: list | None = None,
        client: bool = False,
    ) -> Any:
        return self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes=attributes,
            links=links or None,
        )

    def context(self, span: Any) -> Any:
        return trace.set_span_in_context(span)

    def error(self, span: Any, description: str) -> None:
        span.set_status(Status(StatusCode.ERROR, description))

    def traceparent(self, span: Any) -> str:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent", "")

    def links(self, traceparent: str | None) -> list:
        if not traceparent:
            return []
        ctx = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent}))
        span_context = ctx.get_span_context()
        return [Link(span_context)] if span_context.is_valid else []

    def flush_soon(self) -> None:
        """Export what is queued now, in a background thread (the run does not wait)."""
        if self.own:
            threading.Thread(target=self.provider.force_flush, daemon=True).start()

    def close(self) -> None:
        if self.own:
            self.provider.shutdown()


class _Nothing(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(otel: Any) -> tuple[TracerProvider, Guard]:
    resource = Resource.create()
    if resource.attributes.get("service.name", "").startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "nbconductor"}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    exporter, endpoint = _exporter(otel)
    guard = Guard(exporter, endpoint, _address(endpoint))
    provider.add_span_processor(BatchSpanProcessor(guard))
    # The guard says what went wrong, once per run; the SDK would log every failed batch.
    for name in ("opentelemetry.exporter", "opentelemetry.sdk.trace.export"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return provider, guard


def _exporter(otel: Any) -> tuple[SpanExporter, str]:
    env = os.environ
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or getattr(otel, "protocol", None)
        or "http/protobuf"
    )
    endpoint = None  # the exporter reads the environment itself
    headers = None
    from_env = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not from_env and otel is not None and otel.endpoint:
        endpoint = otel.endpoint.rstrip("/")
        if protocol != "grpc" and not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
    if (
        otel is not None
        and otel.headers
        and not (
            env.get("OTEL_EXPORTER_OTLP_HEADERS") or env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        )
    ):
        headers = dict(otel.headers)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
    shown = endpoint or from_env or ("localhost:4317" if protocol == "grpc" else "localhost:4318")
    return exporter, shown


def _address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of an OTLP endpoint, for the reachability probe (None: do not probe)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None
