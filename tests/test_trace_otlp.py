"""The hand-written OTLP/protobuf encoder (nbconductor/_trace_otlp.py) against the official one.

Every case is encoded both ways — ours and the SDK's ``encode_spans(...).SerializeToString()``
— and must give the same bytes; then our bytes are decoded with the official
``opentelemetry.proto`` classes and every field compared with the span it came from. The spans
are real: made by an SDK `TracerProvider` (roots, links, events, errors, remote parents, trace
state, limits that drop attributes) and by nbconductor's own light path in a run.
"""

from __future__ import annotations

import math

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from nbconductor import Pipeline, _trace
from nbconductor._trace_otlp import Encoder, varint

ODD_ATTRIBUTES = {
    "s": "text",
    "empty": "",
    "unicode": "é 漢字 🙂",
    "long": "x" * 300,
    "t": True,
    "f": False,
    "zero": 0,
    "neg": -1,
    "min": -(1 << 63),
    "max": (1 << 63) - 1,
    "big": 1 << 40,
    "pi": 3.25,
    "nan": math.nan,
    "negzero": -0.0,
    "strs": ("a", "", "b"),
    "ints": (1, -2, 3),
    "floats": (1.5, -0.5),
    "bools": (True, False),
    "nothing": (),
}


def provider(exporter, **kwargs) -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": "enc", "k": 3}), **kwargs)
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def sdk_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    tracer = provider(exporter).get_tracer("enc", "1.2", schema_url="https://schema/1")
    other = provider(exporter).get_tracer("other")  # another resource and scope: two groups
    remote = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("x", "y")]),
    )
    root = tracer.start_span("root", attributes=ODD_ATTRIBUTES, kind=SpanKind.SERVER)
    ctx = trace.set_span_in_context(root)
    child = tracer.start_span(
        "child",
        context=ctx,
        kind=SpanKind.CLIENT,
        links=[Link(remote, {"why": "batch", "n": 2}), Link(root.get_span_context())],
    )
    child.add_event("gate.result", {"gate.name": "len", "gate.passed": False, "gate.score": 0.5})
    child.add_event("bare")
    child.set_status(Status(StatusCode.ERROR, "went wrong: é"))
    child.end()
    under_remote = tracer.start_span(
        "under remote",
        context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
        kind=SpanKind.PRODUCER,
    )
    under_remote.set_status(Status(StatusCode.OK))
    under_remote.end()
    consumer = other.start_span("", kind=SpanKind.CONSUMER)  # no name
    consumer.end()
    root.end()
    limited = TracerProvider(
        span_limits=SpanLimits(
            max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1
        )
    )
    limited.add_span_processor(SimpleSpanProcessor(exporter))
    span = limited.get_tracer("lim").start_span(
        "limited", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(remote), Link(remote)]
    )
    span.add_event("e1", {"a": 1, "b": 2})
    span.add_event("e2")
    span.end()
    return list(exporter.get_finished_spans())


def light_spans(monkeypatch, tmp_path, params: dict | None = None) -> list[ReadableSpan]:
    """A run's spans on nbconductor's own provider: the root an SDK span, the rest light."""
    from nbconductor._config import Config

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    _trace.reset()
    tracing = _trace._setup(Config())
    exporter = InMemorySpanExporter()
    tracing.guard.inner, tracing.guard.address = exporter, None
    p = Pipeline(store=":memory:", root=tmp_path)
    p.step("a", "hi", model="offline:m", checks=["max_words(100)"])
    p.step("b", "{{ a }} again {{ x }}", model="offline:m", temperature=0.3, max_tokens=50)
    assert p.run(params or {"x": 1}).status in ("passed", "flagged")
    p.close()
    tracing.provider.force_flush()
    _trace.reset()
    return list(exporter.get_finished_spans())


