"""OpenAI-compatible local servers as users run them (issue 11), against the loopback fake made
to answer exactly as llama-cpp-python's server does: ``response_format`` json_schema refused
with an HTTP 500 validation error, no usage in streams, a running stream cut when another
request arrives. The real llama.cpp server is tested in tests/providers/test_local_server.py."""

from __future__ import annotations

import json
import multiprocessing
import socket
import time

import openai  # noqa: F401 - the test extras install it
import pytest
from fakeapi import JSONText, Text
from notebook_shell import fresh_shell
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._config import AliasSpec, Config
from nbconductor._limiter import MachineSlots, is_loopback
from nbconductor._pricing import cost_of
from nbconductor._types import Usage
from nbconductor.providers import _structured


class Post(BaseModel):
    title: str
    words: int


@pytest.fixture
def llama(fake_api, monkeypatch, tmp_path):
    """The fake as llama-cpp-python's server; structured-mode memory and slot files fresh."""
    fake_api.mimic = "llama-cpp-python"
    fake_api.mimic_delay = 0.02
    monkeypatch.setenv("NBCONDUCTOR_RUNTIME_DIR", str(tmp_path / "runtime"))
    _structured.forget()
    yield fake_api
    _structured.forget()


def local(fast_config, base_url, **extra) -> Config:
    spec = AliasSpec(model="openai-compatible:gemma3", base_url=base_url, **extra)
    return fast_config.model_copy(update={"aliases": {"local": spec}, "default_model": "local"})


def make(tmp_path, config) -> Pipeline:
    return Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)


def test_schema_falls_back_to_json_object_once_per_server_and_says_so(
    llama, fast_config, tmp_path, capsys
):
    llama.set_default(JSONText({"title": "T", "words": 3}), endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url))
    p.namespace["Post"] = Post
    p.step("a", "Plan a post", schema="Post", retries=0)
    p.step("b", "Plan another post about {{ a.title }}", schema="Post", retries=0)
    run = p.run()
    assert run.results["a"].output == Post(title="T", words=3)
    assert run.results["b"].output == Post(title="T", words=3)
    sent = [r.json for r in llama.requests_for("openai")]
    # one refused probe (json_schema), then json_object with the schema in the prompt, for both
    assert [r.get("response_format", {}).get("type") for r in sent] == [
        "json_schema",
        "json_object",
        "json_object",
    ]
    assert '"title"' in sent[1]["messages"][0]["content"]  # the schema travels in the prompt
    assert run.results["a"].attempts[0].outcome == "passed"  # the probe is not a failed attempt
    said = capsys.readouterr().err
    assert said.count("does not accept response_format json_schema") == 1
    assert llama.openai_base_url in said


def test_a_rubric_verdict_parses_through_the_fallback(llama, fast_config, tmp_path):
    verdict = JSONText({"score": 0.9, "feedback": "fine", "suggestion": ""})

    def reply(body):
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        return verdict if "score" in system else Text("a draft")

    llama.set_default(reply, endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url))
    p.step("draft", "Write a line")
    p.rubric("draft", "Is it a line?", judge="local", threshold=0.5)
    res = p.run().results["draft"]
    assert res.state == "passed" and res.gates[0].score == pytest.approx(0.9)


def test_forced_prompt_mode_sends_no_response_format(llama, fast_config, tmp_path):
    llama.set_default(Text('```json\n{"title": "T", "words": 3}\n```'), endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url, structured="prompt"))
    p.namespace["Post"] = Post
    p.step("a", "Plan a post", schema="Post", retries=0)
    assert p.run().results["a"].output == Post(title="T", words=3)
    (only,) = llama.requests_for("openai")
    assert "response_format" not in only.json
    assert "JSON schema" in only.json["messages"][0]["content"]


def test_forced_json_schema_is_not_downgraded_and_the_error_is_one_line(
    llama, fast_config, tmp_path
):
    p = make(tmp_path, local(fast_config, llama.openai_base_url, structured="json_schema"))
    p.namespace["Post"] = Post
    p.step("a", "Plan a post", schema="Post", retries=0)
    res = p.run().results["a"]
    assert res.state == "failed" and len(llama.requests_for("openai")) == 1
    assert "response_format.type: Input should be 'text' or 'json_object'" in res.error
    assert "\n" not in res.error and "validation error:" not in res.error


