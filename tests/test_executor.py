import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nbconductor import Pipeline
from nbconductor._config import Config
from nbconductor._errors import DefinitionError, UnknownNameError
from nbconductor._types import Response, Usage
from nbconductor.providers import Provider, registry
from nbconductor.store._sqlite import Store


class Counting(Provider):
    """A provider of our own (registered like a third-party one) that counts calls."""

    name = "counting"
    calls: list = []
    delay = 0.0

    async def complete(self, request):
        Counting.calls.append((self.ref.model, request.prompt, time.time()))
        if Counting.delay:
            await asyncio.sleep(Counting.delay)
        Counting.calls.append(("end", request.prompt, time.time()))
        return Response(f"{self.ref.model}: {request.prompt}", Usage(3, 2), cost=0.0)


registry.register("counting", Counting)


@pytest.fixture
def counting():
    Counting.calls = []
    Counting.delay = 0.0
    yield Counting
    Counting.delay = 0.0


def model_calls():
    return [c for c in Counting.calls if c[0] != "end"]


def newsletter(p: Pipeline, model="counting:m"):
    p.step("research", "Research {{ topic }}", model=model)
    p.step("outline", "Outline {{ topic }}", model=model)
    p.step("draft", "Draft from {{ research }} and {{ outline }}", model=model)
    p.step("translate", "{{ lang }}: {{ draft }}", model=model, map="lang in markets")
    p.step("stats", '{"n": len(translate), "words": len(draft.split())}', python=True)
    return p


def test_outputs_types_and_order(counting, tmp_path):
    p = newsletter(Pipeline(store=tmp_path / "s.sqlite"))
    run = p.run({"topic": "T", "markets": ["fr", "de", "ja"]})
    assert run.status == "passed"
    assert run["research"] == "m: Research T"
    assert run["translate"] == [
        f"m: {lang}: m: Draft from m: Research T and m: Outline T" for lang in ["fr", "de", "ja"]
    ]
    assert run["stats"] == {"n": 3, "words": 10}
    assert run.results["translate"].items == 3


def test_independent_steps_and_map_items_run_concurrently(counting, tmp_path):
    counting.delay = 0.2
    p = Pipeline(store=tmp_path / "s.sqlite")
    for i in range(4):
        p.step(f"s{i}", f"independent {i}", model="counting:m")
    p.step("fan", "{{ x }}", model="counting:m", map="x in range(4)")
    run = p.run()
    spans = [(r.started, r.ended) for r in run.results.values()]
    # every pair of the five steps overlaps in time: none waited for another
    assert max(s for s, _ in spans) < min(e for _, e in spans)
    starts = sorted(t for m, _, t in counting.calls if m != "end")
    assert len(starts) == 8 and starts[-1] - starts[0] < 0.15


def test_per_provider_concurrency_limit(counting, tmp_path):
    counting.delay = 0.05
    p = Pipeline(store=tmp_path / "s.sqlite", config=Config(concurrency={"counting": 2}))
    p.step("fan", "{{ x }}", model="counting:m", map="x in range(8)")
    p.run()
    events = sorted((t, 1 if m != "end" else -1) for m, _, t in counting.calls)
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2


def test_unchanged_rerun_makes_no_model_calls_and_edit_reruns_exactly_downstream(
    counting, tmp_path
):
    p = newsletter(Pipeline(store=tmp_path / "s.sqlite"))
    params = {"topic": "T", "markets": ["fr", "de"]}
    p.run(params)
    first = len(model_calls())
    assert first == 5
    again = p.run(params)
    assert len(model_calls()) == first
    assert {r.state for r in again.results.values()} == {"cached"}
    # edit one step: it and its dependents re-run, nothing else
    p.step("outline", "Outline {{ topic }} in three parts", model="counting:m")
    edited = p.run(params)
    fresh = {n for n, r in edited.results.items() if not r.cached}
    assert fresh == {"outline", "draft", "translate", "stats"}
    assert len(model_calls()) == first + 1 + 1 + 2


def test_cache_is_shared_through_the_store_across_sessions(counting, tmp_path):
    store = tmp_path / "s.sqlite"
    newsletter(Pipeline(store=store)).run({"topic": "T", "markets": ["fr"]})
    n = len(model_calls())
    run = newsletter(Pipeline(store=store)).run({"topic": "T", "markets": ["fr"]})
    assert len(model_calls()) == n
    assert run["translate"] == ["m: fr: m: Draft from m: Research T and m: Outline T"]


