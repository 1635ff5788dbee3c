"""The fake API server speaks the real wire formats: proven with the official
async SDKs over loopback HTTP (max_retries=0 unless retries are under test)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import anthropic
import openai
import pytest

try:  # the SDKs' HTTP library: httpx2 for current releases, httpx for older ones
    import httpx2
except ImportError:  # pragma: no cover - older SDKs
    import httpx as httpx2

from fakeapi import (
    Cut,
    Error,
    FakeAPI,
    Image,
    JSONText,
    Malformed,
    Raw,
    Slow,
    Stall,
    StreamError,
    Text,
    ToolCall,
    fake_api,
    tiny_png,
)

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def api():
    with fake_api() as a:
        yield a
        assert a.errors == []


def ant(api: FakeAPI, **kw) -> anthropic.AsyncAnthropic:
    kw.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(base_url=api.anthropic_base_url, api_key="sk-ant-test", **kw)


def oai(api: FakeAPI, **kw) -> openai.AsyncOpenAI:
    kw.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=api.openai_base_url, api_key="sk-test", **kw)


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------ text + usage


def test_anthropic_nonstream_text_usage(api):
    api.script(Text("hello there", input_tokens=12, output_tokens=3), endpoint="anthropic")

    async def go():
        async with ant(api) as c:
            return await c.messages.create(
                model="claude-test", max_tokens=50, messages=MSGS, system="be brief"
            )

    m = run(go())
    assert m.content[0].type == "text" and m.content[0].text == "hello there"
    assert m.model == "claude-test" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (12, 3)
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    req = api.requests[-1]
    assert req.endpoint == "anthropic" and req.path == "/v1/messages" and req.method == "POST"
    assert req.json["system"] == "be brief" and req.json["max_tokens"] == 50
    # anthropic 2.x sends the key as a bearer token; older SDKs used x-api-key
    assert "sk-ant-test" in (
        req.headers.get("x-api-key"),
        req.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert "anthropic-version" in req.headers
    assert not req.stream


def test_anthropic_stream_text_usage_and_cache(api):
    api.script(
        Text(
            "streamed words here", input_tokens=7, output_tokens=4, cache_read=100, cache_write=20
        ),
        endpoint="anthropic",
    )

    async def go():
        async with ant(api) as c:
            raw_types, deltas = [], []
            stream = await c.messages.create(model="m", max_tokens=10, messages=MSGS, stream=True)
            async for ev in stream:
                raw_types.append(ev.type)
                if ev.type == "content_block_delta":
                    deltas.append(ev.delta.text)
                if ev.type == "message_delta":
                    delta_usage = ev.usage
            return raw_types, deltas, delta_usage

    types, deltas, du = run(go())
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") == 3 and "".join(deltas) == "streamed words here"
    assert (
        du.output_tokens,
        du.input_tokens,
        du.cache_read_input_tokens,
        du.cache_creation_input_tokens,
    ) == (4, 7, 100, 20)
    assert api.requests[-1].stream

    # and via the SDK's accumulating helper
    api.script(
        Text("abc", input_tokens=5, output_tokens=2, cache_read=30, cache_write=0),
        endpoint="anthropic",
    )

    async def helper():
        async with ant(api) as c:
            async with c.messages.stream(model="m", max_tokens=10, messages=MSGS) as s:
                text = "".join([t async for t in s.text_stream])
                return text, await s.get_final_message()

    text, final = run(helper())
    assert text == "abc" and final.content[0].text == "abc"
    u = final.usage
    assert (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_input_tokens,
        u.cache_creation_input_tokens,
    ) == (5, 2, 30, 0)


def test_anthropic_nonstream_cache_fields(api):
    api.script(
        Text("x", input_tokens=3, output_tokens=1, cache_read=1500, cache_write=250),
        endpoint="anthropic",
    )

    async def go():
        async with ant(api) as c:
            return await c.messages.create(model="m", max_tokens=5, messages=MSGS)

    u = run(go()).usage
    assert (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_input_tokens,
        u.cache_creation_input_tokens,
    ) == (3, 1, 1500, 250)


def test_openai_nonstream_text_usage(api):
    api.script(Text("bonjour", input_tokens=21, output_tokens=2, cache_read=16), endpoint="openai")

    async def go():
        async with oai(api) as c:
            return await c.chat.completions.create(model="gpt-test", messages=MSGS, temperature=0)

    r = run(go())
    assert r.choices[0].message.content == "bonjour" and r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-test"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (21, 2, 23)
    assert r.usage.prompt_tokens_details.cached_tokens == 16
    req = api.requests[-1]
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == "Bearer sk-test"
    assert req.json["temperature"] == 0


def test_openai_stream_text_usage(api):
    api.script(
        Text("one two three four", input_tokens=9, output_tokens=4, cache_read=8), endpoint="openai"
    )

    async def go():
        async with oai(api) as c:
            stream = await c.chat.completions.create(
                model="m", messages=MSGS, stream=True, stream_options={"include_usage": True}
            )
            parts, usage, finish = [], None, None
            async for ch in stream:
                assert ch.object == "chat.completion.chunk"
                if ch.choices:
                    if ch.choices[0].delta.content:
                        parts.append(ch.choices[0].delta.content)
                    finish = ch.choices[0].finish_reason or finish
                if ch.usage is not None:
                    usage = ch.usage
            return parts, usage, finish

    parts, usage, finish = run(go())
    assert len(parts) == 3 and "".join(parts) == "one two three four" and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (9, 4, 13)
    assert usage.prompt_tokens_details.cached_tokens == 8


def test_openai_stream_without_include_usage_has_no_usage(api):
    async def go():
        async with oai(api) as c:
            stream = await c.chat.completions.create(model="gpt-q", messages=MSGS, stream=True)
            return [ch async for ch in stream]

    chunks = run(go())
    assert all(ch.usage is None for ch in chunks)
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == "fake reply from gpt-q"
    )


def test_default_reply_and_callable_reply(api):
    def judge(body):
        prompt = body["messages"][-1]["content"]
        return JSONText({"score": 9 if "good" in prompt else 2})

    api.set_default(judge, endpoint="openai")

    async def go():
        async with oai(api) as o, ant(api) as a:
            g = await o.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a good essay"}]
            )
            b = await o.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a bad essay"}]
            )
            d = await a.messages.create(model="claude-zz", max_tokens=5, messages=MSGS)
            return g, b, d

    g, b, d = run(go())
    assert json.loads(g.choices[0].message.content) == {"score": 9}
    assert json.loads(b.choices[0].message.content) == {"score": 2}
    assert d.content[0].text == "fake reply from claude-zz"


def test_shared_queue_and_order(api):
    api.script(Text("first"), Text("second"))  # shared, any endpoint
    api.script(Text("oa-only"), endpoint="openai")

    async def go():
        async with oai(api) as o, ant(api) as a:
            r1 = await o.chat.completions.create(model="m", messages=MSGS)
            r2 = await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            r3 = await o.chat.completions.create(model="m", messages=MSGS)
            r4 = await o.chat.completions.create(model="m", messages=MSGS)
            return r1, r2, r3, r4

    r1, r2, r3, r4 = run(go())
    assert r1.choices[0].message.content == "oa-only"
    assert r2.content[0].text == "first"
    assert r3.choices[0].message.content == "second"
    assert r4.choices[0].message.content == "fake reply from m"
    assert [r.endpoint for r in api.requests] == ["openai", "anthropic", "openai", "openai"]


# ------------------------------------------------------------------ errors


def test_anthropic_rate_limit_with_retry_after(api):
    api.script(Error(429, "slow down", retry_after=7), endpoint="anthropic")

    async def go():
        async with ant(api) as c:
            await c.messages.create(model="m", max_tokens=5, messages=MSGS)

    with pytest.raises(anthropic.RateLimitError) as ei:
        run(go())
    e = ei.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "7"
    assert e.body["type"] == "error"
    assert e.body["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_openai_auth_error(api):
    api.script(Error(401, "Incorrect API key provided"), endpoint="openai")

    async def go():
        async with oai(api) as c:
            await c.chat.completions.create(model="m", messages=MSGS)

    with pytest.raises(openai.AuthenticationError) as ei:
        run(go())
    assert ei.value.status_code == 401
    assert ei.value.body == {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_require_key():
    with fake_api(require_key="good") as api:

        async def go():
            async with openai.AsyncOpenAI(
                base_url=api.openai_base_url, api_key="bad", max_retries=0
            ) as c:
                await c.chat.completions.create(model="m", messages=MSGS)

        with pytest.raises(openai.AuthenticationError):
            run(go())

        async def ok():
            async with anthropic.AsyncAnthropic(
                base_url=api.base_url, api_key="good", max_retries=0
            ) as c:
                return await c.messages.create(model="m", max_tokens=5, messages=MSGS)

        assert run(ok()).content[0].text == "fake reply from m"


ANT_ERRORS = {
    400: anthropic.BadRequestError,
    401: anthropic.AuthenticationError,
    403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError,
    408: anthropic.APIStatusError,
    409: anthropic.ConflictError,
    422: anthropic.UnprocessableEntityError,
    429: anthropic.RateLimitError,
    500: anthropic.InternalServerError,
    503: anthropic.InternalServerError,
    529: anthropic.InternalServerError,
}
OAI_ERRORS = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    408: openai.APIStatusError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    503: openai.InternalServerError,
    529: openai.InternalServerError,
}


def test_error_status_matrix(api):
    statuses = sorted(ANT_ERRORS)
    api.script(*[Error(s, f"boom {s}") for s in statuses], endpoint="anthropic")
    api.script(*[Error(s, f"boom {s}") for s in statuses], endpoint="openai")

    async def go():
        got = []
        async with ant(api) as a, oai(api) as o:
            for s in statuses:
                try:
                    await a.messages.create(model="m", max_tokens=5, messages=MSGS)
                except anthropic.APIStatusError as e:
                    got.append(("a", s, e))
                try:
                    await o.chat.completions.create(model="m", messages=MSGS)
                except openai.APIStatusError as e:
                    got.append(("o", s, e))
        return got

    got = run(go())
    assert len(got) == 2 * len(statuses)
    for who, s, e in got:
        assert e.status_code == s
        assert isinstance(e, (ANT_ERRORS if who == "a" else OAI_ERRORS)[s]), (who, s, type(e))
        if who == "a":
            assert e.body["error"]["message"] == f"boom {s}"
        else:
            assert e.body["message"] == f"boom {s}"
    over = [e for who, s, e in got if who == "a" and s == 529][0]
    assert (
        type(over).__name__ == "OverloadedError"
        and over.body["error"]["type"] == "overloaded_error"
    )


def test_sdk_retry_honours_retry_after_ms(api):
    """The fake records timestamps, so a client's backoff can be asserted."""
    api.script(Error(429, "later", retry_after_ms=400), Text("finally"), endpoint="anthropic")

    async def go():
        async with ant(api, max_retries=1) as c:
            return await c.messages.create(model="m", max_tokens=5, messages=MSGS)

    assert run(go()).content[0].text == "finally"
    assert len(api.requests) == 2 and api.requests[1].headers["x-stainless-retry-count"] == "1"
    assert api.gaps("anthropic")[0] >= 0.4


