"""``openai:`` aliases with ``api = "responses"``: direct calls through the official SDK's
Responses client against the loopback fake's ``POST /v1/responses`` (streamed)."""

from __future__ import annotations

import openai  # noqa: F401 - the test extras install it
import pytest
from fakeapi import JSONText, Text
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._errors import OptionError


class Post(BaseModel):
    title: str
    words: int


def make(tmp_path, config) -> Pipeline:
    p = Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)
    p.alias("resp", "openai:gpt-4.1-mini", api="responses")
    return p


def test_text_streams_from_the_responses_api_with_usage(fake_api, fast_config, tmp_path):
    fake_api.script(
        Text("Bonjour tout le monde", input_tokens=1200, output_tokens=6, cache_read=1024),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    events = []
    p.step("hi", "Say hello", model="resp", system="Answer in French.", max_tokens=40)
    res = p.run(observer=lambda *e: events.append(e), stream=True).results["hi"]
    assert res.state == "passed" and res.output == "Bonjour tout le monde"
    seen = [payload for e, s, payload in events if e == "text"]
    assert "".join(seen) == "Bonjour tout le monde" and len(seen) == 2  # two deltas
    # input_tokens counts the cached ones too; nbconductor reports them apart
    assert (res.usage.input_tokens, res.usage.cache_read_tokens, res.usage.output_tokens) == (
        176,
        1024,
        6,
    )
    [req] = fake_api.requests_for("openai")
    assert req.path == "/v1/responses" and req.json["stream"] is True
    assert req.json["instructions"] == "Answer in French."
    assert req.json["input"] == [{"role": "user", "content": "Say hello"}]
    assert req.json["max_output_tokens"] == 40 and "messages" not in req.json
    p.close()


def test_schema_is_a_strict_text_format(fake_api, fast_config, tmp_path):
    fake_api.script(JSONText({"title": "T", "words": 120}), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.namespace["Post"] = Post
    p.step("post", "Plan a post", model="resp", schema="Post")
    res = p.run().results["post"]
    assert res.output == Post(title="T", words=120)
    [req] = fake_api.requests_for("openai")
    fmt = req.json["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "Post" and fmt["strict"] is True
    assert fmt["schema"]["required"] == ["title", "words"]
    p.close()


def test_responses_needs_an_openai_model(tmp_path, fast_config):
    p = Pipeline(store=":memory:", config=fast_config, root=tmp_path)
    with pytest.raises(OptionError, match="needs an openai: model"):
        p.alias("r", "anthropic:claude-haiku-4-5", api="responses")
    with pytest.raises(OptionError, match="alias r: api"):
        p.alias("r", "openai:gpt-4.1-mini", api="assistants")


def test_a_failed_response_is_classified_like_the_same_http_error(fake_api, fast_config, tmp_path):
    """``response.failed`` carries the provider's error code: a server error or rate limit is
    retried (a transport fault, not a quality failure), an invalid prompt is not."""
    from fakeresponses import Failed

    fake_api.script(
        Failed("server_error", "The model failed to generate a response."),
        Text("Recovered"),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    p.step("hi", "Say hello", model="resp", retries=2)
    res = p.run(stream=True).results["hi"]
    assert res.state == "passed" and res.output == "Recovered"
    assert [a.outcome for a in res.attempts] == ["error", "passed"]
    assert not res.attempts[0].quality_failure  # a provider fault, not a quality failure
    assert "response failed (server_error): The model failed" in res.attempts[0].error
    p.close()

    fake_api.reset()
    fake_api.script(Failed("invalid_prompt", "Your prompt was flagged."), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.step("bad", "Say something flagged", model="resp", retries=2)
    res = p.run(stream=True).results["bad"]
    assert res.state == "failed" and len(fake_api.requests_for("openai")) == 1  # not retried
    assert "response failed (invalid_prompt): Your prompt was flagged." in res.error
    p.close()


def test_tool_use_streams_through_the_responses_api(fake_api, fast_config, tmp_path):
    """A tool call arrives as streamed function-call events; its result goes back as a
    ``function_call_output`` input item beside the call, on the same endpoint."""
    import json

    from fakeapi import ToolCall

    def word_count(text: str) -> int:
        """Count the words in a text."""
        return len(text.split())

    fake_api.script(
        ToolCall("word_count", {"text": "one two three"}, id="call_wc1"),
        Text("It has 3 words."),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    p.namespace["word_count"] = word_count
    p.step("count", "How many words in 'one two three'?", model="resp", tools=["word_count"])
    res = p.run(stream=True).results["count"]
    assert res.state == "passed" and res.output == "It has 3 words."
    first, second = fake_api.requests_for("openai")
    assert first.path == second.path == "/v1/responses" and first.json["stream"] is True
    assert first.json["tools"][0]["name"] == "word_count"  # flattened function tool
    call, output = second.json["input"][-2:]
    assert call["type"] == "function_call" and call["call_id"] == "call_wc1"
    assert json.loads(call["arguments"]) == {"text": "one two three"}
    assert output == {"type": "function_call_output", "call_id": "call_wc1", "output": "3"}
    p.close()