def test_force_and_no_cache(counting, tmp_path):
    p = newsletter(Pipeline(store=tmp_path / "s.sqlite"))
    params = {"topic": "T", "markets": []}
    p.run(params)
    n = len(model_calls())
    p.run(params, force=["research"])
    assert len(model_calls()) == n + 1
    p.step("outline", "Outline {{ topic }}", model="counting:m", no_cache=True)
    p.run(params)
    assert len(model_calls()) == n + 2


def test_when_routes_and_skips_propagate(counting, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("triage", '{"category": category}', python=True)
    p.step("billing", "Billing answer", model="counting:m", when="triage['category'] == 'billing'")
    p.step("tech", "Tech answer", model="counting:m", when="triage['category'] == 'tech'")
    p.step("billing_followup", "Follow up {{ billing }}", model="counting:m")
    p.step("reply", "{{ billing }} {{ tech }}", python=False, model="counting:m")
    run = p.run({"category": "tech"})
    assert run.results["billing"].state == "skipped" and run["billing"] is None
    assert run.results["billing_followup"].state == "skipped"  # all its upstream skipped
    assert run.results["reply"].state == "passed"  # a join after two branches still runs
    assert run["reply"] == "m: None m: Tech answer"


def test_a_failing_step_keeps_the_others(counting, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("good", "fine", model="counting:m")
    p.step("bad", "x = 1\ny = x / 0", python=True)
    p.step("after_bad", "{{ bad }}", model="counting:m")
    run = p.run()
    assert run.status == "failed"
    assert run.results["good"].state == "passed"
    assert run.results["bad"].state == "failed"
    assert "ZeroDivisionError: division by zero (line 2: y = x / 0)" in run.results["bad"].error
    assert run.results["after_bad"].state == "pending"
    rows = Store(tmp_path / "s.sqlite").results(run.run_id)
    assert {r["step"]: r["state"] for r in rows} == {"good": "passed", "bad": "failed"}
    with pytest.raises(Exception, match="bad"):
        run.raise_for_status()


def test_unknown_name_is_reported_before_anything_runs(counting, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("a", "hello", model="counting:m")
    p.step("b", "{{ topc }}", model="counting:m")
    with pytest.raises(UnknownNameError, match="did you mean `topic`"):
        p.run({"topic": "x"})
    assert model_calls() == []


def test_fallback_after_errors(tmp_path):
    from nbconductor._config import RetryPolicy
    from nbconductor._errors import ServerError

    class Flaky(Provider):
        name = "flaky"
        calls = 0

        async def complete(self, request):
            Flaky.calls += 1
            raise ServerError("boom", status=503)

    registry.register("flaky", Flaky)
    p = Pipeline(store=tmp_path / "s.sqlite", config=Config(retry=RetryPolicy(base_delay=0.001)))
    p.step("a", "hi", model="flaky:x", fallbacks=["offline:backup"], retries=2)
    run = p.run()
    r = run.results["a"]
    assert Flaky.calls == 3
    assert r.state == "passed" and r.model == "offline:backup"
    assert [a.outcome for a in r.attempts] == ["error", "error", "error", "passed"]


def test_cancellation_keeps_completed_steps(counting, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("fast", "quick", model="offline:a")
    p.step("slow", "{{ fast }}", model="counting:m")
    counting.delay = 5

    async def main():
        task = asyncio.ensure_future(p.arun())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    store = Store(tmp_path / "s.sqlite")
    assert [r["step"] for r in store.results()] == ["fast"]
    assert store.runs()[0]["status"] == "interrupted"


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from nbconductor import Pipeline
    p = Pipeline(store=sys.argv[1])
    p.step("a", "open(sys_argv2, 'a').write('a ran\\\\n')\\n'A'", python=True)
    p.step("b", "import time\\ntime.sleep(delay)\\na + 'B'", python=True)
    print(p.run({"sys_argv2": sys.argv[2], "delay": float(sys.argv[3])}).outputs, flush=True)
""")


def test_killed_run_resumes_without_redoing_completed_steps(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(RESUME_SCRIPT)
    store, marker = tmp_path / "s.sqlite", tmp_path / "marker.txt"
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(marker), "60"])
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let step a's result reach the store
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.read_text() == "a ran\n"
    out = subprocess.run(
        [sys.executable, str(script), str(store), str(marker), "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "'b': 'AB'" in out.stdout
    assert marker.read_text() == "a ran\n"  # step a was not run again


def test_definition_errors_are_definition_errors(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    with pytest.raises(DefinitionError, match="not a valid Python identifier"):
        p.step("my step", "x")
    with pytest.raises(DefinitionError, match="--on-fail must be one of"):
        p.step("a", "x", on_fail="explode")
    with pytest.raises(DefinitionError, match="unknown provider `nope`"):
        p.step("b", "x", model="nope:m")
        p.run()


def test_a_reused_flagged_output_stays_flagged(counting, tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("short", "Write {{ topic }}", model="counting:m", checks=["max_words(1)"], retries=0)
    first = p.run({"topic": "a long topic"})
    assert first.results["short"].state == "flagged" and first.status == "flagged"
    again = p.run({"topic": "a long topic"})
    r = again.results["short"]
    assert r.cached and r.state == "flagged" and again.status == "flagged"
    assert len(model_calls()) == 1


def test_failed_step_keeps_its_rendered_prompt(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step(
        "strict",
        "Write about {{ topic }}",
        model="offline:m",
        checks=["max_words(1)"],
        retries=0,
        on_fail="fail",
    )
    run = p.run({"topic": "pricing"})
    assert run.results["strict"].state == "failed"
    row = Store(tmp_path / "s.sqlite").results(run.run_id)[0]
    assert row["prompt"] == "Write about pricing"


def test_environment_store_wins_over_config(tmp_path, monkeypatch):
    (tmp_path / "nbconductor.toml").write_text('store = "from-config.sqlite"\n')
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "from-env.sqlite"))
    assert Pipeline(root=tmp_path).store.path == str(tmp_path / "from-env.sqlite")
    monkeypatch.delenv("NBCONDUCTOR_STORE")
    assert Pipeline(root=tmp_path).store.path == str(tmp_path / "from-config.sqlite")


def test_when_and_map_expressions_see_values_inside_generators(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step(
        "pick",
        "{{ w }}",
        model="offline:m",
        map="w in [w for w in words if w in allowed]",
        when="any(w in allowed for w in words)",
    )
    run = p.run({"words": ["a", "b", "c"], "allowed": {"a", "c"}})
    assert [o.split("] ")[1][:1] for o in run["pick"]] == ["a", "c"]


def test_python_step_can_define_annotated_pydantic_models(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step(
        "typed",
        "from typing import Literal\nfrom pydantic import BaseModel\n"
        "class T(BaseModel):\n    kind: Literal['a', 'b']\nT(kind='a').kind",
        python=True,
    )
    assert p.run()["typed"] == "a"


def test_map_over_a_string_is_an_error_not_letters(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("t", "{{ lang }}", model="offline:m", map="lang in markets")
    r = p.run({"markets": "fr"}).results["t"]
    assert r.state == "failed" and "--map 'markets' is 'fr', not a list" in r.error


def test_dry_run_counts_upstream_output_into_downstream_input(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("a", "Write about {{ t }}", model="anthropic:claude-sonnet-4-6", max_tokens=800)
    p.step(
        "b", "Translate {{ a }} into {{ lang }}", model="openai:gpt-4.1-mini", map="lang in langs"
    )
    a, b = p.plan({"t": "x", "langs": ["fr", "de"]})
    assert a["calls"] == 1 and a["output_tokens"] == 800 and a["cost"] > 0
    assert b["calls"] == 2 and b["input_tokens"] > 2 * 800  # each item's prompt carries a's output
    assert Store(tmp_path / "s.sqlite").results() == []  # nothing was sent or recorded


def test_many_runs_on_fresh_event_loops_share_no_loop_bound_state(counting, tmp_path):
    # Pipeline.run outside a notebook starts a new event loop each time; nothing bound to an
    # earlier loop (semaphores, clients) may leak into a later one.
    import gc

    p = Pipeline(store=tmp_path / "s.sqlite", config=Config(concurrency={"counting": 1}))
    for i in range(30):
        p.step("s", f"call {i} {{{{ x }}}}", model="counting:m", map="x in range(2)")
        assert p.run().status == "passed"
        gc.collect()
    assert len(model_calls()) == 60
    assert len(p.pool._semaphores) <= 1


def test_gate_rejected_output_is_flagged_even_if_the_fallback_then_errors(tmp_path):
    from nbconductor._config import RetryPolicy
    from nbconductor._errors import AuthError

    class Down(Provider):
        name = "down"

        async def complete(self, request):
            raise AuthError("no key", status=401)

    registry.register("down", Down)
    p = Pipeline(store=tmp_path / "s.sqlite", config=Config(retry=RetryPolicy(base_delay=0.001)))
    p.step(
        "a",
        "A long answer about {{ t }}",
        model="offline:m",
        fallbacks=["down:x"],
        checks=["max_words(2)"],
        retries=1,
    )
    r = p.run({"t": "x"}).results["a"]
    assert r.state == "flagged" and r.output.startswith("[offline:m] A long answer")
    assert [a.outcome for a in r.attempts] == ["gate", "gate", "error"]


def test_function_step_cache_key_covers_the_whole_code_object(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")

    @p.function("v")
    def v():
        return "v1"

    assert p.run()["v"] == "v1"

    @p.function("v")
    def v():  # noqa: F811 - only a constant differs
        return "v2"

    assert p.run()["v"] == "v2"

    def make(suffix, sep="-"):
        def w(v):
            return sep.join([v, suffix])

        return w

    p.function("w")(make("a"))
    assert p.run()["w"] == "v2-a"
    p.function("w")(make("b"))  # same code, another closure value
    assert p.run()["w"] == "v2-b"
    p.function("w")(make("b", sep="+"))
    assert p.run()["w"] == "v2+b"
    p.function("w")(make("b", sep="+"))  # an equal function is a cache hit
    assert p.run().results["w"].cached

    import functools

    def join(sep, v):
        return sep.join([v, v])

    p.function("w")(functools.partial(join, "/"))
    assert p.run()["w"] == "v2/v2"
    p.function("w")(functools.partial(join, "|"))
    assert p.run()["w"] == "v2|v2"


def test_code_hash_is_one_helper_equal_across_processes(tmp_path):
    from nbconductor import _executor, _tools

    assert not hasattr(_executor, "_code_digest") and not hasattr(_tools, "_code_hash")
    src = textwrap.dedent("""
        from nbconductor._tools import code_hash
        def outer():
            def f(n):
                return f(n - 1) if n else [x for x in {"a", "b", "c"} if x in {"a", "z"}]
            return f
        print(code_hash(outer()))
    """)
    hashes = {
        subprocess.run(
            [sys.executable, "-c", src],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(hashes) == 1 and len(hashes.pop().strip()) == 16


MAP_SCRIPT = textwrap.dedent("""
    import sys
    from nbconductor import Pipeline
    p = Pipeline(store=sys.argv[1])
    p.step("each", "Item {{ x }}.", model="anthropic:claude-haiku-4-5", map="x in xs")
    print(p.run({"xs": ["a", "b", "c", "d"]}).results["each"].output, flush=True)
""")


def _item_of(body) -> str:
    import json

    return json.dumps(body).split("Item ", 1)[1][0]


def test_killed_mid_map_resends_no_finished_item(fake_api, tmp_path):
    from fakeapi import Slow, Text

    script, store = tmp_path / "job.py", tmp_path / "s.sqlite"
    script.write_text(MAP_SCRIPT)
    # items a and b answer at once; c and d hang until the run is killed
    fake_api.set_default(
        lambda body: (
            Text(f"done {_item_of(body)}") if _item_of(body) in "ab" else Slow(60, Text("late"))
        ),
        endpoint="anthropic",
    )
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE)
    deadline, done = time.time() + 60, 0
    while time.time() < deadline and done < 2:
        time.sleep(0.05)
        if store.exists():
            s = Store(store)
            done = len(s.query("SELECT id FROM results WHERE item IS NOT NULL AND state='passed'"))
            s.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done == 2 and len(fake_api.requests_for("anthropic")) == 4
    fake_api.reset()
    fake_api.set_default(lambda body: Text(f"done {_item_of(body)}"), endpoint="anthropic")
    out = subprocess.run(
        [sys.executable, str(script), str(store)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['done a', 'done b', 'done c', 'done d']"
    assert sorted(_item_of(r.json) for r in fake_api.requests_for("anthropic")) == [
        "c",
        "d",
    ]  # 0 re-sent


def test_a_failing_map_item_fails_only_itself(fake_api, fast_config, tmp_path):
    from fakeapi import Error, Text

    def reply(body):
        return Error(400, "bad item") if _item_of(body) == "c" else Text(f"done {_item_of(body)}")

    fake_api.set_default(reply, endpoint="anthropic")
    p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config)
    p.step("each", "Item {{ x }}.", model="anthropic:claude-haiku-4-5", map="x in xs")
    res = p.run({"xs": ["a", "b", "c", "d"]}).results["each"]
    assert res.state == "failed" and res.output == ["done a", "done b", None, "done d"]
    assert "item 2 ('c') failed" in res.error and "bad item" in res.error
    assert res.usage.input_tokens == 30 and res.cost is not None  # the three billed answers
    fake_api.reset()
    fake_api.set_default(lambda body: Text(f"done {_item_of(body)}"), endpoint="anthropic")
    res = p.run({"xs": ["a", "b", "c", "d"]}).results["each"]
    assert res.state == "passed" and res.output == ["done a", "done b", "done c", "done d"]
    assert [_item_of(r.json) for r in fake_api.requests_for("anthropic")] == ["c"]
    assert res.usage.input_tokens == 10  # only the fresh item is paid for in this run