def test_stream_error_event(api):
    api.script(StreamError("Overloaded", text="half"), endpoint="anthropic")
    api.script(StreamError("Overloaded", text="half"), endpoint="openai")

    async def go():
        async with ant(api) as a, oai(api) as o:
            res = []
            try:
                async for _ in await a.messages.create(
                    model="m", max_tokens=5, messages=MSGS, stream=True
                ):
                    pass
            except anthropic.APIStatusError as e:
                res.append(e)
            try:
                async for _ in await o.chat.completions.create(
                    model="m", messages=MSGS, stream=True
                ):
                    pass
            except openai.APIError as e:
                res.append(e)
            return res

    ea, eo = run(go())
    assert ea.body["error"]["type"] == "overloaded_error"
    assert eo.message == "Overloaded"


# ------------------------------------------------------------------ faults


def test_cut_stream(api):
    """Cut mid-stream:
    anthropic (stream=True or messages.stream): raw ``httpx2.RemoteProtocolError``
        (not wrapped in an anthropic exception!) once the partial text was yielded.
    openai: ``openai.APIConnectionError`` (cause: httpx2.RemoteProtocolError)."""
    api.script(Cut("partial", after_chunks=2), Cut("xyz", after_chunks=1), endpoint="anthropic")
    api.script(Cut("partial", after_chunks=2), endpoint="openai")

    async def go():
        out = {}
        async with ant(api) as a, oai(api) as o:
            got = []
            with pytest.raises(httpx2.RemoteProtocolError):
                async for ev in await a.messages.create(
                    model="m", max_tokens=5, messages=MSGS, stream=True
                ):
                    if ev.type == "content_block_delta":
                        got.append(ev.delta.text)
            out["a"] = "".join(got)
            got = []
            with pytest.raises(httpx2.RemoteProtocolError):
                async with a.messages.stream(model="m", max_tokens=5, messages=MSGS) as s:
                    async for t in s.text_stream:
                        got.append(t)
            out["a2"] = "".join(got)
            got = []
            with pytest.raises(openai.APIConnectionError) as ei:
                async for ch in await o.chat.completions.create(
                    model="m", messages=MSGS, stream=True
                ):
                    if ch.choices and ch.choices[0].delta.content:
                        got.append(ch.choices[0].delta.content)
            assert isinstance(ei.value.__cause__, httpx2.RemoteProtocolError)
            out["o"] = "".join(got)
        return out

    assert run(go()) == {"a": "partial", "a2": "xyz", "o": "partial"}


