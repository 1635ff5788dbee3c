"""Tracing: runs exported over OTLP to a real Arize Phoenix, read back through its REST API.

The ``phoenix`` fixture starts ``phoenix serve`` (from tests/run.sh's cached virtualenv,
``~/.cache/nbconductor/phoenix``, or ``$NBCONDUCTOR_PHOENIX``) on free loopback ports with its
working directory in a temporary folder; each test sends to its own Phoenix project (the
``openinference.project.name`` resource attribute) and reads ``/v1/projects/<name>/spans``.
Model calls go through the official SDKs to the loopback fake API (tests/fakeapi.py). The unit
tests at the end use the SDK's in-memory exporter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import FAKE_ANTHROPIC_KEY
from dask_cluster import dask_cluster
from fakeapi import Error, JSONText, Slow, Text, ToolCall
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from nbconductor import Pipeline, _trace
from nbconductor._trace_setup import Guard, Tracing, _Nothing

WRITER = "anthropic:claude-haiku-4-5"
JUDGE = "anthropic:claude-opus-4-8"
PHOENIX = os.environ.get("NBCONDUCTOR_PHOENIX") or str(
    Path.home() / ".cache" / "nbconductor" / "phoenix" / "bin" / "phoenix"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Phoenix:
    def __init__(self, url: str, grpc: str):
        self.url, self.grpc = url, grpc

    def spans(self, project: str, until=lambda spans: bool(spans), timeout: float = 30.0) -> list:
        """The project's spans, polled until ``until(spans)`` (ingestion is asynchronous)."""
        deadline, spans = time.time() + timeout, []
        while time.time() < deadline:
            try:
                spans = get_json(f"{self.url}/v1/projects/{project}/spans?limit=1000")["data"]
            except urllib.error.HTTPError:  # the project appears with its first span
                spans = []
            if until(spans):
                return spans
            time.sleep(0.2)
        return spans


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    assert Path(PHOENIX).exists(), f"{PHOENIX} missing: tests/run.sh installs Phoenix there"
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = free_port(), free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = open(work / "phoenix.log", "w")
    proc = subprocess.Popen(
        [PHOENIX, "serve"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (work / "phoenix.log").read_text()[-2000:]
                assert time.time() < deadline, "phoenix serve did not come up in 180 s"
                time.sleep(0.5)
        yield Phoenix(url, f"http://127.0.0.1:{grpc}")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def traced(monkeypatch, phoenix):
    """Tracing on through the standard variables, to a project of this test's own."""
    project = f"nbc-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.url)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nbc-tests")
    monkeypatch.delenv(_trace.CONTENT_ENV, raising=False)
    _trace.reset()
    yield project
    _trace.reset()  # flushes, and the next test sets up with its own variables


def flush() -> None:
    assert _trace._tracing, "tracing was never set up"
    _trace._tracing.provider.force_flush()


def is_judge(body) -> bool:
    return "<rubric>" in json.dumps(body)


def by_name(spans, name):
    found = [s for s in spans if s["name"] == name]
    assert found, f"no span {name!r} among {sorted({s['name'] for s in spans})}"
    return found


def newsletter(tmp_path, fast_config) -> Pipeline:
    p = Pipeline(store=tmp_path / "store.sqlite", config=fast_config, root=tmp_path)
    p.step("en", "Write a short newsletter about {{ topic }}.", model=WRITER, temperature=0.3)
    p.step("fr", "Écris une courte lettre sur {{ topic }}.", model=WRITER, max_tokens=300)
    p.rubric("en", "- Under 50 words?", judge=JUDGE, threshold=0.5)
    p.step("both", "en + fr", python=True)
    return p


def test_a_run_reaches_phoenix_as_one_trace(fake_api, traced, phoenix, tmp_path, fast_config):
    sent = []

    def reply(body):
        if is_judge(body):
            return JSONText({"score": 0.9, "feedback": "fine", "suggested_edit": ""}, 100, 20)
        n = len(sent) + 1
        sent.append(n)
        return Slow(0.4, Text(f"draft {n}", input_tokens=10 + n, output_tokens=5 + n))

    fake_api.set_default(reply, endpoint="anthropic")
    p = newsletter(tmp_path, fast_config)
    run = p.run({"topic": "tides"})
    p.close()
    assert run.status == "passed"
    flush()
    exporter = _trace._tracing.guard.inner
    assert exporter._ours and exporter._sender  # our encoder and sender (_trace_otlp, _http)
    spans = phoenix.spans(traced, until=lambda s: any(x["name"] == "nbconductor.run" for x in s))

    [root] = by_name(spans, "nbconductor.run")
    assert root["parent_id"] is None
    attrs = root["attributes"]
    assert attrs["nbconductor.run.id"] == run.run_id
    assert attrs["nbconductor.parameters"] == ["topic"]
    assert attrs["nbconductor.status"] == "passed"
    root_id = root["context"]["span_id"]
    assert {s["context"]["trace_id"] for s in spans} == {root["context"]["trace_id"]}

    steps = {s["name"]: s for s in spans if s["name"].startswith("step ")}
    assert set(steps) == {"step en", "step fr", "step both"}
    assert all(s["parent_id"] == root_id for s in steps.values())
    assert steps["step en"]["attributes"]["nbconductor.state"] == "passed"
    assert steps["step both"]["attributes"]["nbconductor.step.kind"] == "python"

    chats = [s for s in spans if s["name"].startswith("chat ")]
    step_calls = [c for c in chats if c["attributes"]["nbconductor.call"] == "step"]
    [judge] = [c for c in chats if c["attributes"]["nbconductor.call"] == "judge"]
    assert judge["parent_id"] == steps["step en"]["context"]["span_id"]
    assert judge["name"] == "chat claude-opus-4-8"
    assert {c["parent_id"] for c in step_calls} == {
        steps["step en"]["context"]["span_id"],
        steps["step fr"]["context"]["span_id"],
    }
    for c in chats:
        a = c["attributes"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "anthropic"
        assert a["gen_ai.response.model"] == a["gen_ai.request.model"]
        assert a["gen_ai.response.finish_reasons"] == ["end_turn"]
    # The token counts are the fake server's usage, call by call.
    got = sorted(
        (
            c["attributes"]["gen_ai.usage.input_tokens"],
            c["attributes"]["gen_ai.usage.output_tokens"],
        )
        for c in step_calls
    )
    assert got == [(11, 6), (12, 7)]
    assert (
        judge["attributes"]["gen_ai.usage.input_tokens"],
        judge["attributes"]["gen_ai.usage.output_tokens"],
    ) == (100, 20)
    en, fr = (
        (c for c in step_calls if c["attributes"].get("gen_ai.request.temperature") == 0.3),
        (c for c in step_calls if c["attributes"].get("gen_ai.request.max_tokens") == 300),
    )
    assert next(en) and next(fr)

    [gate] = [e for e in steps["step en"]["events"] if e["name"] == "gate.result"]
    assert gate["attributes"]["gate.name"] == "rubric"
    assert gate["attributes"]["gate.passed"] is True
    assert gate["attributes"]["gate.score"] == 0.9

    # Parallel steps overlap in the trace as they did in the run.
    def interval(s):
        return s["start_time"], s["end_time"]

    (a0, a1), (b0, b1) = interval(steps["step en"]), interval(steps["step fr"])
    assert a0 < b1 and b0 < a1, (a0, a1, b0, b1)
    assert "gen_ai.input.messages" not in json.dumps(spans)  # content is opt-in


def test_content_is_attached_only_on_request_and_redacted(
    fake_api, traced, phoenix, tmp_path, fast_config, monkeypatch
):
    monkeypatch.setenv(_trace.CONTENT_ENV, "true")
    # The canary: the API key, in the prompt (through a parameter) and in the model's answer.
    fake_api.set_default(Text(f"the key is {FAKE_ANTHROPIC_KEY}"), endpoint="anthropic")
    p = Pipeline(store=tmp_path / "store.sqlite", config=fast_config, root=tmp_path)
    p.step("leak", "Repeat this: {{ secret }}", model=WRITER, system="Be brief.")
    run = p.run({"secret": f"key={FAKE_ANTHROPIC_KEY}"})
    p.close()
    assert run.status == "passed"
    flush()
    spans = phoenix.spans(traced, until=lambda s: any(x["name"].startswith("chat ") for x in s))
    received = json.dumps(spans)
    assert FAKE_ANTHROPIC_KEY not in received
    assert FAKE_ANTHROPIC_KEY[:12] not in received
    [chat] = [s for s in spans if s["name"].startswith("chat ")]
    messages = json.loads(chat["attributes"]["gen_ai.input.messages"])
    assert messages[0]["role"] == "user"
    assert "Repeat this: key=[REDACTED]" in messages[0]["parts"][0]["content"]
    output = json.loads(chat["attributes"]["gen_ai.output.messages"])
    assert output[0]["parts"][0]["content"] == "the key is [REDACTED]"
    assert "Be brief." in chat["attributes"]["gen_ai.system_instructions"]


def test_a_collector_that_is_down_costs_one_warning_line(
    fake_api, tmp_path, fast_config, monkeypatch, capfd
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    _trace.reset()
    try:
        import anthropic  # noqa: F401 - before the timed run: on a busy machine it takes seconds

        fake_api.set_default(Text("ok"), endpoint="anthropic")
        p = Pipeline(store=tmp_path / "store.sqlite", config=fast_config, root=tmp_path)
        for i in range(20):
            p.step(f"s{i}", f"step {i} about {{{{ topic }}}}", model=WRITER)
        started = time.perf_counter()
        run = p.run({"topic": "tides"})
        seconds = time.perf_counter() - started
        p.close()
        flush()
        assert run.status == "passed"
        assert seconds < 5  # the exporter's retries never hold the run
        lines = [line for line in capfd.readouterr().err.splitlines() if "tracing" in line]
        assert len(lines) == 1, lines
        assert run.run_id in lines[0] and "the run itself is unaffected" in lines[0]
        # The collector is known down now: the next run builds no spans, and says so once.
        again = p.run({"topic": "moons"}, force=True)
        p.close()
        flush()
        assert again.status == "passed"
        lines = [line for line in capfd.readouterr().err.splitlines() if "tracing" in line]
        assert len(lines) == 1 and again.run_id in lines[0], lines
        assert again.run_id not in _trace._tracing.guard.runs.values()  # no root span opened
    finally:
        _trace.reset()


def test_a_collector_still_unreachable_keeps_runs_from_building_spans(tmp_path, monkeypatch):
    """Past the 30 s window, a collector that still cannot be reached (probed in the background)
    stays known down: runs build no spans; once it accepts connections, runs are traced again."""
    from nbconductor import _trace_setup

    monkeypatch.setattr(_trace_setup, "_DOWN_FOR", 0.3)
    monkeypatch.setattr(_trace_setup, "_PROBE_EVERY", 0.05)
    port = free_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    _trace.reset()
    try:
        p = Pipeline(store=":memory:", root=tmp_path)
        p.step("a", "hi", model="offline:m")
        first = p.run()
        flush()
        guard = _trace._tracing.guard
        assert first.run_id in guard.runs.values() and guard.failures == 1
        time.sleep(0.8)  # the window is over; the collector is still unreachable
        second = p.run(force=True)
        assert second.run_id not in guard.runs.values()  # no spans built
        with socket.socket() as listener:  # the collector is back
            listener.bind(("127.0.0.1", port))
            listener.listen()
            deadline = time.time() + 10
            while guard.down_until and time.time() < deadline:
                time.sleep(0.05)
            assert guard.down_until == 0.0
            third = p.run(force=True)
            assert third.run_id in guard.runs.values()  # traced again
        p.close()
    finally:
        _trace.reset()


# unit tests: the SDK's in-memory exporter --------------------------------------------------


@pytest.fixture(params=["sdk", "light"])
def memory(monkeypatch, request):
    """Spans in memory, through the SDK's own spans and through the light path (`_Light`)."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.__new__(Tracing)
    tracing.own, tracing.provider = False, TracerProvider()
    tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.guard, tracing.tracer = Guard(_Nothing(), "memory"), tracing.provider.get_tracer("t")
    tracing.light, tracing.scope = request.param == "light", InstrumentationScope("nbconductor")
    monkeypatch.setattr(_trace, "_tracing", tracing)
    _trace.switch(True)
    yield exporter
    _trace.switch(None)


def test_retries_and_fallbacks_are_attempt_spans(fake_api, memory, tmp_path, fast_config):
    fake_api.script(Error(429, retry_after=0.05), endpoint="anthropic")
    fake_api.script(Error(400, message="bad request"), endpoint="anthropic")
    fake_api.set_default(Text("ok", input_tokens=3, output_tokens=2), endpoint="openai")
    p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config, root=tmp_path)
    p.step("a", "hi", model=WRITER, fallbacks=["openai:gpt-4.1-mini"])
    assert p.run().status == "passed"
    p.close()
    spans = memory.get_finished_spans()
    chats = sorted((s for s in spans if s.name.startswith("chat ")), key=lambda s: s.start_time)
    assert [
        (c.attributes["nbconductor.attempt"], c.attributes["nbconductor.fallback"]) for c in chats
    ] == [
        (1, 0),
        (2, 0),
        (1, 1),
    ]
    assert [c.attributes.get("error.type") for c in chats] == [
        "RateLimitError",
        "RequestError",
        None,
    ]
    assert chats[1].attributes["nbconductor.retry_after_waited"] == pytest.approx(0.05)
    assert chats[2].attributes["gen_ai.provider.name"] == "openai"
    assert chats[2].attributes["gen_ai.response.finish_reasons"] == ("stop",)
    [step] = [s for s in spans if s.name == "step a"]
    assert step.attributes["nbconductor.attempts"] == 3
    assert [e.name for e in step.events] == ["retry.wait"]


def test_tool_turns_and_tool_calls_are_spans(fake_api, memory, tmp_path, fast_config):
    def lookup(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    fake_api.script(
        ToolCall("lookup", {"city": "Oslo"}, input_tokens=7, output_tokens=3), endpoint="anthropic"
    )
    fake_api.script(Text("It is sunny.", input_tokens=9, output_tokens=4), endpoint="anthropic")
    p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config, root=tmp_path)
    p.namespace["lookup"] = lookup
    p.step("w", "Weather in Oslo?", model=WRITER, tools=["lookup"])
    assert p.run().status == "passed"
    p.close()
    spans = memory.get_finished_spans()
    [call] = [s for s in spans if s.attributes.get("nbconductor.call") == "step"]
    turns = sorted(
        (s for s in spans if s.attributes.get("nbconductor.call") == "turn"),
        key=lambda s: s.start_time,
    )
    assert [t.parent.span_id for t in turns] == [call.context.span_id] * 2
    assert [
        (t.attributes["gen_ai.usage.input_tokens"], t.attributes["gen_ai.response.finish_reasons"])
        for t in turns
    ] == [
        (7, ("tool_use",)),
        (9, ("end_turn",)),
    ]
    [tool] = [s for s in spans if s.name == "execute_tool lookup"]
    assert tool.parent.span_id == call.context.span_id
    assert call.attributes["gen_ai.usage.input_tokens"] == 16


def test_tool_turns_carry_their_content_on_request_redacted(
    fake_api, memory, tmp_path, fast_config, monkeypatch
):
    def lookup(city: str, token: str = "") -> str:
        """The weather in a city."""
        return f"sunny in {city} (asked with {token})"

    def run() -> list:
        fake_api.script(
            ToolCall("lookup", {"city": "Oslo", "token": FAKE_ANTHROPIC_KEY}, id="toolu_1"),
            endpoint="anthropic",
        )
        fake_api.script(Text(f"Sunny; key {FAKE_ANTHROPIC_KEY}"), endpoint="anthropic")
        p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config, root=tmp_path)
        p.namespace["lookup"] = lookup
        p.step("w", "Weather in Oslo?", model=WRITER, tools=["lookup"], no_cache=True)
        assert p.run().status == "passed"
        p.close()
        spans = memory.get_finished_spans()
        memory.clear()
        return spans

    def content(span) -> dict:
        return {k: v for k, v in span.attributes.items() if "messages" in k or ".call." in k}

    def turns(spans) -> list:
        found = [s for s in spans if s.attributes.get("nbconductor.call") == "turn"]
        return sorted(found, key=lambda s: s.start_time)

    off = run()  # content off: the tool span names its call, carries no arguments or result
    [tool] = [s for s in off if s.name == "execute_tool lookup"]
    assert tool.attributes["gen_ai.tool.call.id"] == "toolu_1"
    assert tool.attributes["gen_ai.tool.type"] == "function"
    assert content(tool) == {"gen_ai.tool.call.id": "toolu_1"}
    assert [content(t) for t in turns(off)] == [{}, {}]

    monkeypatch.setenv(_trace.CONTENT_ENV, "true")
    spans = run()
    every = json.dumps([dict(s.attributes) for s in spans], default=list)
    assert FAKE_ANTHROPIC_KEY not in every and FAKE_ANTHROPIC_KEY[:12] not in every
    [tool] = [s for s in spans if s.name == "execute_tool lookup"]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {
        "city": "Oslo",
        "token": "[REDACTED]",
    }
    assert tool.attributes["gen_ai.tool.call.result"] == "sunny in Oslo (asked with [REDACTED])"
    first, second = turns(spans)
    asked = json.loads(first.attributes["gen_ai.input.messages"])
    assert asked == [{"role": "user", "parts": [{"type": "text", "content": "Weather in Oslo?"}]}]
    [answer] = json.loads(first.attributes["gen_ai.output.messages"])
    assert answer["role"] == "assistant" and answer["finish_reason"] == "tool_use"
    [part] = [p for p in answer["parts"] if p["type"] == "tool_call"]
    assert part == {
        "type": "tool_call",
        "id": "toolu_1",
        "name": "lookup",
        "arguments": {"city": "Oslo", "token": "[REDACTED]"},
    }
    # The second turn sends the conversation: the question, the tool call, the tool's answer.
    sent = json.loads(second.attributes["gen_ai.input.messages"])
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2]["parts"] == [
        {
            "type": "tool_call_response",
            "id": "toolu_1",
            "response": "sunny in Oslo (asked with [REDACTED])",
        }
    ]
    [final] = json.loads(second.attributes["gen_ai.output.messages"])
    assert final["parts"] == [{"type": "text", "content": "Sunny; key [REDACTED]"}]


def test_map_items_and_cache_hits(memory, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite", root=tmp_path)
    p.step("t", "translate to {{ lang }}", model="offline:m", map="lang in ['fr', 'de', 'it']")
    p.run()
    first = {s.name: s for s in memory.get_finished_spans() if s.name.startswith("step ")}
    assert first["step t"].attributes["nbconductor.items"] == 3
    assert sum(s.name.startswith("chat ") for s in memory.get_finished_spans()) == 3
    memory.clear()
    p.run()
    p.close()
    spans = memory.get_finished_spans()
    [step] = [s for s in spans if s.name == "step t"]
    assert step.attributes["nbconductor.cache_hit"] is True
    assert step.attributes["nbconductor.state"] == "cached"
    assert not any(s.name.startswith("chat ") for s in spans)  # nothing was called


def test_our_provider_makes_light_spans_and_keeps_the_sdk_rules(monkeypatch, tmp_path):
    """Our own provider's children take the light path under the built-in samplers; a sampled-out
    root has no recorded children; span limits send every span through the SDK's `Span`."""
    from nbconductor._config import Config

    def traced_run(name: str) -> tuple[Tracing, list]:
        _trace.reset()
        tracing = _trace._setup(Config())
        exporter = InMemorySpanExporter()
        tracing.guard.inner, tracing.guard.address = exporter, None
        p = Pipeline(store=":memory:", root=tmp_path)
        p.step(name, "hi", model="offline:m")
        assert p.run().status == "passed"
        p.close()
        tracing.provider.force_flush()
        return tracing, exporter.get_finished_spans()

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    try:
        tracing, spans = traced_run("a")
        assert tracing.light
        by = {s.name: s for s in spans}
        assert sorted(by) == ["chat m", "nbconductor.run", "step a"]
        assert by["step a"].parent.span_id == by["nbconductor.run"].context.span_id
        assert by["chat m"].parent.span_id == by["step a"].context.span_id
        assert by["chat m"].attributes["gen_ai.usage.input_tokens"] > 0
        assert len({s.context.trace_id for s in spans}) == 1

        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        tracing, spans = traced_run("a")
        assert spans == ()  # the root sampled out: its children are not recorded either

        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
        tracing, spans = traced_run("translation")
        assert not tracing.light
        [step] = [s for s in spans if s.name == "step translation"]
        assert step.attributes["nbconductor.step"] == "translat"  # the SDK applied the limit
    finally:
        _trace.reset()


def test_off_hooks_return_what_they_were_given():
    async def coro():
        return 1

    c = coro()
    assert _trace.step(None, c) is c
    assert _trace.call(c, None, None, None) is c
    assert _trace.turn(c, 0) is c and _trace.tool(c, "x") is c
    c.close()
    assert _trace.run_started("r", None, {}, None) is None  # no endpoint, no switch, no provider


def test_an_application_provider_is_joined(tmp_path):
    code = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
from nbconductor import Pipeline
p = Pipeline(store=':memory:')
p.step('a', 'hi', model='offline:m')
with trace.get_tracer('app').start_as_current_span('request') as outer:
    p.run()
spans = exporter.get_finished_spans()
run = [s for s in spans if s.name == 'nbconductor.run'][0]
print(json.dumps(sorted(s.name for s in spans)), run.parent.span_id == outer.get_span_context().span_id)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    names, joined = out.stdout.rsplit(" ", 1)
    assert json.loads(names) == ["chat m", "nbconductor.run", "request", "step a"]
    assert joined.strip() == "True"


def test_conductor_trace_switches_tracing_in_a_notebook(memory, tmp_path, monkeypatch, capsys):
    from IPython.core.error import UsageError
    from notebook_shell import fresh_shell

    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    ip = fresh_shell(tmp_path, monkeypatch)
    _trace.switch(None)
    ip.run_line_magic("conductor", "trace")
    # the last line: a shared shell may first say the extension is already loaded
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith("tracing off: set OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    ip.run_cell_magic("step", "a --model offline:m", "hello")
    assert memory.get_finished_spans() == ()
    ip.run_line_magic("conductor", "trace on")
    assert "tracing on: runs go to http://localhost:4318" in capsys.readouterr().out
    ip.run_cell_magic("step", "b --model offline:m", "again {{ a }}")
    assert {s.name for s in memory.get_finished_spans()} >= {"nbconductor.run", "step b"}
    ip.run_line_magic("conductor", "trace off")
    with pytest.raises(UsageError, match="invalid choice: 'maybe'"):
        ip.run_line_magic("conductor", "trace maybe")


def test_each_batch_row_is_a_trace_linked_to_the_batch(traced, phoenix, tmp_path):
    from nbconductor import batch
    from nbconductor.handoff._export import export_pipeline

    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    job = export_pipeline(p, tmp_path / "job.ipynb")
    result = batch(job, [{"topic": "tides"}, {"topic": "moons"}], workers=2, out=tmp_path / "out")
    assert [r["status"] for r in result.rows] == ["passed", "passed"]
    flush()  # the batch span; the rows' kernels flushed theirs as they finished

    def complete(spans):
        names = [s["name"] for s in spans]
        return names.count("nbconductor.run") == 2 and "nbconductor.batch" in names

    spans = phoenix.spans(traced, until=complete)
    [outer] = by_name(spans, "nbconductor.batch")
    runs = by_name(spans, "nbconductor.run")
    batch_id = outer["attributes"]["nbconductor.batch.id"]
    assert [r["attributes"]["nbconductor.batch.id"] for r in runs] == [batch_id, batch_id]
    traces = {r["context"]["trace_id"] for r in runs}
    assert len(traces) == 2 and outer["context"]["trace_id"] not in traces
    assert all(r["parent_id"] is None for r in runs)
    assert {s["name"] for s in spans} >= {"step draft", "chat w"}


def test_links_are_sent_and_phoenix_finds_what_they_point_at(traced, phoenix, tmp_path):
    """A row's run links to its batch span, a review decision to its step's span: both links go
    over OTLP (the request the exporter sent is decoded here). Phoenix (20.x) keeps no links —
    its ``decode_otlp_span`` never reads them and its span has no links field — so what it
    stores to follow them by is checked too: the batch id and the step's ids on the review."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from nbconductor._config import Config
    from nbconductor.store._review import decide

    tracing = _trace._setup(Config())
    inner, sent = tracing.guard.inner, []

    def export(spans):  # the bytes the OTLP exporter sends, decoded back
        request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
        sent.extend(s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans)
        return type(inner).export(inner, spans)

    inner.export = export
    close = _trace.batch_started("job", 1)
    p = Pipeline(store=tmp_path / "s.sqlite", root=tmp_path)
    p.step("tag", "One line", model="offline:t", checks=["max_words(1)"], retries=0)
    run = p.run()
    close("passed")
    res = run.results["tag"]
    assert res.state == "flagged", res.error
    decide(p.store, res.result_id, "approve")
    p.close()
    flush()

    wire = {s.name: s for s in sent}
    [to_batch] = wire["nbconductor.run"].links
    assert to_batch.span_id == wire["nbconductor.batch"].span_id
    assert to_batch.trace_id == wire["nbconductor.batch"].trace_id
    [to_step] = wire["nbconductor.review"].links
    assert (to_step.trace_id, to_step.span_id) == (
        wire["step tag"].trace_id,
        wire["step tag"].span_id,
    )

    names = ["nbconductor.batch", "nbconductor.run", "step tag", "nbconductor.review"]
    spans = phoenix.spans(traced, until=lambda got: set(names) <= {s["name"] for s in got})
    [outer], [root], [step], [review] = (by_name(spans, n) for n in names)
    batch_id = outer["attributes"]["nbconductor.batch.id"]
    assert root["attributes"]["nbconductor.batch.id"] == batch_id
    assert root["context"]["trace_id"] != outer["context"]["trace_id"]
    a = review["attributes"]
    assert (a["nbconductor.step.trace_id"], a["nbconductor.step.span_id"]) == (
        step["context"]["trace_id"],
        step["context"]["span_id"],
    )
    assert review["context"]["trace_id"] != step["context"]["trace_id"]
    [event] = review["events"]
    assert event["name"] == "review.decision"
    assert event["attributes"]["nbconductor.decision"] == "approve"


def test_a_row_run_links_to_its_batch_span(memory, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic c2VjcmV0")
    close = _trace.batch_started("job", 1)
    link = os.environ[_trace.LINK_ENV]
    carried = _trace.carried_env()  # what a Dask task takes along: never the headers
    assert carried[_trace.LINK_ENV] == link and "OTEL_EXPORTER_OTLP_HEADERS" not in carried
    p = Pipeline(store=":memory:")
    p.step("a", "hi", model="offline:m")
    p.run()
    close("passed")
    assert _trace.LINK_ENV not in os.environ
    spans = {s.name: s for s in memory.get_finished_spans()}
    [linked] = spans["nbconductor.run"].links
    assert linked.context.span_id == spans["nbconductor.batch"].context.span_id
    assert f"{linked.context.trace_id:032x}" in link


def test_a_review_decision_is_an_event_linked_to_its_step(memory, tmp_path):
    from nbconductor.store._review import decide

    p = Pipeline(store=tmp_path / "s.sqlite", root=tmp_path)
    p.step("tag", "One line", model="offline:t", checks=["max_words(1)"], retries=0)
    run = p.run()
    res = run.results["tag"]
    assert res.state == "flagged"
    [step] = [s for s in memory.get_finished_spans() if s.name == "step tag"]
    [gate] = [e for e in step.events if e.name == "gate.result"]
    assert gate.attributes["gate.passed"] is False and "words" in gate.attributes["gate.feedback"]
    stored = p.store.row(res.result_id)["trace"]
    assert stored.startswith(f"00-{step.context.trace_id:032x}-{step.context.span_id:016x}-")
    memory.clear()
    decide(p.store, res.result_id, "approve", note="fine by me")
    p.close()
    [review] = memory.get_finished_spans()
    assert review.name == "nbconductor.review"
    assert review.context.trace_id != step.context.trace_id  # a short trace of its own
    [link] = review.links
    assert (link.context.trace_id, link.context.span_id) == (
        step.context.trace_id,
        step.context.span_id,
    )
    [event] = review.events
    assert event.name == "review.decision"
    assert event.attributes["nbconductor.decision"] == "approve"


@pytest.mark.parametrize("how", ["grpc", "config"])
def test_grpc_and_the_config_endpoint_reach_phoenix(how, traced, phoenix, tmp_path, monkeypatch):
    from nbconductor._config import Config, OtelConfig

    config = Config()
    if how == "grpc":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.grpc)
    else:  # no endpoint in the environment: [otel] endpoint switches tracing on
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
        config = Config(otel=OtelConfig(endpoint=phoenix.url))
    p = Pipeline(store=":memory:", config=config, root=tmp_path)
    p.step("a", "hi", model="offline:m")
    run = p.run()
    flush()
    # gRPC: the SDK's exporter and encoder; HTTP: the SDK's exporter with our encoder
    assert getattr(_trace._tracing.guard.inner, "_ours", False) is (how == "config")
    spans = phoenix.spans(traced, until=lambda s: len(s) >= 3)
    assert sorted(s["name"] for s in spans) == ["chat m", "nbconductor.run", "step a"]
    [root] = by_name(spans, "nbconductor.run")
    assert root["attributes"]["nbconductor.run.id"] == run.run_id


@pytest.mark.dask
def test_rows_on_dask_workers_export_with_the_coordinators_settings(traced, phoenix, tmp_path):
    """The worker's own environment has no OTEL_* at all: the task carries them."""
    from nbconductor import batch
    from nbconductor.handoff._export import export_pipeline

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("NBCONDUCTOR_STORE", None)
    with dask_cluster(tmp_path, env, workers=1) as (address, _):
        p = Pipeline(store=":memory:", namespace={"topic": "t"})
        p.step("draft", "Write about {{ topic }}", model="offline:w")
        job = export_pipeline(p, tmp_path / "job.ipynb")
        result = batch(job, [{"topic": "tides"}], dask=address, out=tmp_path / "out")
        assert [r["status"] for r in result.rows] == ["passed"]
        flush()

        def complete(spans):
            names = [s["name"] for s in spans]
            return "nbconductor.run" in names and "nbconductor.batch" in names

        spans = phoenix.spans(traced, until=complete, timeout=60)
        [outer] = by_name(spans, "nbconductor.batch")
        [run] = by_name(spans, "nbconductor.run")
        assert (
            run["attributes"]["nbconductor.batch.id"] == outer["attributes"]["nbconductor.batch.id"]
        )


def test_an_image_call_is_a_generate_content_span(memory, tmp_path):
    p = Pipeline(store=":memory:", root=tmp_path)
    p.step("pic", "a lighthouse at dusk", model="offline:img", image=True)
    assert p.run().status == "passed"
    [call] = [s for s in memory.get_finished_spans() if s.attributes.get("nbconductor.call")]
    assert call.name == "generate_content img"
    assert call.attributes["gen_ai.operation.name"] == "generate_content"
    assert call.parent.span_id == next(
        s.context.span_id for s in memory.get_finished_spans() if s.name == "step pic"
    )