def test_stream_without_usage_is_estimated_and_marked(llama, fast_config, tmp_path):
    llama.set_default(Text("x" * 40), endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url))
    p.step("a", "Say something")
    res = p.run().results["a"]
    assert res.usage.estimated and res.usage.output_tokens == 10 and res.usage.input_tokens > 0
    assert res.cost == 0.0  # local: not priced
    again = make(tmp_path, local(fast_config, llama.openai_base_url))  # read back from the store
    again.step("a", "Say something")
    cached = again.run().results["a"]
    assert cached.cached and cached.usage.estimated
    from nbconductor.notebook._display import footer

    assert "~" in footer(res) and "(estimated)" in footer(res)
    from nbconductor.store._report import report, report_text

    rep = report(tmp_path / "store.sqlite")
    assert rep["steps"]["a"]["tokens_estimated"] == 1
    assert f"~{rep['steps']['a']['tokens']:,}" in report_text(rep)


def test_map_items_share_one_slot_so_llama_cpp_python_cuts_no_stream(llama, fast_config, tmp_path):
    llama.set_default(Text("one two three four five six", chunks=6), endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url))
    p.namespace["langs"] = ["fr", "de", "it"]
    p.step("t", "Translate into {{ lang }}", map="lang in langs", retries=0)
    res = p.run().results["t"]
    assert res.state == "passed" and len(res.output) == 3
    requests = llama.requests_for("openai")
    assert len(requests) == 3  # none was cut and retried


def test_concurrency_above_one_cuts_streams_and_the_error_says_what_to_lower(
    llama, fast_config, tmp_path
):
    llama.set_default(Text("one two three four five six", chunks=6), endpoint="openai")
    p = make(tmp_path, local(fast_config, llama.openai_base_url, concurrency=3))
    p.namespace["langs"] = ["fr", "de", "it"]
    p.step("t", "Translate into {{ lang }}", map="lang in langs", retries=0)
    res = p.run().results["t"]
    assert res.state == "failed"
    assert "cuts a stream when another arrives" in res.error  # the cut, named
    assert "concurrency = 1" in res.error and llama.openai_base_url in res.error


def _hold(key: str, limit: int, out, seconds: float) -> None:
    import asyncio

    async def main():
        async with MachineSlots(key, limit).hold():
            start = time.monotonic()
            await asyncio.sleep(seconds)
            out.put((start, time.monotonic()))

    asyncio.run(main())


