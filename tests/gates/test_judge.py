"""The rubric gate and the gate ladder, against the loopback API server with the real SDKs.

Each test chooses the judge's scores: a callable reply tells judge requests (they carry the
rubric) from step requests and answers them from a per-test script.
"""

from __future__ import annotations

import json

import anthropic  # noqa: F401 - the test extras install both SDKs
import openai  # noqa: F401
import pytest
from fakeapi import Error, JSONText, Text
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor._errors import OutputError, StepFailed
from nbconductor.gates._judge import VERDICT_SCHEMA, judge_prompt, parse_verdict
from nbconductor.store._report import report
from nbconductor.store._review import queue

WRITER = "anthropic:claude-haiku-4-5"
JUDGE = "anthropic:claude-opus-4-8"
FALLBACK = "openai:gpt-4.1-mini"
RUBRIC = "- Is it under 50 words?\n- Does it end with one concrete next step?"


def is_judge(body) -> bool:
    return "<rubric>" in json.dumps(body)


class Script:
    """Answers step requests with ``drafts`` and judge requests with ``scores``, in order."""

    def __init__(self, drafts, scores):
        self.drafts, self.scores = list(drafts), list(scores)
        self.judged: list[float] = []

    def __call__(self, body):
        if is_judge(body):
            score = self.scores.pop(0)
            if not isinstance(score, (int, float)):
                return score  # an Error or a malformed verdict, as scripted
            self.judged.append(score)
            return JSONText(
                {
                    "score": score,
                    "feedback": f"misses 'one concrete next step' (scored {score})",
                    "suggested_edit": "End with: Reply to book a call.",
                },
                input_tokens=100,
                output_tokens=20,
            )
        return Text(self.drafts.pop(0), input_tokens=10, output_tokens=5)


@pytest.fixture
def api(fake_api):
    """The shared loopback server (tests/conftest.py), SDKs pointed at it through the environment."""
    return fake_api


def use(api, script: Script) -> Script:
    api.set_default(script, endpoint="anthropic")
    api.set_default(script, endpoint="openai")
    return script


def step_requests(api) -> list:
    return [
        r for r in api.requests if r.endpoint in ("anthropic", "openai") and not is_judge(r.json)
    ]


def judge_requests(api) -> list:
    return [r for r in api.requests if is_judge(r.json)]


@pytest.fixture
def pipeline(tmp_path, fast_config):
    p = Pipeline(store=tmp_path / "store.sqlite", config=fast_config, root=tmp_path)
    yield p
    p.close()


def newsletter(p: Pipeline, *, threshold=0.8, retries=2, on_fail="review", fallbacks=()):
    p.step(
        "draft",
        "Write a short newsletter about {{ topic }}.",
        model=WRITER,
        fallbacks=list(fallbacks),
    )
    p.rubric("draft", RUBRIC, judge=JUDGE, threshold=threshold, retries=retries, on_fail=on_fail)
    p.step("stats", "len(draft.split())", python=True)


def message_text(rec) -> str:
    return json.dumps(rec.json["messages"])


# the ladder's exact counts -------------------------------------------------------------------
def test_a_passing_verdict_is_a_first_pass(api, pipeline):
    use(api, Script(["Hello readers. Reply to book a call."], [0.9]))
    newsletter(pipeline)
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert (r.state, len(r.attempts), r.attempts[0].outcome) == ("passed", 1, "passed")
    gate = r.gates[0]
    assert (gate.name, gate.passed, gate.score) == ("rubric", True, 0.9)
    assert gate.suggestion == "End with: Reply to book a call."
    # one step call, one judge call, through the same registry (the judge's model and schema)
    judged = judge_requests(api)
    assert len(step_requests(api)) == 1 and len(judged) == 1
    body = judged[0].json
    assert body["model"] == "claude-opus-4-8"
    assert "score" in json.dumps(body.get("output_config") or body.get("extra_body") or body)
    assert "Is it under 50 words?" in message_text(judged[0]) and "Hello readers" in message_text(
        judged[0]
    )
    # the judge's tokens and cost are part of the step's
    assert (r.usage.input_tokens, r.usage.output_tokens) == (110, 25)
    assert gate.usage.input_tokens == 100 and gate.cost == pytest.approx((100 * 5 + 20 * 25) / 1e6)
    assert r.cost == pytest.approx((10 * 1 + 5 * 5) / 1e6 + (100 * 5 + 20 * 25) / 1e6)
    assert report(pipeline.store)["steps"]["draft"]["first_pass_yield"] == 1.0


