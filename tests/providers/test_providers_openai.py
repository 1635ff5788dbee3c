"""The OpenAI and OpenAI-compatible adapters, through the real SDK against the loopback fake API."""

from __future__ import annotations

import json

import openai  # noqa: F401 - the test extras install it
import pytest
from conftest import FAKE_OPENAI_KEY
from fakeapi import Image, JSONText, Raw, Text, ToolCall, tiny_png
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._config import AliasSpec
from nbconductor._pricing import DEFAULT_PRICES
from nbconductor._types import PNG

MODEL = "openai:gpt-4.1-mini"


def make(tmp_path, config) -> Pipeline:
    return Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)


def test_streamed_text_usage_and_system_message(fake_api, fast_config, tmp_path):
    fake_api.script(
        Text(
            "Bonjour tout le monde", input_tokens=1200, output_tokens=6, cache_read=1024, chunks=3
        ),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    p.context("tone", "Friendly.")
    p.step(
        "hello",
        "Say hello in {{ lang }}",
        model=MODEL,
        contexts=["tone"],
        system="Be brief.",
        max_tokens=50,
        temperature=0.3,
    )
    events = []
    res = p.run({"lang": "fr"}, observer=lambda *e: events.append(e), stream=True).results["hello"]

    assert res.state == "passed" and res.output == "Bonjour tout le monde"
    assert "".join(payload for e, s, payload in events if e == "text") == res.output
    # OpenAI counts cached tokens inside prompt_tokens; nbconductor reports them apart
    assert (res.usage.input_tokens, res.usage.cache_read_tokens, res.usage.output_tokens) == (
        176,
        1024,
        6,
    )
    assert res.usage.cache_write_tokens is None  # the server sent none
    price = DEFAULT_PRICES[MODEL]
    assert res.cost == pytest.approx(
        (176 * price.input + 1024 * price.cache_read + 6 * price.output) / 1e6
    )
    assert res.model == MODEL
    body = fake_api.requests_for("openai")[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "Friendly.\n\nBe brief."},
        {"role": "user", "content": "Say hello in fr"},
    ]
    assert body["max_completion_tokens"] == 50 and body["temperature"] == 0.3
    assert (
        fake_api.requests_for("openai")[-1].headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    )