def test_machine_slots_limit_across_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("NBCONDUCTOR_RUNTIME_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hold, args=("http://127.0.0.1:9/v1", 1, out, 0.3)) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    spans = sorted(out.get(timeout=5) for _ in procs)
    assert all(a[1] <= b[0] + 0.01 for a, b in zip(spans, spans[1:], strict=False)), spans
    # with a limit of 2, two of them overlap
    procs = [
        ctx.Process(target=_hold, args=("http://127.0.0.1:9/v1", 2, out, 0.5)) for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    (a, b) = sorted(out.get(timeout=5) for _ in procs)
    assert b[0] < a[1]


def test_default_concurrency_is_low_on_loopback_only():
    config = Config(concurrency={"remote": 5})
    from nbconductor._config import ModelRef

    assert config.limit_for(ModelRef("openai-compatible", "m", "http://127.0.0.1:8080/v1")) == 1
    assert config.limit_for(ModelRef("openai-compatible", "m", "http://localhost:11434/v1")) == 1
    assert config.limit_for(ModelRef("openai-compatible", "m", "http://gpu-box:8000/v1")) == 8
    assert (
        config.limit_for(ModelRef("openai-compatible", "m", "http://127.0.0.1:1/v1", concurrency=4))
        == 4
    )
    assert config.limit_for(ModelRef("openai-compatible", "m", "http://x/v1", alias="remote")) == 5
    assert is_loopback("http://[::1]:8080/v1") and not is_loopback("http://10.0.0.2/v1")


def test_connection_error_names_the_url(fast_config, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("NBCONDUCTOR_RUNTIME_DIR", str(tmp_path / "runtime"))
    url = f"http://127.0.0.1:{port}/v1"
    p = make(tmp_path, local(fast_config, url))
    p.step("a", "Hi", retries=0)
    res = p.run().results["a"]
    assert res.state == "failed" and f"127.0.0.1:{port}/v1/chat/completions" in res.error
    assert "\n" not in res.error


def test_openai_base_url_on_loopback_serving_another_model_is_not_list_priced(monkeypatch):
    from nbconductor._config import ModelRef

    ref = ModelRef("openai", "gpt-4.1-mini", alias="fast")
    usage = Usage(1000, 1000)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    assert cost_of(ref, usage, Config(), served="openai:gemma3-270m") == 0.0
    assert cost_of(ref, usage, Config(), served="openai:gpt-4.1-mini-2025-04-14") > 0
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example/v1")
    assert (
        cost_of(ref, usage, Config(), served="openai:gemma3-270m") is None
    )  # unknown, not made up


def test_dry_run_counts_the_judge_calls(tmp_path):
    p = make(tmp_path, Config())
    p.step("draft", "Write about {{ topic }}", model="offline:writer")
    before = p.plan({"topic": "x"})
    p.rubric("draft", "Is it good?", judge="offline:judge")
    after = p.plan({"topic": "x"})
    assert before[0]["calls"] == 1 and after[0]["calls"] == 2
    assert after[0]["input_tokens"] > before[0]["input_tokens"]


# --- the notebook's texts -----------------------------------------------------------------------


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return fresh_shell(tmp_path, monkeypatch)


def _out(ip, line: str) -> str:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        ip.run_line_magic("conductor", line)
    return cap.stdout


def test_alias_with_base_url_and_models_text(ip):
    said = _out(
        ip,
        "alias tiny openai-compatible:gemma3 --base-url http://127.0.0.1:8080/v1 --concurrency 1",
    )
    assert "tiny → openai-compatible:gemma3 at http://127.0.0.1:8080/v1" in said
    models = _out(ip, "models")
    assert "http://127.0.0.1:8080/v1" in models and "offline provider in use" not in models
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="unknown option --port"):
        ip.run_line_magic("conductor", "alias tiny openai-compatible:gemma3 --port 8080")
    with pytest.raises(UsageError, match="structured"):
        ip.run_line_magic("conductor", "alias tiny openai-compatible:gemma3 --structured yaml")


def test_rubric_added_after_its_step_says_so_where_it_reruns(ip):
    from IPython.utils.capture import capture_output

    with capture_output():
        ip.run_cell_magic("step", "draft --model offline:writer", "Write a line")
    with capture_output() as cap:
        ip.run_cell_magic("rubric", "draft --judge offline:judge --threshold 0", "Any line.")
    # the step's own footer (a display update, not a new output) now says its output is stale
    stale = [o.data["text/plain"] for o in cap.outputs if "stale" in o.data.get("text/plain", "")]
    assert stale and "a rubric was added" in stale[0]
    with capture_output() as cap:
        ip.run_cell_magic("step", "post --model offline:writer", "Post {{ draft }}")
    assert "draft re-ran: a rubric was added" in cap.stdout
    assert cap.stdout.count("re-ran") == 1


def test_export_header_names_the_configured_default_alias(tmp_path):
    from nbconductor.handoff._export_header import _alias_lines

    config = local(Config(), "http://127.0.0.1:8080/v1")
    p = make(tmp_path, config)
    p.step("a", "Hi")
    lines = " ".join(_alias_lines(p, p.graph))
    assert "`local` is `openai-compatible:gemma3`" in lines
    assert "built-in alias" not in lines


def test_llama_cpp_python_error_body_is_what_the_fake_sends(llama):
    import urllib.request

    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        }
    ).encode()
    req = urllib.request.Request(llama.openai_base_url + "/chat/completions", data=body)
    req.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 500
    error = json.loads(info.value.read())["error"]
    assert error["type"] == "internal_server_error"
    assert error["message"].startswith("1 validation error:\n")


def test_an_exported_alias_keeps_its_base_url():
    from nbconductor.handoff._export_cells import alias_cell

    spec = AliasSpec(
        model="openai-compatible:gemma3", base_url="http://127.0.0.1:8080/v1", concurrency=1
    )
    cell = alias_cell({"tiny": spec, "fast": "offline:quick"})
    assert cell.source.splitlines() == [
        "%conductor alias tiny openai-compatible:gemma3 --base-url http://127.0.0.1:8080/v1 "
        "--concurrency 1",
        "%conductor alias fast offline:quick",
    ]