def test_a_verdict_that_passes_on_the_second_try_is_a_retry_not_a_first_pass(api, pipeline):
    use(
        api,
        Script(["First draft, far too long.", "Short draft. Reply to book a call."], [0.5, 0.85]),
    )
    newsletter(pipeline)
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert r.state == "passed" and r.output == "Short draft. Reply to book a call."
    assert [a.outcome for a in r.attempts] == ["gate", "passed"]
    assert r.attempts[0].error == "misses 'one concrete next step' (scored 0.5)"
    first, second = step_requests(api)
    # the retry prompt carries the judge's feedback and suggested edit; the first does not
    assert "misses 'one concrete next step' (scored 0.5)" in message_text(second)
    assert "Suggested edit: End with: Reply to book a call." in message_text(second)
    assert "scored" not in message_text(first)
    assert run["stats"] == 7
    rep = report(pipeline.store)["steps"]["draft"]
    assert (rep["first_pass_yield"], rep["final_yield"], rep["mean_attempts"]) == (0.0, 1.0, 2.0)


def test_retries_then_fallback_then_review_flags_and_the_run_goes_on(api, pipeline):
    # --retries 1: two attempts per model, the step's model then its fallback, then review
    script = use(api, Script(["a1", "a2", "o1", "o2"], [0.3, 0.4, 0.5, 0.45]))
    newsletter(pipeline, retries=1, fallbacks=[FALLBACK])
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert r.state == "flagged" and run.status == "flagged"
    assert [a.model for a in r.attempts] == [WRITER, WRITER, FALLBACK, FALLBACK]
    assert [a.outcome for a in r.attempts] == ["gate"] * 4
    assert [q.endpoint for q in step_requests(api)] == [
        "anthropic",
        "anthropic",
        "openai",
        "openai",
    ]
    assert script.judged == [0.3, 0.4, 0.5, 0.45] and r.gates[0].score == 0.45 and r.output == "o2"
    assert run["stats"] == 1  # a flagged output does not stop the steps after it
    (item,) = queue(pipeline.store)
    assert (item.step, item.score, item.output) == ("draft", 0.45, "o2")
    assert "scored 0.45" in item.feedback and item.suggestion == "End with: Reply to book a call."
    assert report(pipeline.store)["steps"]["draft"]["fallbacks"] == 1


def test_a_fallback_model_that_passes_ends_the_ladder(api, pipeline):
    use(api, Script(["a1", "o1"], [0.2, 0.95]))
    newsletter(pipeline, retries=0, fallbacks=[FALLBACK])
    r = pipeline.run({"topic": "pricing"}).results["draft"]
    assert r.state == "passed" and r.output == "o1"
    assert [a.model for a in r.attempts] == [WRITER, FALLBACK]
    # the fallback model got the judge's feedback too
    assert "scored 0.2" in message_text(step_requests(api)[1])


def test_on_fail_fail_stops_the_run_naming_step_score_and_feedback(api, pipeline):
    use(api, Script(["d1", "d2"], [0.3, 0.42]))
    newsletter(pipeline, retries=1, on_fail="fail")
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert run.status == "failed" and r.state == "failed" and len(r.attempts) == 2
    assert "draft" in r.error and "0.42" in r.error and "misses 'one concrete next step'" in r.error
    assert run.results["stats"].state == "pending"  # downstream did not run
    with pytest.raises(StepFailed, match=r"step `draft` failed: .*rubric scored 0\.42: misses"):
        run.raise_for_status()
    assert queue(pipeline.store) == []


