"""Rule gates (``--check``): built-ins, notebook functions, their messages, and the ladder they drive."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._errors import OptionError
from nbconductor._types import Rubric, Step
from nbconductor.gates._rules import compile_check, gates_for


def check(expr: str, output, namespace: dict | None = None):
    gate = compile_check(expr, namespace or {}, "draft")
    return asyncio.run(gate.check(output, None))


@pytest.mark.parametrize(
    ("expr", "output", "passed", "feedback"),
    [
        ("max_words(3)", "one two three", True, ""),
        ("max_words(3)", "one two three four", False, "output has 4 words; the limit is 3"),
        ("min_words(2)", "one", False, "output has 1 words; at least 2 are needed"),
        ("max_chars(5)", "abcdef", False, "output has 6 characters; the limit is 5"),
        ('contains("Next Step")', "Your next step: reply.", True, ""),
        ('contains("next step")', "Bye.", False, "output does not contain 'next step'"),
        (
            'not_contains("lorem")',
            "Lorem ipsum",
            False,
            "output contains 'lorem', which is not allowed",
        ),
        ('regex(r"^# ")', "intro\n# Title", True, ""),
        ('regex(r"^# ")', "no heading", False, "output does not match /^# /"),
        ("json", '{"a": 1}', True, ""),
        ("json", {"already": "parsed"}, True, ""),
    ],
)
def test_builtin_checks_pass_and_fail_with_a_message(expr, output, passed, feedback):
    result = check(expr, output)
    assert (result.name, result.passed, result.feedback) == (expr, passed, feedback)
    assert result.score == (1.0 if passed else 0.0)


def test_json_check_reports_the_parse_error():
    result = check("json", "{not json")
    assert not result.passed and result.feedback.startswith("output is not valid JSON: ")


def test_checks_count_words_of_json_and_pydantic_outputs():
    class Post(BaseModel):
        title: str

    assert not check("max_words(1)", {"title": "two words"}).passed
    assert check('contains("hello")', Post(title="Hello there")).passed


def test_notebook_functions_bool_tuple_none_raise_and_async():
    def short(o):
        return len(o) < 10

    def explained(o):
        return ("price" in o, "mention the price")

    def forgot(o):
        pass

    def broken(o):
        raise KeyError("x")

    async def remote(o):
        return False, "remote says no"

    ns = {
        "short": short,
        "explained": explained,
        "forgot": forgot,
        "broken": broken,
        "remote": remote,
    }
    assert check("short", "tiny", ns).passed
    assert check("short", "much longer text", ns).feedback == "output failed the check short"
    # a user's message is kept as written
    assert check("explained", "cheap", ns).feedback == "mention the price"
    assert check("forgot", "x", ns).feedback.startswith("the check forgot returned None")
    assert check("broken", "x", ns).feedback == "the check raised KeyError: 'x'"
    assert check("remote", "x", ns).feedback == "remote says no"


def test_expressions_see_notebook_values_and_python_builtins():
    ns = {
        "limit": 2,
        "json": json,
    }  # `import json` in the notebook does not hide the built-in check
    assert not check("max_words(limit)", "a b c", ns).passed
    assert check("lambda o: len(o.split()) <= limit", "a b", ns).passed
    assert check("json", "[1]", ns).passed


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("max_words", "needs an argument, e.g. --check 'max_words(400)'"),
        ("is_short", "name 'is_short' is not defined; built-in checks are max_words"),
        ("max_words(", "is not valid: SyntaxError"),
        ('regex("(")', "is not valid: error"),
        ("limit", "is not a check"),
    ],
)
def test_bad_checks_are_one_line_errors_naming_step_and_fix(expr, message):
    with pytest.raises(OptionError) as info:
        compile_check(expr, {"limit": 3}, "draft")
    assert str(info.value).startswith(f"step `draft`: --check {expr}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_gates_for_lists_checks_then_the_rubric():
    step = Step("draft", checks=["max_words(5)", "json"], rubric=Rubric("- short", "offline:j"))
    gates = gates_for(step, {})
    assert [g.name for g in gates] == ["max_words(5)", "json", "rubric"]


# the ladder with rule gates (offline provider: deterministic, no network) --------------------
def test_failing_check_retries_with_feedback_then_flags(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step(
        "draft", "Write about {{ topic }}", model="offline:w", checks=["max_words(3)"], retries=2
    )
    r = p.run({"topic": "pricing"}).results["draft"]
    assert r.state == "flagged" and [a.outcome for a in r.attempts] == ["gate", "gate", "gate"]
    assert r.attempts[0].error.startswith("output has ") and r.attempts[0].error.endswith(
        "the limit is 3"
    )
    # the offline provider marks an answer written after feedback; the retries got it
    assert "(Revised after feedback.)" in r.output
    p.close()


def test_a_check_that_passes_on_retry_passes(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.namespace["revised"] = lambda o: ("Revised after feedback" in o, "say you revised it")
    p.step("draft", "Write about {{ topic }}", model="offline:w", checks=["revised"], retries=1)
    r = p.run({"topic": "pricing"}).results["draft"]
    assert r.state == "passed" and [a.outcome for a in r.attempts] == ["gate", "passed"]
    p.close()


def test_on_fail_fail_and_python_steps(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step(
        "draft",
        "Write about {{ topic }}",
        model="offline:w",
        checks=["max_words(2)"],
        retries=0,
        on_fail="fail",
    )
    p.step("count", "len(draft)", python=True, checks=["lambda n: n < 5"])
    run = p.run({"topic": "pricing"})
    assert run.results["draft"].state == "failed" and "max_words(2)" in run.results["draft"].error
    assert run.results["count"].state == "pending"
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    run = p.run({"topic": "pricing"})
    assert run.results["count"].state == "flagged"  # a Python step's check flags (no retry helps)
    assert run.results["count"].gates[0].feedback == "output failed the check lambda n: n < 5"
    p.close()


def test_schema_validation_retries_with_the_validation_error_as_feedback(tmp_path):
    from nbconductor._types import Response
    from nbconductor.providers import Provider, registry

    class Flaky(Provider):
        name = "flaky"
        prompts: list[str] = []

        async def complete(self, request):
            Flaky.prompts.append(request.messages()[0]["content"])
            good = len(Flaky.prompts) > 1
            return Response(text=json.dumps({"title": "ok"} if good else {"nope": 1}))

    class Post(BaseModel):
        title: str

    registry.register("flaky", Flaky)
    p = Pipeline(store=tmp_path / "s.sqlite", namespace={"Post": Post})
    p.config.retry.base_delay = 0.001
    p.step("post", "Write a post", model="flaky:m", schema="Post", retries=1)
    r = p.run().results["post"]
    assert r.state == "passed" and r.output == Post(title="ok")
    assert [a.outcome for a in r.attempts] == ["error", "passed"]
    assert "does not match schema Post" in Flaky.prompts[1]
    p.close()


def test_a_parameter_named_like_a_builtin_check_does_not_hide_it():
    import asyncio

    from nbconductor.gates._rules import compile_check

    gate = compile_check("max_words(limit)", {"max_words": 400, "limit": 3}, "s")
    assert asyncio.run(gate.check("one two three", None)).passed is True

    assert asyncio.run(gate.check("one two three four", None)).passed is False
