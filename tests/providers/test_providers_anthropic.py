"""The Anthropic adapter, through the real SDK against the loopback fake API."""

from __future__ import annotations

import sys

import anthropic  # noqa: F401  the real SDK (the test extra); missing, this file fails to import
import pytest
from fakeapi import JSONText, Malformed, Text, ToolCall
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._pricing import DEFAULT_PRICES

MODEL = "anthropic:claude-sonnet-4-6"


def make(tmp_path, config) -> Pipeline:
    return Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)


def test_streamed_text_usage_cost_and_model(fake_api, fast_config, tmp_path):
    fake_api.script(
        Text(
            "Pricing pages that convert.",
            input_tokens=120,
            output_tokens=9,
            cache_read=1500,
            cache_write=300,
            chunks=4,
        ),
        endpoint="anthropic",
    )
    p = make(tmp_path, fast_config)
    p.step("draft", "Write about {{ topic }}", model=MODEL, max_tokens=300)
    events = []
    run = p.run(
        {"topic": "pricing"},
        observer=lambda e, s, payload: events.append((e, s, payload)),
        stream=True,
    )

    res = run.results["draft"]
    assert res.state == "passed" and res.output == "Pricing pages that convert."
    deltas = [payload for e, s, payload in events if e == "text" and s == "draft"]
    assert len(deltas) == 4 and "".join(deltas) == res.output
    assert (res.usage.input_tokens, res.usage.output_tokens) == (120, 9)
    assert (res.usage.cache_read_tokens, res.usage.cache_write_tokens) == (1500, 300)
    price = DEFAULT_PRICES[MODEL]
    expected = (
        120 * price.input + 9 * price.output + 1500 * price.cache_read + 300 * price.cache_write
    ) / 1e6
    assert res.cost == pytest.approx(expected)
    assert res.model == MODEL and [a.outcome for a in res.attempts] == ["passed"]
    req = fake_api.requests_for("anthropic")[-1]
    assert req.stream and req.json["model"] == "claude-sonnet-4-6" and req.json["max_tokens"] == 300
    assert req.json["messages"] == [{"role": "user", "content": "Write about pricing"}]
    # the SDK's own retries are off and our key went out
    assert req.headers.get("x-stainless-retry-count") == "0"
    stored = p.store.results(run.run_id, "draft")[0]
    assert (stored["cache_read_tokens"], stored["cache_write_tokens"]) == (1500, 300)


def test_context_blocks_are_cacheable_system_blocks(fake_api, fast_config, tmp_path):
    p = make(tmp_path, fast_config)
    p.context("brand_voice", "Warm, direct, no jargon.")
    p.context("past_issues", "Issue 1: onboarding. Issue 2: pricing.")
    p.step(
        "draft",
        "Write about {{ topic }}",
        model=MODEL,
        contexts=["brand_voice", "past_issues"],
        system="You write newsletters.",
    )
    p.run({"topic": "pricing"})
    system = fake_api.requests_for("anthropic")[-1].json["system"]
    assert system == [
        {
            "type": "text",
            "text": "Warm, direct, no jargon.",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "text",
            "text": "Issue 1: onboarding. Issue 2: pricing.",
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "You write newsletters."},
    ]


def test_at_most_four_cache_breakpoints(fake_api, fast_config, tmp_path):
    p = make(tmp_path, fast_config)
    for i in range(6):
        p.context(f"c{i}", f"context {i}")
    p.step("draft", "Hi", model=MODEL, contexts=[f"c{i}" for i in range(6)])
    p.run()
    system = fake_api.requests_for("anthropic")[-1].json["system"]
    marked = [b["text"] for b in system if "cache_control" in b]
    assert marked == ["context 0", "context 1", "context 2", "context 5"]