def test_threshold_is_inclusive_and_threshold_zero_always_passes(api, pipeline):
    use(api, Script(["d1", "d2"], [0.8, 0.0]))
    newsletter(pipeline, threshold=0.8)
    assert pipeline.run({"topic": "a"}).results["draft"].state == "passed"
    pipeline.rubric("draft", RUBRIC, judge=JUDGE, threshold=0.0)
    r = pipeline.run({"topic": "b"}).results["draft"]
    assert r.state == "passed" and r.gates[0].score == 0.0


# the judge itself ------------------------------------------------------------------------------
def test_the_judge_is_retried_on_a_retryable_error_without_rerunning_the_step(api, pipeline):
    use(api, Script(["d1"], [Error(529, "overloaded", retry_after=0), 0.9]))
    newsletter(pipeline)
    r = pipeline.run({"topic": "pricing"}).results["draft"]
    assert r.state == "passed" and len(r.attempts) == 1
    assert len(step_requests(api)) == 1 and len(judge_requests(api)) == 2


def test_an_invalid_verdict_is_asked_again_then_used(api, pipeline):
    use(api, Script(["d1"], [JSONText({"score": 7, "feedback": "x", "suggested_edit": ""}), 0.9]))
    newsletter(pipeline)
    r = pipeline.run({"topic": "pricing"}).results["draft"]
    assert r.state == "passed" and r.gates[0].score == 0.9
    second = judge_requests(api)[1]
    assert "not a valid Verdict" in message_text(second)


def test_a_judge_that_cannot_answer_fails_the_step_naming_the_judge(api, pipeline):
    use(api, Script(["d1"], [Error(401, "bad key")]))
    newsletter(pipeline)
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert r.state == "failed" and "rubric judge `anthropic:claude-opus-4-8`" in r.error
    assert len(judge_requests(api)) == 1  # a 401 is not retried


def test_openai_as_judge_uses_structured_output(api, pipeline):
    use(api, Script(["d1"], [0.9]))
    pipeline.step("draft", "Write about {{ topic }}", model=WRITER)
    pipeline.rubric("draft", RUBRIC, judge="openai:gpt-4.1", threshold=0.5)
    r = pipeline.run({"topic": "x"}).results["draft"]
    assert r.state == "passed" and r.gates[0].score == 0.9
    (judged,) = judge_requests(api)
    assert judged.endpoint == "openai"
    assert judged.json["response_format"]["type"] == "json_schema"
    assert judged.json["response_format"]["json_schema"]["name"] == "Verdict"


def test_a_rubric_on_a_python_step_is_judged_too(api, pipeline):
    use(api, Script([], [0.2]))
    pipeline.step("summary", "'summary of ' + topic", python=True)
    pipeline.rubric("summary", RUBRIC, judge=JUDGE, threshold=0.5)
    r = pipeline.run({"topic": "x"}).results["summary"]
    assert r.state == "flagged" and r.gates[0].score == 0.2
    assert "summary of x" in message_text(judge_requests(api)[0])
    assert r.usage.input_tokens == 100 and r.cost == pytest.approx((100 * 5 + 20 * 25) / 1e6)


# %%rubric in a shell ---------------------------------------------------------------------------
def test_rubric_magic_on_fail_fail_raises_in_the_cell(api, tmp_path, monkeypatch):
    shell = fresh_shell(tmp_path, monkeypatch)
    magics = shell.user_ns["__nbconductor__"]
    magics.pipeline.config.retry.base_delay = 0.01
    use(api, Script(["d1", "d2", "d3"], [0.1, 0.2]))  # d1 runs before the rubric exists
    shell.user_ns["topic"] = "pricing"
    with capture_output():
        shell.run_cell_magic("step", f"draft --model {WRITER}", "Write about {{ topic }}")
    shell.run_cell_magic(
        "rubric", f"draft --judge {JUDGE} --threshold 0.75 --retries 1 --on-fail fail", RUBRIC
    )
    step = magics.pipeline.steps["draft"]
    assert (step.rubric.threshold, step.retries, step.on_fail) == (0.75, 1, "fail")
    with (
        capture_output(),
        pytest.raises(StepFailed, match=r"draft.*0\.20.*misses 'one concrete next step'"),
    ):
        shell.run_line_magic("conductor", "run draft")
    assert len(judge_requests(api)) == 2


