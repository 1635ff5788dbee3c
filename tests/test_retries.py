"""The attempt ladder against real SDKs and the fake API: exact attempt counts, retry-after,
backoff, fallbacks, cooldowns, faulty streams and per-provider concurrency."""

from __future__ import annotations

import email.utils
import time

import anthropic  # noqa: F401  the real SDKs (the test extra); missing, this file fails to import
import openai  # noqa: F401
import pytest
from fakeapi import Cut, Error, Malformed, Slow, Stall, StreamError, Text

from nbconductor import Pipeline
from nbconductor.providers._common import retry_after

CLAUDE = "anthropic:claude-haiku-4-5"
GPT = "openai:gpt-4.1-mini"


def make(tmp_path, config) -> Pipeline:
    return Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)


def outcomes(result) -> list[tuple[str, str]]:
    return [(a.model, a.outcome) for a in result.attempts]


def test_two_rate_limits_then_success_is_three_requests_honouring_retry_after(
    fake_api, fast_config, tmp_path
):
    fake_api.script(
        Error(429, "slow down", retry_after_ms=300),
        Error(429, "slow down", retry_after="0.4"),
        Text("finally"),
        endpoint="anthropic",
    )
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, retries=2)
    res = p.run().results["a"]
    assert res.state == "passed" and res.output == "finally"
    assert len(fake_api.requests_for("anthropic")) == 3
    first_gap, second_gap = fake_api.gaps("anthropic")
    assert first_gap >= 0.3 and second_gap >= 0.4
    assert first_gap < 1.5 and second_gap < 1.5
    assert outcomes(res) == [(CLAUDE, "error"), (CLAUDE, "error"), (CLAUDE, "passed")]
    assert "RateLimitError" in res.attempts[0].error and "429" in res.attempts[0].error