def test_json_step_parses_and_retries_invalid_json_with_feedback(fake_api, fast_config, tmp_path):
    fake_api.script(
        Text("Sure! here it is: {oops", input_tokens=40, output_tokens=6),
        JSONText([{"name": "Acme", "angle": "price"}], input_tokens=50, output_tokens=12),
        endpoint="anthropic",
    )
    p = make(tmp_path, fast_config)
    p.step(
        "research",
        'List competitors as JSON: [{"name": ..., "angle": ...}]',
        model=MODEL,
        json=True,
    )
    res = p.run().results["research"]
    assert res.state == "passed" and res.output == [{"name": "Acme", "angle": "price"}]
    first, second = fake_api.requests_for("anthropic")
    assert "Respond with valid JSON only" in first.json["system"][-1]["text"]
    assert "not valid" in second.json["messages"][0]["content"]
    assert [a.outcome for a in res.attempts] == ["error", "passed"]
    assert "OutputError" in res.attempts[0].error
    # the failed attempt's tokens were spent and count
    assert res.attempts[0].usage.input_tokens == 40
    assert res.usage.input_tokens == 90 and res.usage.output_tokens == 18


class Competitor(BaseModel):
    name: str
    angle: str
    score: float = 0.5


def test_schema_step_uses_native_structured_output(fake_api, fast_config, tmp_path):
    fake_api.script(
        JSONText({"name": "Acme"}),  # misses a required field: retried
        JSONText({"name": "Acme", "angle": "price", "score": 0.9}),
        endpoint="anthropic",
    )
    p = make(tmp_path, fast_config)
    p.namespace["Competitor"] = Competitor
    p.step("top", "The main competitor of {{ topic }}", model=MODEL, schema="Competitor")
    res = p.run({"topic": "pricing"}).results["top"]
    assert res.state == "passed" and res.output == Competitor(name="Acme", angle="price", score=0.9)
    requests = fake_api.requests_for("anthropic")
    assert len(requests) == 2
    fmt = requests[0].json["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["additionalProperties"] is False
    assert set(fmt["schema"]["properties"]) == {"name", "angle", "score"}
    assert "does not match schema Competitor" in res.attempts[0].error
    assert "tools" not in requests[0].json


def test_tool_use_loop_calls_notebook_function(fake_api, fast_config, tmp_path):
    calls = []

    def lookup_price(product: str, currency: str = "EUR") -> dict:
        """Look up a product's list price.

        Args:
            product: the product name
            currency: ISO currency code
        """
        calls.append((product, currency))
        return {"product": product, "price": 49, "currency": currency}

    fake_api.script(
        ToolCall(
            "lookup_price",
            {"product": "Pro plan"},
            text="Let me check.",
            input_tokens=30,
            output_tokens=8,
        ),
        Text("The Pro plan costs 49 EUR.", input_tokens=60, output_tokens=10),
        endpoint="anthropic",
    )
    p = make(tmp_path, fast_config)
    p.namespace["lookup_price"] = lookup_price
    p.step("answer", "How much is the Pro plan?", model=MODEL, tools=["lookup_price"])
    res = p.run().results["answer"]
    assert res.state == "passed", res.error
    assert res.output == "The Pro plan costs 49 EUR."
    assert calls == [("Pro plan", "EUR")]
    first, second = fake_api.requests_for("anthropic")
    tool = first.json["tools"][0]
    assert (
        tool["name"] == "lookup_price" and tool["description"] == "Look up a product's list price."
    )
    assert tool["input_schema"]["required"] == ["product"]
    assert tool["input_schema"]["properties"]["product"]["description"] == "the product name"
    assistant, results = second.json["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"][1]["name"] == "lookup_price"
    block = results["content"][0]
    assert block["type"] == "tool_result" and block["tool_use_id"] == assistant["content"][1]["id"]
    assert '"price": 49' in block["content"] and block["is_error"] is False
    assert res.usage.input_tokens == 90 and res.usage.output_tokens == 18  # both turns


def test_tool_loop_stops_at_max_turns(fake_api, fast_config, tmp_path):
    def ping() -> str:
        """Ping."""
        return "pong"

    fake_api.script(ToolCall("ping"), ToolCall("ping"), Text("done"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.namespace["ping"] = ping
    p.step("loop", "Ping until told to stop", model=MODEL, tools=["ping"], max_turns=3, retries=0)
    res = p.run().results["loop"]
    assert res.output == "done"
    requests = fake_api.requests_for("anthropic")
    assert len(requests) == 3
    assert "tool_choice" not in requests[0].json and requests[2].json["tool_choice"] == {
        "type": "none"
    }


def test_tool_errors_go_back_to_the_model(fake_api, fast_config, tmp_path):
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    fake_api.script(
        ToolCall("divide", {"a": 1, "b": 0}), Text("Cannot divide by zero."), endpoint="anthropic"
    )
    p = make(tmp_path, fast_config)
    p.namespace["divide"] = divide
    p.step("calc", "1/0?", model=MODEL, tools=["divide"])
    assert p.run().results["calc"].output == "Cannot divide by zero."
    block = fake_api.requests_for("anthropic")[1].json["messages"][2]["content"][0]
    assert block["is_error"] is True and "ZeroDivisionError" in block["content"]


def test_temperature_is_sent(fake_api, fast_config, tmp_path):
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=MODEL, temperature=0.2)
    p.run()
    assert fake_api.requests_for("anthropic")[-1].json["temperature"] == 0.2


def test_malformed_stream_is_a_transport_fault_retried_without_feedback(
    fake_api, fast_config, tmp_path
):
    fake_api.script(Malformed(), Text("fine"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=MODEL)
    res = p.run().results["a"]
    assert res.output == "fine" and len(fake_api.requests_for("anthropic")) == 2
    assert res.attempts[0].outcome == "error" and "malformed" in res.attempts[0].error
    first, retry = fake_api.requests_for("anthropic")
    assert retry.json["messages"] == first.json["messages"]  # resent as it was: no feedback added


def test_missing_key_names_the_variable_and_sends_nothing(
    fake_api, fast_config, tmp_path, monkeypatch
):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=MODEL)
    res = p.run().results["a"]
    assert res.state == "failed" and "ANTHROPIC_API_KEY is not set" in res.error
    assert fake_api.requests == [] and len(res.attempts) == 1


def test_missing_sdk_names_the_extra(fast_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model="anthropic:claude-haiku-4-5")
    res = p.run().results["a"]
    assert res.state == "failed"
    assert "pip install 'nbconductor[anthropic]'" in res.error


def test_step_magic_streams_and_binds_output(fake_api, tmp_path, monkeypatch):
    from IPython.utils.capture import capture_output
    from notebook_shell import fresh_shell

    fake_api.script(
        Text("A short issue about pricing.", input_tokens=11, output_tokens=7), endpoint="anthropic"
    )
    shell = fresh_shell(tmp_path, monkeypatch)
    magics = shell.user_ns["__nbconductor__"]
    shell.run_cell('topic = "pricing"')
    with capture_output() as cap:
        shell.run_cell_magic("step", f"draft --model {MODEL}", "Write about {{ topic }}")
    assert shell.user_ns["draft"] == "A short issue about pricing."
    req = fake_api.requests_for("anthropic")[-1]
    assert req.stream and req.json["messages"][0]["content"] == "Write about pricing"
    assert any("draft" in o.data.get("text/plain", "") for o in cap.outputs)
    assert magics.pipeline.results["draft"].usage.output_tokens == 7
    magics.pipeline.close()


def test_unknown_or_unusable_tool_is_a_definition_error(fake_api, fast_config, tmp_path):
    from nbconductor._errors import DefinitionError

    def lookup_price(product: str) -> int:
        return 1

    p = make(tmp_path, fast_config)
    p.namespace.update(lookup_price=lookup_price, limit=3)
    p.step("a", "Hi", model=MODEL, tools=["lookup_prices"])
    with pytest.raises(DefinitionError, match="did you mean `lookup_price`"):
        p.run()
    p.step("a", "Hi", model=MODEL, tools=["limit"])
    with pytest.raises(DefinitionError, match=r"`limit` is not a function \(int\)"):
        p.run()
    assert fake_api.requests == []