# units --------------------------------------------------------------------------------------
def test_parse_verdict_accepts_objects_text_and_fences_and_refuses_bad_scores():
    assert parse_verdict({"score": 1, "feedback": " ok ", "suggested_edit": ""}, "") == (
        1.0,
        "ok",
        "",
    )
    assert parse_verdict(None, '```json\n{"score": "0.25", "feedback": "f"}\n```') == (
        0.25,
        "f",
        "",
    )
    for bad in ({"feedback": "no score"}, {"score": 1.5}, {"score": True}, {"score": "high"}):
        with pytest.raises(OutputError):
            parse_verdict(bad, "")
    with pytest.raises(OutputError, match="Verdict"):
        parse_verdict(None, "I think it's fine")


def test_verdict_schema_is_strict_ready_and_the_prompt_delimits_its_parts():
    assert VERDICT_SCHEMA["required"] == ["score", "feedback", "suggested_edit"]
    assert VERDICT_SCHEMA["additionalProperties"] is False
    prompt = judge_prompt("- one\n- two", "Write X", "the output")
    assert prompt.index("<rubric>") < prompt.index("<task>") < prompt.index("<output>")
    assert "<task>" not in judge_prompt("- one", "", "out")


def test_the_offline_judge_is_deterministic_mixed_and_names_a_rubric_line(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("draft", "Write about {{ topic }}", model="offline:writer", retries=0)
    p.rubric("draft", "- Is the tone warm?\n- Does it end with a next step?", judge="offline:judge")
    runs = [p.run({"topic": f"topic {i}"}).results["draft"] for i in range(12)]
    scores = [r.gates[0].score for r in runs]
    assert {r.state for r in runs} == {"passed", "flagged"}  # some pass, some are flagged
    assert all(0 <= s <= 1 for s in scores)
    assert all(
        ('"Is the tone warm?"' in r.gates[0].feedback)
        or ('"Does it end with a next step?"' in r.gates[0].feedback)
        for r in runs
    )
    again = [
        p.run({"topic": f"topic {i}"}, force=True).results["draft"].gates[0].score
        for i in range(12)
    ]
    assert again == scores
    # a word-limit line is actually checked
    p.rubric("draft", "- under 3 words", judge="offline:judge")
    r = p.run({"topic": "x"}).results["draft"]
    assert r.gates[0].score == 0.4 and "words" in r.gates[0].feedback and r.state == "flagged"
    p.close()


def test_redeclaring_a_step_keeps_its_rubric_and_the_ladder_options_it_set(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.rubric("draft", RUBRIC, judge="offline:j", threshold=0.9, retries=0, on_fail="fail")
    p.step(
        "draft", "Write, briefly, about {{ topic }}", model="offline:w"
    )  # the cell is edited and re-run
    s = p.steps["draft"]
    assert (s.rubric.threshold, s.retries, s.on_fail) == (0.9, 0, "fail")
    p.close()


# the judge follows the step's retry policy; every billed call is recorded ------------------------
@pytest.mark.parametrize("retries", [0, 4])
def test_the_judges_transport_attempts_follow_retries(api, pipeline, retries):
    use(api, Script(["d1"], [Error(503, "unavailable", retry_after=0)] * 10))
    newsletter(pipeline, retries=retries)
    r = pipeline.run({"topic": "pricing"}).results["draft"]
    assert r.state == "failed" and len(judge_requests(api)) == 1 + retries
    tries = "1 try" if retries == 0 else f"{1 + retries} tries"
    assert f"gave no verdict after {tries}" in r.error


def test_four_transport_faults_then_a_verdict_passes_with_retries_4(api, pipeline):
    use(api, Script(["d1"], [Error(529, "overloaded", retry_after=0)] * 4 + [0.9]))
    newsletter(pipeline, retries=4)
    r = pipeline.run({"topic": "pricing"}).results["draft"]
    assert r.state == "passed" and len(step_requests(api)) == 1 and len(judge_requests(api)) == 5


def test_a_step_whose_judge_gave_no_verdict_records_every_billed_call(api, pipeline):
    bad = JSONText(
        {"score": 7, "feedback": "x", "suggested_edit": ""}, input_tokens=100, output_tokens=20
    )
    use(api, Script(["d1"], [bad, bad, bad]))
    newsletter(pipeline, retries=2)
    run = pipeline.run({"topic": "pricing"})
    r = run.results["draft"]
    assert r.state == "failed" and len(judge_requests(api)) == 3
    assert len(r.attempts) == 1 and r.attempts[0].error.startswith("GateError")
    # the draft (10 in, 5 out) and three billed judge answers (100 in, 20 out each)
    assert (r.usage.input_tokens, r.usage.output_tokens) == (310, 65)
    assert r.cost is not None and r.cost > 0 and r.attempts[0].cost == pytest.approx(r.cost)
    row = pipeline.store.results(run.run_id, "draft")[0]
    assert (row["attempts"], row["input_tokens"], row["output_tokens"]) == (1, 310, 65)
    assert row["cost"] == pytest.approx(r.cost) and pipeline.store.runs()[0][
        "cost"
    ] == pytest.approx(r.cost)


def test_a_python_step_whose_judge_gave_no_verdict_keeps_the_judges_cost(api, pipeline):
    bad = JSONText(
        {"score": 7, "feedback": "x", "suggested_edit": ""}, input_tokens=100, output_tokens=20
    )
    use(api, Script([], [bad]))
    pipeline.step("summary", "'summary of ' + topic", python=True)
    pipeline.rubric("summary", RUBRIC, judge=JUDGE, threshold=0.5, retries=0)
    r = pipeline.run({"topic": "x"}).results["summary"]
    assert r.state == "failed" and r.usage.input_tokens == 100 and r.cost and r.cost > 0


def test_rubric_max_tokens_reaches_the_judge_and_the_truncation_message_names_it(
    api, tmp_path, monkeypatch
):
    shell = fresh_shell(tmp_path, monkeypatch)
    magics = shell.user_ns["__nbconductor__"]
    magics.pipeline.config.retry.base_delay = 0.01
    cut = Text('{"score": 0.9, "feedba', stop="max_tokens")
    use(api, Script(["d1"], [cut]))
    shell.user_ns["topic"] = "pricing"
    with capture_output():
        shell.run_cell_magic("step", f"draft --model {WRITER} --lazy", "Write about {{ topic }}")
    shell.run_cell_magic(
        "rubric", f"draft --judge {JUDGE} --retries 0 --max-tokens 77 --on-fail fail", RUBRIC
    )
    assert magics.pipeline.steps["draft"].rubric.max_tokens == 77
    with (
        capture_output(),
        pytest.raises(StepFailed, match=r"raise %%rubric draft --max-tokens \(now 77\)"),
    ):
        shell.run_line_magic("conductor", "run draft")
    assert judge_requests(api)[0].json["max_tokens"] == 77


def test_rubric_max_tokens_must_be_positive(pipeline):
    from nbconductor._errors import OptionError

    pipeline.step("draft", "x", model=WRITER)
    with pytest.raises(OptionError, match="--max-tokens must be 1 or more"):
        pipeline.rubric("draft", RUBRIC, judge=JUDGE, max_tokens=0)


def test_rubric_max_tokens_survives_export_and_reload(tmp_path):
    from nbconductor.handoff._export import export_pipeline

    p = Pipeline(store=tmp_path / "s.sqlite", root=tmp_path)
    p.step("draft", "Write about {{ topic }}", model="offline:w", lazy=True)
    p.rubric("draft", RUBRIC, judge="offline:j", threshold=0.7, retries=3, max_tokens=300)
    path = export_pipeline(p, tmp_path / "job.ipynb")
    again = Pipeline.from_notebook(path, run_code=False, store=tmp_path / "s2.sqlite")
    rubric = again.steps["draft"].rubric
    assert (rubric.max_tokens, rubric.retries, rubric.threshold) == (300, 3, 0.7)