def test_json_mode(fake_api, fast_config, tmp_path):
    fake_api.script(JSONText({"items": ["a", "b"]}), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.step("items", "List two letters", model=MODEL, json=True)
    assert p.run().results["items"].output == {"items": ["a", "b"]}
    body = fake_api.requests_for("openai")[-1].json
    assert body["response_format"] == {"type": "json_object"}
    assert "JSON" in body["messages"][0]["content"]  # JSON mode needs the word in the prompt


class Post(BaseModel):
    title: str
    tags: list[str]
    words: int = 300


class Loose(BaseModel):
    title: str
    extra: dict[str, int]


def test_schema_is_strict_json_schema_and_validated(fake_api, fast_config, tmp_path):
    fake_api.script(
        JSONText({"title": "T", "tags": "not-a-list", "words": 1}),
        JSONText({"title": "T", "tags": ["a"], "words": 120}),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    p.namespace["Post"] = Post
    p.step("post", "Plan a post", model=MODEL, schema="Post")
    res = p.run().results["post"]
    assert res.output == Post(title="T", tags=["a"], words=120)
    assert [a.outcome for a in res.attempts] == ["error", "passed"]
    first, second = fake_api.requests_for("openai")
    fmt = first.json["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Post"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == [
        "title",
        "tags",
        "words",
    ]
    assert (
        "does not match schema Post" in second.json["messages"][-1]["content"]
    )  # the retry carries it


def test_schema_that_cannot_be_strict_is_sent_non_strict(fake_api, fast_config, tmp_path):
    fake_api.script(JSONText({"title": "T", "extra": {"a": 1}}), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.namespace["Loose"] = Loose
    p.step("loose", "Anything", model=MODEL, schema="Loose")
    assert p.run().results["loose"].output == Loose(title="T", extra={"a": 1})
    fmt = fake_api.requests_for("openai")[-1].json["response_format"]["json_schema"]
    assert fmt["strict"] is False and fmt["schema"] == Loose.model_json_schema()


def test_tool_use_loop(fake_api, fast_config, tmp_path):
    def word_count(text: str) -> int:
        """Count the words in a text."""
        return len(text.split())

    fake_api.script(
        ToolCall("word_count", {"text": "one two three"}),
        Text("It has 3 words."),
        endpoint="openai",
    )
    p = make(tmp_path, fast_config)
    p.namespace["word_count"] = word_count
    p.step("count", "How many words in 'one two three'?", model=MODEL, tools=["word_count"])
    res = p.run().results["count"]
    assert res.output == "It has 3 words."
    first, second = fake_api.requests_for("openai")
    assert first.json["tools"][0]["function"]["name"] == "word_count"
    assert first.json["tools"][0]["function"]["parameters"]["properties"] == {
        "text": {"type": "string"}
    }
    assistant, tool = second.json["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "word_count"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {
        "text": "one two three"
    }
    assert tool == {
        "role": "tool",
        "tool_call_id": assistant["tool_calls"][0]["id"],
        "content": "3",
    }


def test_image_step_stores_png(fake_api, fast_config, tmp_path):
    png = tiny_png(16, 16, (10, 200, 30))
    fake_api.script(Image(png_bytes=png, revised_prompt="a green square"), endpoint="images")
    p = make(tmp_path, fast_config)
    p.step("cover", "A cover image about {{ topic }}", image=True, model="openai:gpt-image-1")
    run = p.run({"topic": "pricing"})
    res = run.results["cover"]
    assert res.state == "passed" and isinstance(res.output, PNG) and bytes(res.output) == png
    req = fake_api.requests_for("images")[-1]
    assert req.path == "/v1/images/generations"
    assert (
        req.json["model"] == "gpt-image-1" and req.json["prompt"] == "A cover image about pricing"
    )
    assert "response_format" not in req.json  # GPT image models always answer in base64
    stored = p.store.result(res.result_id)
    assert bytes(stored.output) == png
    assert p.store.results(run.run_id, "cover")[0]["output_kind"] != "text"


def test_dalle_asks_for_base64_and_is_priced_per_image(fake_api, fast_config, tmp_path):
    p = make(tmp_path, fast_config)
    p.step("pic", "A cat", image=True, model="openai:dall-e-3")
    res = p.run().results["pic"]
    assert bytes(res.output).startswith(b"\x89PNG")
    assert fake_api.requests_for("images")[-1].json["response_format"] == "b64_json"
    assert res.cost == pytest.approx(0.04)


def test_auth_error_names_the_key(fake_api, fast_config, tmp_path):
    from fakeapi import Error

    fake_api.script(Error(401, "Incorrect API key provided"), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=MODEL, retries=2)
    res = p.run().results["a"]
    assert res.state == "failed" and "OPENAI_API_KEY" in res.error and "401" in res.error
    assert len(fake_api.requests_for("openai")) == 1


def compat_config(fast_config, base_url, **extra):
    return fast_config.model_copy(
        update={
            "aliases": {
                "local": AliasSpec(model="openai-compatible:llama3.1", base_url=base_url, **extra)
            }
        }
    )


def test_compatible_server_gets_a_placeholder_key_not_the_openai_key(
    fake_api, fast_config, tmp_path
):
    fake_api.script(Text("local answer"), endpoint="openai")
    p = make(tmp_path, compat_config(fast_config, fake_api.openai_base_url))
    p.step("a", "Hi", model="local")
    res = p.run().results["a"]
    assert res.output == "local answer" and res.model == "openai-compatible:llama3.1"
    req = fake_api.requests_for("openai")[-1]
    assert req.json["model"] == "llama3.1"
    assert FAKE_OPENAI_KEY not in req.headers["authorization"]


def test_compatible_server_key_from_alias_env(fake_api, fast_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "vllm-secret-key-123")
    p = make(
        tmp_path, compat_config(fast_config, fake_api.openai_base_url, api_key_env="VLLM_API_KEY")
    )
    p.step("a", "Hi", model="local", max_tokens=20)
    p.run()
    req = fake_api.requests_for("openai")[-1]
    assert req.headers["authorization"] == "Bearer vllm-secret-key-123"
    assert req.json["max_tokens"] == 20 and "max_completion_tokens" not in req.json

    monkeypatch.delenv("VLLM_API_KEY")
    p.step("b", "Hello", model="local")
    res = p.run(targets=["b"]).results["b"]
    assert res.state == "failed" and "VLLM_API_KEY is not set" in res.error


def test_compatible_without_base_url_says_how_to_configure(fake_api, fast_config, tmp_path):
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model="openai-compatible:llama3.1")
    res = p.run().results["a"]
    assert res.state == "failed" and "base_url" in res.error and "nbconductor.toml" in res.error
    assert fake_api.requests == []


def test_server_without_usage_reports_an_estimate(fake_api, fast_config, tmp_path):
    # Some compatible servers ignore stream_options and never send usage.
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama3.1",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "hi there"},
                "finish_reason": None,
            }
        ],
    }
    done = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(done)}\n\ndata: [DONE]\n\n"
    fake_api.script(Raw(200, sse, content_type="text/event-stream"), endpoint="openai")
    p = make(tmp_path, compat_config(fast_config, fake_api.openai_base_url))
    p.step("a", "Hi", model="local")
    res = p.run().results["a"]
    assert res.output == "hi there"
    # estimated from the text (about 4 characters a token) and marked so, not unknown
    assert res.usage.estimated and res.usage.output_tokens == 2 and res.usage.input_tokens > 0
    assert res.cost == 0.0  # a server on this machine is not priced at list prices


def test_missing_sdk_names_the_extra(fast_config, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=MODEL)
    res = p.run().results["a"]
    assert res.state == "failed" and "pip install 'nbconductor[openai]'" in res.error