def test_retries_mean_exactly_one_plus_n_attempts(fake_api, fast_config, tmp_path):
    fake_api.set_default(Error(503, "unavailable"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, retries=4)
    res = p.run().results["a"]
    assert res.state == "failed"
    assert len(fake_api.requests_for("anthropic")) == 5 and len(res.attempts) == 5
    assert "after 5 attempts" in res.error


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(fake_api, fast_config, tmp_path, status):
    fake_api.script(Error(status, "nope"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, retries=2)
    res = p.run().results["a"]
    assert res.state == "failed" and len(fake_api.requests_for("anthropic")) == 1
    if status in (401, 403):
        assert "AuthError" in res.attempts[0].error and "set ANTHROPIC_API_KEY" in res.error
    else:
        assert "RequestError" in res.attempts[0].error


def test_a_client_error_goes_straight_to_the_fallback(fake_api, fast_config, tmp_path):
    fake_api.script(Error(404, "model not found"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, fallbacks=[GPT], retries=2)
    res = p.run().results["a"]
    assert res.state == "passed" and res.model == GPT
    assert outcomes(res) == [(CLAUDE, "error"), (GPT, "passed")]


def test_server_errors_then_fallback_records_who_answered(fake_api, fast_config, tmp_path):
    fake_api.script(Error(500), Error(529, "Overloaded"), Error(502), endpoint="anthropic")
    fake_api.script(Text("from openai", input_tokens=7, output_tokens=3), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, fallbacks=[GPT], retries=2)
    run = p.run()
    res = run.results["a"]
    assert res.state == "passed" and res.output == "from openai" and res.model == GPT
    assert (
        len(fake_api.requests_for("anthropic")) == 3 and len(fake_api.requests_for("openai")) == 1
    )
    assert outcomes(res) == [(CLAUDE, "error")] * 3 + [(GPT, "passed")]
    assert ["ServerError", "RateLimitError", "ServerError"] == [
        a.error.split(":")[0] for a in res.attempts[:3]
    ]
    row = p.store.results(run.run_id, "a")[0]
    assert row["model"] == GPT and row["attempts"] == 4


def test_retry_after_above_the_cap_falls_back_at_once(fake_api, fast_config, tmp_path):
    config = fast_config.model_copy(
        update={"retry": fast_config.retry.model_copy(update={"max_retry_after": 1.0})}
    )
    fake_api.script(Error(429, "come back in a minute", retry_after=60), endpoint="anthropic")
    p = make(tmp_path, config)
    p.step("a", "Hi", model=CLAUDE, fallbacks=[GPT], retries=2)
    started = time.monotonic()
    res = p.run().results["a"]
    assert res.model == GPT and len(fake_api.requests_for("anthropic")) == 1
    assert (
        fake_api.requests_for("openai")[0].time - fake_api.requests_for("anthropic")[0].time < 1.0
    )
    assert time.monotonic() - started < 5


def test_server_error_retry_after_is_honoured(fake_api, fast_config, tmp_path):
    fake_api.script(Error(503, "busy", retry_after_ms=250), Text("ok"), endpoint="openai")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=GPT)
    assert p.run().results["a"].output == "ok"
    assert fake_api.gaps("openai")[0] >= 0.25


def test_retry_after_parsing():
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after({"retry-after": future}) <= 30
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_backoff_without_retry_after(fake_api, fast_config, tmp_path):
    fake_api.script(Error(500), Error(500), Text("ok"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, retries=2)
    assert p.run().results["a"].output == "ok"
    # full-jitter backoff: at most base_delay * 2**n (0.01, 0.02 s here) plus request time
    assert all(gap < 1.0 for gap in fake_api.gaps("anthropic"))


def test_failing_provider_cools_down_so_later_steps_go_straight_to_the_fallback(
    fake_api, fast_config, tmp_path
):
    fake_api.set_default(Error(500), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("first", "One", model=CLAUDE, fallbacks=[GPT], retries=2)
    p.step("second", "Two {{ first }}", model=CLAUDE, fallbacks=[GPT], retries=2)
    run = p.run()
    assert run.results["first"].model == GPT and run.results["second"].model == GPT
    assert len(fake_api.requests_for("anthropic")) == 3  # only the first step tried it
    assert outcomes(run.results["second"]) == [(CLAUDE, "skipped"), (GPT, "passed")]
    assert "cooling down" in run.results["second"].attempts[0].error


@pytest.mark.parametrize("provider, endpoint", [(CLAUDE, "anthropic"), (GPT, "openai")])
@pytest.mark.parametrize(
    "fault, kind",
    [
        (Cut("partial answ", after_chunks=2), "TransportError"),
        (Stall(5, text="stalled answer"), "TransportError"),
        (Malformed(), "TransportError"),
        (StreamError("Overloaded", text="half"), "RateLimitError"),
    ],
)
def test_faulty_streams_are_failed_attempts_then_retried(
    fake_api, fast_config, tmp_path, provider, endpoint, fault, kind
):
    fake_api.script(fault, Text("the full answer"), endpoint=endpoint)
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=provider, retries=1)
    texts = []
    res = p.run(
        observer=lambda e, s, payload: texts.append(payload) if e == "text" else None, stream=True
    ).results["a"]
    assert res.state == "passed" and res.output == "the full answer"
    assert len(fake_api.requests_for(endpoint)) == 2
    assert [a.outcome for a in res.attempts] == ["error", "passed"]
    assert res.attempts[0].error.startswith(kind), res.attempts[0].error
    assert "".join(texts).endswith("the full answer")


def test_faulty_stream_with_no_retries_left_is_never_a_success(fake_api, fast_config, tmp_path):
    fake_api.script(Cut("half an answ"), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Hi", model=CLAUDE, retries=0)
    res = p.run().results["a"]
    assert res.state == "failed" and res.output is None
    assert p.store.lookup(res.cache_key) is None  # nothing cached for a re-run to pick up


def test_per_provider_concurrency_limit(fake_api, fast_config, tmp_path):
    config = fast_config.model_copy(update={"concurrency": {"anthropic": 1}})
    fake_api.set_default(Slow(0.2, Text("done")), endpoint="anthropic")
    p = make(tmp_path, config)
    p.step("each", "Item {{ i }}", model=CLAUDE, map="i in items")
    res = p.run({"items": [1, 2, 3]}).results["each"]
    assert res.output == ["done"] * 3
    gaps = fake_api.gaps("anthropic")
    assert len(gaps) == 2 and all(g >= 0.2 for g in gaps)  # one request at a time


@pytest.mark.parametrize("provider, endpoint", [(CLAUDE, "anthropic"), (GPT, "openai")])
@pytest.mark.parametrize(
    "fault", [Malformed(), Cut("half an answ", after_chunks=2), Stall(5, text="stall")]
)
def test_transport_faults_are_retried_without_feedback_and_keep_first_pass_yield(
    fake_api, fast_config, tmp_path, provider, endpoint, fault
):
    from nbconductor.store._report import report

    fake_api.script(fault, Text('{"ok": true}'), endpoint=endpoint)
    p = make(tmp_path, fast_config)
    p.step("a", "Answer in JSON", model=provider, json=True, retries=1)
    res = p.run().results["a"]
    assert res.state == "passed" and res.output == {"ok": True}
    retry = fake_api.requests_for(endpoint)[1].json["messages"][-1]["content"]
    assert "not valid" not in str(retry) and "rejected" not in str(retry)
    assert (
        res.attempts[0].error.startswith("TransportError") and not res.attempts[0].quality_failure
    )
    rep = report(p.store)
    assert rep["steps"]["a"]["first_pass_yield"] == 1.0


def test_an_invalid_answer_the_model_finished_counts_against_first_pass_yield(
    fake_api, fast_config, tmp_path
):
    from nbconductor.store._report import report

    fake_api.script(Text("not json at all"), Text('{"ok": true}'), endpoint="anthropic")
    p = make(tmp_path, fast_config)
    p.step("a", "Answer in JSON", model=CLAUDE, json=True, retries=1)
    res = p.run().results["a"]
    assert res.state == "passed" and res.attempts[0].quality_failure
    assert "not valid" in str(fake_api.requests_for("anthropic")[1].json["messages"][-1]["content"])
    assert report(p.store)["steps"]["a"]["first_pass_yield"] == 0.0


def test_soak_transport_faults_change_no_quality_count(fake_api, fast_config, tmp_path):
    """A small soak: the same 8 runs with and without 30% injected faults report the same
    first-pass yield and fail no run; only the request count grows."""
    import json
    import re

    from fakeapi import JSONText

    from nbconductor.store._report import report

    def reply(body):
        text = json.dumps(body)
        brief = int(re.search(r"brief (\d+)\.", text).group(1))
        if "<rubric>" in text:
            weak = "first" in text and brief % 4 == 0
            return JSONText(
                {"score": 0.5 if weak else 0.9, "feedback": "vague", "suggested_edit": ""}
            )
        return Text(
            f"{'revised' if 'rejected by a quality' in text else 'first'} post for brief {brief}."
        )

    def soak(rate, store):
        fake_api.reset()
        fake_api.set_default(reply, endpoint="anthropic")
        fake_api.set_default(reply, endpoint="openai")
        fake_api.inject_faults(
            rate, (Malformed(), Cut("partial answ", after_chunks=2), Error(503, "down")), seed=3
        )
        p = Pipeline(
            store=store, config=fast_config.model_copy(update={"read_timeout": 0.3}), root=tmp_path
        )
        p.step("draft", "Write a post for brief {{ n }}.", model=CLAUDE)
        p.rubric(
            "draft", "- Is it specific?", judge=GPT, threshold=0.8, retries=4, on_fail="review"
        )
        statuses = [p.run({"n": i}).status for i in range(8)]
        t = report(p.store)["totals"]
        p.close()
        malformed = sum(isinstance(f, Malformed) for _, f in fake_api.injected)
        return statuses.count("failed"), (t["first_pass_runs"], t["runs_with_output"]), malformed

    clean = soak(0.0, tmp_path / "clean.sqlite")
    faulted = soak(0.3, tmp_path / "faulted.sqlite")
    assert clean == (0, (6, 8), 0)
    assert faulted[:2] == clean[:2] and faulted[2] >= 2  # malformed events among the faults
