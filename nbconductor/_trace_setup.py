"""Tracing set-up: the TracerProvider, the OTLP exporter and the guard around it.

Imported by `nbconductor._trace` only once tracing is on (it imports OpenTelemetry). Our own
provider honours the standard variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``), with ``[otel]`` in the config
filling in what the environment leaves unset; an application's own SDK provider is joined instead.
Our provider's child spans are `_Light` (a quarter of an SDK `Span`'s cost); its OTLP/HTTP
exporter writes the protobuf itself (`_trace_otlp`) and sends on a kept-open connection
(`_trace_http`); the `Guard` keeps a down collector from costing the run (no encoding, no
retries, no spans while it cannot be reached, one warning line per run).
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
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

_PROPAGATOR = TraceContextTextMapPropagator()
_DOWN_FOR = 30.0  # seconds a failed collector is not tried again (its spans are dropped)
_PROBE_TIMEOUT = 0.5  # seconds to connect to the collector before a batch after a quiet spell
_PROBE_EVERY = 5.0  # seconds between connects to a collector that could not be reached
#: The SDK's built-in samplers: each decides a child of a sampled local parent as sampled (the
#: parent-based ones by the parent, the ratio one by the trace id its root was sampled on).
_BUILTIN_SAMPLERS = {
    "",
    "always_on",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}
_UNSET = Status(StatusCode.UNSET)


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
        self.probing = False
        self.stopped = threading.Event()

    def expect(self, span: Any, run_id: str) -> None:
        with self.lock:
            self.runs[span.get_span_context().trace_id] = run_id
            if len(self.runs) > 10_000:  # a long batch: forget the oldest
                for key in list(self.runs)[:5_000]:
                    self.runs.pop(key, None)

    def down(self, run_id: str) -> bool:
        """Whether the collector failed in the last `_DOWN_FOR` seconds, or cannot be reached
        still (`_probe`); if so, ``run_id`` gets its warning line now, and the caller builds no
        spans (they would be dropped unsent)."""
        if time.monotonic() >= self.down_until:
            return False
        self._say(run_id)
        return True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        now = time.monotonic()
        # The exporter retries an unreachable collector with backoff for up to its timeout (10 s),
        # which would hold the process at exit: one quick connect says first, unless it just worked.
        if now < self.down_until:
            self._failed(spans, unreachable=False)
            return SpanExportResult.FAILURE
        if now - self.up_at > _DOWN_FOR and not self._reachable():
            self._failed(spans, unreachable=True)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter's failure never reaches the run
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.up_at = time.monotonic()
        else:
            self._failed(spans, unreachable=not self._reachable())
        return result

    def _failed(self, spans: Sequence[ReadableSpan], unreachable: bool) -> None:
        self.down_until = max(self.down_until, time.monotonic() + _DOWN_FOR)
        if unreachable and self.address is not None and not self.probing:
            self.probing = True
            threading.Thread(target=self._probe, name="nbconductor-otlp-probe", daemon=True).start()
        self._warn(spans)

    def _probe(self) -> None:
        """While the collector cannot be reached, keep it known down — runs build no spans,
        even those started more than `_DOWN_FOR` s after the failure — connecting every
        `_PROBE_EVERY` s; once it answers, the next run is traced again."""
        try:
            while not self.stopped.wait(_PROBE_EVERY):
                if self._reachable():
                    self.down_until = 0.0
                    return
                self.down_until = max(self.down_until, time.monotonic() + _DOWN_FOR)
        finally:
            self.probing = False

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
            if run is not None:
                self._say(run)

    def _say(self, run_id: str) -> None:
        print(
            f"nbconductor: tracing: could not send run {run_id}'s spans to {self.endpoint} "
            "(collector unreachable?); the run itself is unaffected",
            file=sys.stderr,
        )

    def shutdown(self) -> None:
        self.stopped.set()
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
        self.light = self.own and _light_allowed()
        self.scope = InstrumentationScope("nbconductor", __version__)

    def start(
        self,
        name: str,
        parent: Any,
        attributes: dict,
        *,
        links: list | None = None,
        client: bool = False,
    ) -> Any:
        """A span under ``parent`` (a span; None: a trace's root)."""
        context = None
        if parent is not None:
            up = parent.get_span_context()
            if self.light and not links and up.is_valid and up.trace_flags.sampled:
                return _Light(self, name, up, attributes, client)
            context = trace.set_span_in_context(parent)
        return self.tracer.start_span(
            name,
            context=context,
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes=attributes,
            links=links or None,
        )

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

    def drain(self, seconds: float) -> None:
        """Export what is queued now and wait for it, at most ``seconds``."""
        if self.own:
            self.provider.force_flush(int(seconds * 1000))

    def close(self) -> None:
        if self.own:
            self.provider.shutdown()


class _Light(Span):
    """A child span of our own provider, handed to its processors as a `ReadableSpan` at its end.

    The SDK's `Span` validates each attribute, takes a lock per call, asks the sampler, and
    builds bounded containers — about three quarters of a span's cost, on no-op steps as much
    as the step itself. Our own provider has one batch processor (no ``on_start``), a sampler
    whose decision for a child of a sampled parent is fixed, and no span limits (`_light_allowed`);
    the attributes are nbconductor's own (str, bool, int, float, lists of str). Roots, linked
    spans and an application's provider keep the SDK's path.
    """

    __slots__ = (
        "_tracing",
        "_name",
        "_context",
        "_up",
        "_attrs",
        "_kind",
        "_start",
        "_events",
        "_status",
    )

    def __init__(self, tracing: Tracing, name: str, up: SpanContext, attrs: dict, client: bool):
        self._context = SpanContext(
            up.trace_id,
            tracing.provider.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=up.trace_flags,
            trace_state=up.trace_state,
        )
        self._tracing, self._name, self._up, self._attrs = tracing, name, up, dict(attrs)
        self._kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        self._start, self._events, self._status = time.time_ns(), [], _UNSET

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._start is not None

    def update_name(self, name: str) -> None:
        self._name = name

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        self.add_event("exception", {"exception.type": type(exception).__name__})

    def set_attributes(self, attributes: dict) -> None:
        self._attrs.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self._attrs[key] = value

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None):
        self._events.append(Event(name, attributes, timestamp))

    def set_status(self, status: Any, description: str | None = None) -> None:
        self._status = status if isinstance(status, Status) else Status(status, description)

    def end(self, end_time: int | None = None) -> None:
        if self._start is None:
            return
        tracer = self._tracing.tracer
        # as the SDK keeps them: sequences immutable, None dropped
        attrs = {
            k: tuple(v) if type(v) is list else v for k, v in self._attrs.items() if v is not None
        }
        readable = ReadableSpan(
            self._name,
            self._context,
            self._up,
            tracer.resource,
            attrs,
            tuple(self._events),
            (),
            self._kind,
            status=self._status,
            start_time=self._start,
            end_time=end_time or time.time_ns(),
            instrumentation_scope=self._tracing.scope,
        )
        self._start = None
        tracer.span_processor.on_end(readable)