def test_cut_nonstream(api):
    """Non-stream Cut: both SDKs raise their APIConnectionError."""
    api.script(Cut(), endpoint="anthropic")
    api.script(Cut(), endpoint="openai")

    async def go():
        async with ant(api) as a, oai(api) as o:
            with pytest.raises(anthropic.APIConnectionError):
                await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            with pytest.raises(openai.APIConnectionError):
                await o.chat.completions.create(model="m", messages=MSGS)

    run(go())


def test_stall_triggers_timeouts(api):
    """Stall: non-stream -> anthropic.APITimeoutError / openai.APITimeoutError.
    Stream: anthropic -> raw ``httpx2.ReadTimeout`` during iteration (not wrapped);
    openai -> openai.APITimeoutError."""
    api.script(Stall(5), Stall(5, text="aaabbbccc"), endpoint="anthropic")
    api.script(Stall(5), Stall(5, text="aaabbbccc"), endpoint="openai")

    async def go():
        got = {}
        async with ant(api, timeout=0.5) as a, oai(api, timeout=0.5) as o:
            t = time.monotonic()
            with pytest.raises(anthropic.APITimeoutError):
                await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            with pytest.raises(openai.APITimeoutError):
                await o.chat.completions.create(model="m", messages=MSGS)
            parts = []
            with pytest.raises(httpx2.ReadTimeout):
                async for ev in await a.messages.create(
                    model="m", max_tokens=5, messages=MSGS, stream=True
                ):
                    if ev.type == "content_block_delta":
                        parts.append(ev.delta.text)
            got["a"] = parts
            parts = []
            with pytest.raises(openai.APITimeoutError):
                async for ch in await o.chat.completions.create(
                    model="m", messages=MSGS, stream=True
                ):
                    if ch.choices and ch.choices[0].delta.content:
                        parts.append(ch.choices[0].delta.content)
            got["o"] = parts
            got["elapsed"] = time.monotonic() - t
        return got

    got = run(go())
    assert got["a"] == ["aaa"] and got["o"] == ["aaa"]
    assert got["elapsed"] < 4