def check_fields(encoded: bytes, spans: list[ReadableSpan]) -> None:
    """Decode with the official classes and compare every field with its span."""
    request = ExportTraceServiceRequest.FromString(encoded)
    decoded = [
        (rs, ss, pb) for rs in request.resource_spans for ss in rs.scope_spans for pb in ss.spans
    ]
    assert len(decoded) == len(spans)
    by_id = {s.context.span_id: s for s in spans}
    for rs, ss, pb in decoded:
        s = by_id[int.from_bytes(pb.span_id, "big")]
        assert value_map(rs.resource.attributes) == dict(s.resource.attributes)
        scope = s.instrumentation_scope
        assert (ss.scope.name, ss.scope.version) == (scope.name, scope.version or "")
        assert ss.schema_url == (scope.schema_url or "")
        assert int.from_bytes(pb.trace_id, "big") == s.context.trace_id
        assert pb.name == s.name
        assert pb.kind == s.kind.value + 1
        assert (pb.start_time_unix_nano, pb.end_time_unix_nano) == (s.start_time, s.end_time)
        parent = int.from_bytes(pb.parent_span_id, "big") if pb.parent_span_id else None
        assert parent == (s.parent.span_id if s.parent else None)
        assert pb.flags == (0x300 if s.parent and s.parent.is_remote else 0x100)
        assert same(value_map(pb.attributes), dict(s.attributes))
        assert pb.dropped_attributes_count == s.dropped_attributes
        assert [(e.name, e.time_unix_nano) for e in pb.events] == [
            (e.name, e.timestamp) for e in s.events
        ]
        for pe, e in zip(pb.events, s.events, strict=True):
            assert value_map(pe.attributes) == dict(e.attributes or {})
            assert pe.dropped_attributes_count == e.dropped_attributes
        assert pb.dropped_events_count == s.dropped_events
        assert [
            (int.from_bytes(pl.span_id, "big"), value_map(pl.attributes)) for pl in pb.links
        ] == [(ln.context.span_id, dict(ln.attributes or {})) for ln in s.links]
        assert pb.dropped_links_count == s.dropped_links
        assert (pb.status.code, pb.status.message) == (
            s.status.status_code.value,
            s.status.description or "",
        )


def value_map(kvs) -> dict:
    return {kv.key: plain(kv.value) for kv in kvs}


def plain(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(plain(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return value_map(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def same(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in ((a[k], b[k]) for k in a)
    )


def test_the_bytes_are_the_sdk_encoders_and_decode_field_for_field(monkeypatch, tmp_path):
    spans = sdk_spans()
    light = light_spans(monkeypatch, tmp_path)
    assert {s.name for s in light} >= {"nbconductor.run", "step a", "step b", "chat m"}
    assert any(e.name == "gate.result" for s in light for e in s.events)
    encoder = Encoder()
    for batch in (spans, light, spans[:1], light + spans, []):
        ours = encoder.request(batch)
        assert ours == encode_spans(batch).SerializeToString()
        check_fields(ours, batch)
    again = encoder.request(light)  # the resource and scope bytes now come from the cache
    assert again == encode_spans(light).SerializeToString()


def test_values_the_sdk_leaves_out_are_left_out():
    exporter = InMemorySpanExporter()
    span = provider(exporter).get_tracer("x").start_span("s")
    span.end()
    [done] = exporter.get_finished_spans()
    odd = {"ok": 1, "huge": 1 << 64, "surrogate": "\ud800", "obj": object(), "after": "kept"}
    readable = ReadableSpan(
        "s",
        done.context,
        None,
        done.resource,
        odd,
        instrumentation_scope=done.instrumentation_scope,
    )
    request = ExportTraceServiceRequest.FromString(Encoder().request([readable]))
    [pb] = request.resource_spans[0].scope_spans[0].spans
    assert value_map(pb.attributes) == {"ok": 1, "after": "kept"}


def test_content_goes_redacted_and_the_key_never_in_the_bytes(monkeypatch, tmp_path):
    monkeypatch.setenv(_trace.CONTENT_ENV, "true")
    canary = "sk-ant-" + "api03-" + "c4n4ry" * 6  # built at runtime: no key-shaped literal
    spans = light_spans(monkeypatch, tmp_path, {"x": f"key={canary}"})
    data = Encoder().request(spans)
    assert data == encode_spans(spans).SerializeToString()
    assert b"gen_ai.input.messages" in data and b"again key=[REDACTED]" in data
    assert canary.encode() not in data and canary[:14].encode() not in data


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**64 - 1])
def test_varints(n):
    from google.protobuf.internal.decoder import _DecodeVarint

    assert _DecodeVarint(varint(n), 0) == (n, len(varint(n)))
