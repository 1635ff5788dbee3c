"""Our OTLP/HTTP exporter's sending (nbconductor/_trace_http.py, _trace_setup._http_exporter)
against a real loopback HTTP server that records what it received: the exporter's headers and
compression, one kept-open connection, a connection the server dropped, and an error answer
handed to the SDK's own client (its retry). Phoenix receiving the same requests is in
tests/test_trace.py."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nbconductor._trace_http import usable
from nbconductor._trace_setup import _http_exporter


class Collector:
    """A loopback OTLP/HTTP receiver: answers ``statuses`` in turn (then 200), records each
    request (client port, path, headers, body), and drops the connection after ``drop_after``
    answers without saying so (a collector's idle timeout)."""

    def __init__(self, statuses=(), drop_after: int | None = None):
        self.statuses, self.drop_after = list(statuses), drop_after
        self.requests: list[tuple[int, str, dict, bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append(
                    (self.client_address[1], self.path, dict(self.headers), body)
                )
                status = collector.statuses.pop(0) if collector.statuses else 200
                self.send_response(status)
                if status != 200:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                if collector.drop_after and len(collector.requests) == collector.drop_after:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "http-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("child", attributes={"n": 1}):
            pass
    return list(exporter.get_finished_spans())


def test_headers_compression_and_one_kept_connection(spans, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=nbc,authorization=Bearer t")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    collector = Collector()
    try:
        exporter = _http_exporter()(endpoint=collector.url)
        assert exporter._sender is not None  # plain http, no proxy: the kept connection
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        collector.close()
    (port1, path, headers, body), (port2, _, _, body2) = collector.requests
    assert port1 == port2  # the second request went on the same connection
    assert path == "/v1/traces"
    low = {k.lower(): v for k, v in headers.items()}
    assert low["content-type"] == "application/x-protobuf"
    assert low["content-encoding"] == "gzip"
    assert low["x-team"] == "nbc" and low["authorization"] == "Bearer t"
    assert low["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert gzip.decompress(body) == encode_spans(spans).SerializeToString()
    assert gzip.decompress(body2) == encode_spans(spans[:1]).SerializeToString()


def test_a_dropped_connection_is_reopened_once(spans):
    collector = Collector(drop_after=1)
    try:
        exporter = _http_exporter()(endpoint=collector.url)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # the kept one was closed
        exporter.shutdown()
    finally:
        collector.close()
    assert len(collector.requests) == 2  # nothing sent twice
    assert collector.requests[0][0] != collector.requests[1][0]


def test_an_error_answer_goes_to_the_sdk_client_and_its_retries(spans):
    collector = Collector(statuses=[503, 503])
    try:
        exporter = _http_exporter()(endpoint=collector.url)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        collector.close()
    # ours got 503, the SDK's client got 503 and retried after Retry-After: 0
    bodies = [body for _, _, _, body in collector.requests]
    assert len(bodies) == 3 and len(set(bodies)) == 1
    assert bodies[0] == encode_spans(spans).SerializeToString()


def test_a_permanent_error_fails_the_export(spans):
    collector = Collector(statuses=[400, 400])
    try:
        exporter = _http_exporter()(endpoint=collector.url)
        assert exporter.export(spans) is SpanExportResult.FAILURE
        exporter.shutdown()
    finally:
        collector.close()
    assert len(collector.requests) == 2  # ours, then the SDK's (400 is not retried)


def test_only_plain_http_without_proxies_skips_requests(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert usable("http://127.0.0.1:4318/v1/traces", {})
    assert not usable("https://cloud.langfuse.com/api/public/otel/v1/traces", {})
    assert not usable("http://collector:4318/v1/traces", {"HTTP_PROXY": "http://proxy:3128"})
    assert not usable("http://collector:4318/v1/traces", {"all_proxy": "socks5://p:1080"})
    assert not usable(
        "http://c:4318/v1/traces", {"OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER": "x"}
    )
    (tmp_path / ".netrc").write_text("machine collector login a password b\n")
    assert not usable("http://collector:4318/v1/traces", {})
    exporter = _http_exporter()(endpoint="https://127.0.0.1:9/v1/traces")
    assert exporter._sender is None and exporter._ours  # https: the SDK's client sends
    exporter.shutdown()