def _light_allowed() -> bool:
    """Whether our provider's children can take `_Light`: a built-in sampler, no span limits."""
    env = os.environ
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    return sampler in _BUILTIN_SAMPLERS and not any(
        k.startswith(("OTEL_SPAN_", "OTEL_ATTRIBUTE_", "OTEL_EVENT_", "OTEL_LINK_"))
        and k.endswith("_LIMIT")
        for k in env
    )


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
    if protocol == "grpc":  # the SDK's exporter and encoder (its stub serializes messages)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
    else:
        exporter = _http_exporter()(endpoint=endpoint, headers=headers)
    shown = endpoint or from_env or ("localhost:4317" if protocol == "grpc" else "localhost:4318")
    return exporter, shown


def _http_exporter() -> type:
    """The SDK's OTLP/HTTP exporter with our encoder (`_trace_otlp`: the same bytes, a fraction
    of the CPU), sending with the exporter's own headers, compression and timeout: to a plain
    ``http://`` endpoint on a kept-open connection (`_trace_http`), otherwise — https, proxies,
    and any batch the collector did not take at once — through the exporter's own HTTP client
    (TLS, retries with backoff). Where that client is not there (another SDK version) or the
    SDK's own export metrics are on, the exporter is the SDK's, unchanged."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from ._trace_http import Sender, usable
    from ._trace_otlp import Encoder

    class Exporter(OTLPSpanExporter):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            client = getattr(self, "_client", None)
            metrics = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
            self._ours = callable(getattr(client, "export", None)) and (
                metrics.strip().lower() != "true"
            )
            self._encoder, self._sender = Encoder(), None
            parts = ("_headers", "_timeout", "_compress")
            if self._ours and all(hasattr(client, a) for a in parts) and usable(self._endpoint):
                self._sender = Sender(
                    self._endpoint, client._headers, client._timeout, client._compress
                )

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if not self._ours or getattr(self, "_shutdown", False):
                return super().export(spans)
            try:
                data = self._encoder.request(spans)
            except Exception:  # noqa: BLE001 - the SDK's encoder then says what it cannot encode
                return super().export(spans)
            limit = getattr(self, "_max_request_size", 0) or 0
            if limit > 0 and len(data) > limit:
                return super().export(spans)  # the SDK drops it, with its own log line
            if self._sender is not None and self._sender.send(data):
                return SpanExportResult.SUCCESS
            # https, a proxy, an error answer: the SDK's client, its retries and backoff
            ok = self._client.export(data).success
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

        def shutdown(self) -> None:
            if self._sender is not None:
                self._sender.close()
            super().shutdown()

    return Exporter


def _address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of an OTLP endpoint, for the reachability probe (None: do not probe)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None