def test_stall_short_then_completes(api):
    api.script(Stall(0.2, text="late but fine"), endpoint="openai")
    api.script(Slow(0.2, Text("slow")), endpoint="anthropic")

    async def go():
        async with oai(api) as o, ant(api) as a:
            s = await o.chat.completions.create(model="m", messages=MSGS, stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
            m = await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            return text, m.content[0].text

    assert run(go()) == ("late but fine", "slow")


def test_malformed(api):
    """Malformed (stream and non-stream, both SDKs): ``json.JSONDecodeError``
    (a ValueError) escapes the SDK unwrapped."""
    api.script(Malformed(), Malformed, endpoint="anthropic")  # a bare class is instantiated
    api.script(Malformed(), Malformed(), endpoint="openai")

    async def go():
        async with ant(api) as a, oai(api) as o:
            with pytest.raises(json.JSONDecodeError):
                await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            with pytest.raises(json.JSONDecodeError):
                async for _ in await a.messages.create(
                    model="m", max_tokens=5, messages=MSGS, stream=True
                ):
                    pass
            with pytest.raises(json.JSONDecodeError):
                await o.chat.completions.create(model="m", messages=MSGS)
            with pytest.raises(json.JSONDecodeError):
                async for _ in await o.chat.completions.create(
                    model="m", messages=MSGS, stream=True
                ):
                    pass

    run(go())


# ------------------------------------------------------------------ tools / structured output


def test_tool_calls(api):
    args = {"city": "Paris", "days": 3, "nested": {"a": [1, 2]}}
    api.script(
        ToolCall("get_weather", args),
        ToolCall("get_weather", args, text="Let me check."),
        endpoint="anthropic",
    )
    api.script(ToolCall("get_weather", args), ToolCall("get_weather", args), endpoint="openai")
    tools_a = [
        {
            "name": "get_weather",
            "description": "w",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    tools_o = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]

    async def go():
        async with ant(api) as a, oai(api) as o:
            m1 = await a.messages.create(model="m", max_tokens=50, messages=MSGS, tools=tools_a)
            async with a.messages.stream(
                model="m", max_tokens=50, messages=MSGS, tools=tools_a
            ) as s:
                m2 = await s.get_final_message()
            r1 = await o.chat.completions.create(model="m", messages=MSGS, tools=tools_o)
            stream = await o.chat.completions.create(
                model="m", messages=MSGS, tools=tools_o, stream=True
            )
            name, argstr, finish = None, "", None
            async for ch in stream:
                if ch.choices:
                    for tc in ch.choices[0].delta.tool_calls or []:
                        name = tc.function.name or name
                        argstr += tc.function.arguments or ""
                    finish = ch.choices[0].finish_reason or finish
            return m1, m2, r1, (name, argstr, finish)

    m1, m2, r1, (name, argstr, finish) = run(go())
    assert m1.stop_reason == "tool_use" and m1.content[0].type == "tool_use"
    assert (
        m1.content[0].name == "get_weather"
        and m1.content[0].input == args
        and m1.content[0].id.startswith("toolu_")
    )
    assert [b.type for b in m2.content] == ["text", "tool_use"] and m2.content[
        0
    ].text == "Let me check."
    assert m2.content[1].input == args and m2.stop_reason == "tool_use"
    tc = r1.choices[0].message.tool_calls[0]
    assert r1.choices[0].finish_reason == "tool_calls" and tc.type == "function"
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == args
    assert name == "get_weather" and json.loads(argstr) == args and finish == "tool_calls"


def test_jsontext_structured_output(api):
    obj = {"title": "T", "tags": ["a", "b"], "score": 0.5}
    api.script(JSONText(obj), JSONText(obj), endpoint="anthropic")
    api.script(JSONText(obj), endpoint="openai")

    from pydantic import BaseModel

    class Out(BaseModel):
        title: str
        tags: list[str]
        score: float

    schema = {"type": "object", "properties": {"title": {"type": "string"}}}

    async def go():
        async with ant(api) as a, oai(api) as o:
            forced = await a.messages.create(
                model="m",
                max_tokens=50,
                messages=MSGS,
                tools=[{"name": "emit", "input_schema": schema}],
                tool_choice={"type": "tool", "name": "emit"},
            )
            plain = await a.messages.create(model="m", max_tokens=50, messages=MSGS)
            parsed = await o.chat.completions.parse(model="m", messages=MSGS, response_format=Out)
            return forced, plain, parsed

    forced, plain, parsed = run(go())
    assert (
        forced.content[0].type == "tool_use"
        and forced.content[0].name == "emit"
        and forced.content[0].input == obj
    )
    assert json.loads(plain.content[0].text) == obj
    assert parsed.choices[0].message.parsed == Out(**obj)
    rf = api.requests_for("openai")[-1].json["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Out"


# ------------------------------------------------------------------ images


def test_images_b64(api):
    api.script(Image(), endpoint="images")

    async def go():
        async with oai(api) as o:
            r1 = await o.images.generate(model="gpt-image-1", prompt="a red square", n=2)
            r2 = await o.images.edit(
                model="gpt-image-1", image=("in.png", tiny_png(), "image/png"), prompt="bluer"
            )
            return r1, r2

    r1, r2 = run(go())
    assert len(r1.data) == 2
    png = base64.b64decode(r1.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == tiny_png()
    assert base64.b64decode(r2.data[0].b64_json).startswith(b"\x89PNG")
    gen, edit = api.requests_for("images")
    assert gen.path == "/v1/images/generations" and gen.json["prompt"] == "a red square"
    assert edit.path == "/v1/images/edits" and edit.json is None and b"bluer" in edit.body


def test_raw_reply(api):
    api.script(Raw(200, {"created": 1, "data": []}), endpoint="images")

    async def go():
        async with oai(api) as o:
            return await o.images.generate(model="x", prompt="p")

    assert run(go()).data == []


# ------------------------------------------------------------------ lifecycle


def test_stop_is_prompt_during_stall_and_no_thread_leak():
    before = {t.ident for t in threading.enumerate()}
    api = FakeAPI().start()
    api.script(Stall(30), endpoint="anthropic")
    api.script(Stall(30), endpoint="openai")

    async def go():
        async with ant(api, timeout=0.3) as a, oai(api, timeout=0.3) as o:
            with pytest.raises(anthropic.APITimeoutError):
                await a.messages.create(model="m", max_tokens=5, messages=MSGS)
            # a streaming stall leaves a handler thread sleeping, keep-alive conns are open
            with pytest.raises(openai.APITimeoutError):
                async for _ in await o.chat.completions.create(
                    model="m", messages=MSGS, stream=True
                ):
                    pass
            t = time.monotonic()
            api.stop()
            return time.monotonic() - t

    assert run(go()) < 1.0
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leaked == []
    api.stop()  # idempotent


def test_reset_and_restart():
    api = FakeAPI()
    with api:
        api.script(Text("queued"), endpoint="openai")
        api.reset()
        assert api.pending("openai") == 0 and api.requests == []

        async def go():
            async with oai(api) as o:
                return await o.chat.completions.create(model="mm", messages=MSGS)

        assert run(go()).choices[0].message.content == "fake reply from mm"
        assert len(api.wait_for(1, "openai", timeout=1)) == 1 and api.last.model == "mm"
        with pytest.raises(TimeoutError):
            api.wait_for(2, timeout=0.05)
    with api:  # can be started again after stop()
        assert api.base_url.startswith("http://127.0.0.1:")


def test_a_client_killed_mid_body_is_a_dropped_connection_not_a_fake_bug():
    # a `kill -9`ed client leaves half a request behind: the script never sees it, and the fake
    # reports no error of its own (it used to hand the script a request with no JSON)
    import socket

    fake = FakeAPI().start()
    try:
        fake.set_default(lambda body: body["messages"][0]["content"], endpoint="anthropic")
        with socket.create_connection(("127.0.0.1", fake.port)) as s:
            s.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200\r\n\r\n" + b'{"model": "claude", "messages": ['
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not fake.requests and not fake.errors:
            time.sleep(0.05)
        time.sleep(0.2)
        assert fake.errors == [] and fake.requests == []
    finally:
        fake.stop()
