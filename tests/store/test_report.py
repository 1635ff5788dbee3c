"""System-level metrics computed on a store with known contents (StepResults recorded directly)."""

from __future__ import annotations

import json

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from nbconductor._types import Attempt, StepResult, Usage
from nbconductor.cli import main
from nbconductor.notebook._report_display import show_report
from nbconductor.store._base import connect
from nbconductor.store._report import percentile, report, report_figure, report_text
from nbconductor.store._review import decide
from nbconductor.store._sqlite import Store

W, F = "anthropic:claude-haiku-4-5", "openai:gpt-4.1-mini"


def record(
    store,
    run,
    step,
    state,
    outcomes,
    *,
    models=None,
    latency=1.0,
    tokens=(10, 5),
    cost=0.001,
    items=None,
    item=None,
    cached=False,
    error=None,
):
    attempts = [
        Attempt(
            (models or [W] * len(outcomes))[i],
            0.0,
            0.0,
            o.split(":")[0],
            o.partition(":")[2].strip() or None,
        )
        for i, o in enumerate(outcomes)
    ]
    result = StepResult(
        step,
        state,
        f"{step} output",
        attempts=attempts,
        usage=Usage(*tokens),
        cost=cost,
        started=100.0,
        ended=100.0 + latency,
        items=items,
        cached=cached,
        error=error,
    )
    return store.record(run, result, item=item)


@pytest.fixture
def store(store_target):
    s = connect(store_target)  # SQLite and PostgreSQL
    runs = [s.start_run({"topic": f"t{i}"}, None, "newsletter.ipynb") for i in range(4)]
    r1, r2, r3, r4 = runs
    # research: no gates; a transport retry is not a quality failure; a cache hit is not counted
    record(s, r1, "research", "passed", ["passed"])
    record(s, r2, "research", "passed", ["error: RateLimitError: 429", "passed"])
    record(s, r3, "research", "passed", ["passed"])
    record(s, r4, "research", "cached", ["passed"], cached=True)
    # draft: first pass, a retry, a flagged output edited after a fallback, a flagged one rejected
    record(s, r1, "draft", "passed", ["passed"], latency=1.0, tokens=(100, 50), cost=0.01)
    record(
        s,
        r2,
        "draft",
        "passed",
        ["gate: too long", "passed"],
        latency=2.0,
        tokens=(200, 100),
        cost=0.02,
    )
    edited = record(
        s,
        r3,
        "draft",
        "flagged",
        ["gate", "gate", "gate"],
        models=[W, W, F],
        latency=3.0,
        tokens=(300, 150),
        cost=0.03,
    )
    rejected = record(s, r4, "draft", "flagged", ["gate"], latency=4.0, tokens=(100, 50), cost=0.01)
    # translate (--map over 2 items): item rows are recorded too, but only step-level rows count
    for run, per_item in ((r1, [["passed"], ["passed"]]), (r2, [["passed"], ["gate", "passed"]])):
        for i, outcomes in enumerate(per_item):
            record(s, run, "translate", "passed", outcomes, item=i)
        record(
            s,
            run,
            "translate",
            "passed",
            [o for p in per_item for o in p],
            items=2,
            tokens=(40, 20),
        )
    # publish: invalid output counts against first pass; skipped rows are not counted
    record(s, r1, "publish", "passed", ["passed"], cost=None)
    record(s, r2, "publish", "passed", ["error: OutputError: output is not valid JSON", "passed"])
    record(s, r3, "publish", "skipped", [])
    record(s, r4, "publish", "failed", ["error: ServerError: 500"] * 3, error="boom")
    decide(s, edited, "edit", "a better draft")
    decide(s, rejected, "reject", note="off-brand")
    for run in runs:
        s.end_run(run, "passed", 0.0)
    yield s
    s.close()


def test_per_step_figures(store):
    rep = report(store)
    assert list(rep["steps"]) == ["research", "draft", "translate", "publish"]
    d = rep["steps"]["draft"]
    assert (d["runs"], d["first_pass"], d["first_pass_yield"], d["final_yield"]) == (
        4,
        1,
        0.25,
        0.75,
    )
    assert (d["mean_attempts"], d["fallbacks"], d["edits"], d["rejects"], d["pending"]) == (
        1.75,
        1,
        1,
        1,
        0,
    )
    assert (d["flagged"], d["approved"], d["failed"]) == (2, 0, 0)
    assert d["decisions"] == {"edit": 1, "reject": 1}
    assert (d["input_tokens"], d["output_tokens"], d["tokens"]) == (700, 350, 1050)
    assert d["cost"] == pytest.approx(0.07)
    assert (d["latency_p50"], d["latency_p95"]) == (2.0, 4.0)
    r = rep["steps"]["research"]
    assert (r["runs"], r["first_pass_yield"], r["cache_hits"]) == (3, 1.0, 1)
    assert r["mean_attempts"] == pytest.approx(4 / 3, abs=1e-3)
    t = rep["steps"]["translate"]
    # an item is an output: 2 + 3 calls for 4 outputs; the run with an item retry is not first pass
    assert (t["runs"], t["first_pass_yield"], t["final_yield"], t["mean_attempts"]) == (
        2,
        0.5,
        1.0,
        1.25,
    )
    assert t["tokens"] == 120
    p = rep["steps"]["publish"]
    assert (p["runs"], p["first_pass"], p["final_yield"], p["failed"]) == (
        3,
        1,
        pytest.approx(0.6667),
        1,
    )
    assert (p["cost_unknown"], p["cost"]) == (1, pytest.approx(0.002))


def test_totals_and_the_worst_step(store):
    rep = report(store)
    t = rep["totals"]
    assert (rep["runs"], t["runs_with_output"], t["first_pass_runs"], t["first_pass_yield"]) == (
        4,
        4,
        1,
        0.25,
    )
    assert t["pending_review"] == 0 and t["tokens"] == 15 * 3 + 1050 + 120 + 15 * 3
    assert rep["worst_step"] == "draft"
    assert rep["worst_step_reason"].startswith("lowest first-pass yield: 1 of 4 outputs (25%)")
    assert "1 edited, 1 rejected" in rep["worst_step_reason"]


def test_pending_review_is_not_yet_a_final_yield(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    run = s.start_run({}, None, None)
    result_id = record(s, run, "draft", "flagged", ["gate"])
    assert report(s)["steps"]["draft"]["final_yield"] == 0.0
    assert (
        report(s)["steps"]["draft"]["pending"] == 1 and report(s)["totals"]["pending_review"] == 1
    )
    decide(s, result_id, "approve")
    d = report(s)["steps"]["draft"]
    assert (d["final_yield"], d["approved"], d["pending"], d["first_pass_yield"]) == (
        1.0,
        1,
        0,
        0.0,
    )


def test_ties_go_to_lower_final_yield_then_more_edits_then_pipeline_order(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    run = s.start_run({}, None, None)
    record(s, run, "a", "passed", ["gate", "passed"])
    record(s, run, "b", "flagged", ["gate"])
    record(s, run, "c", "passed", ["gate", "passed"])
    assert report(s)["worst_step"] == "b"  # all 0% first pass; b has the lowest final yield
    s2 = Store(tmp_path / "s2.sqlite")
    run = s2.start_run({}, None, None)
    record(s2, run, "a", "passed", ["passed"])
    assert report(s2)["worst_step"] is None
    assert "every step passed" in report(s2)["worst_step_reason"]


def test_empty_store_and_percentiles(tmp_path):
    rep = report(Store(tmp_path / "empty.sqlite"))
    assert rep["steps"] == {} and rep["worst_step"] is None
    assert "no step results" in report_text(rep)
    assert percentile([], 50) is None
    assert [percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], p) for p in (50, 95, 100)] == [5, 10, 10]


def test_cli_prints_the_table_or_json(store, capsys):
    assert main(["report", "--store", store.path]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:4] == ["step", "runs", "first-pass", "final"]
    draft = next(line for line in out.splitlines() if line.startswith("draft"))
    assert "◀" in draft and "25%" in draft and "75%" in draft and "1,050" in draft
    assert "quality drops most at `draft`" in out
    assert main(["report", "--store", store.path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report(store)))


def test_cli_without_a_store_fails_cleanly(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no run store at" in capsys.readouterr().err


@pytest.fixture
def shell(monkeypatch):
    shell = InteractiveShell.instance()  # tests/conftest.py puts sys.modules["__main__"] back
    # A terminal shell (if another test started one) formats text/plain only; a notebook does all.
    monkeypatch.setattr(
        shell.display_formatter, "active_types", shell.display_formatter.format_types
    )
    return shell


def test_show_report_displays_a_table_and_a_plot(store, shell):
    rep = report(store)
    with capture_output() as cap:
        show_report(rep)
    markdown, image = cap.outputs
    assert "| draft ◀ |" in markdown.data["text/markdown"]
    assert "image/png" in image.data
    fig = report_figure(rep)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(rep["steps"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(rep["steps"])
    assert [round(p.get_height(), 2) for p in ax.patches[:4]] == [1.0, 0.25, 0.5, 0.33]
    assert any("quality drops here" in t.get_text() for t in ax.texts)


def test_conductor_report_magic(store, shell):
    shell.run_line_magic("load_ext", "nbconductor")
    with capture_output() as cap:
        shell.run_line_magic("conductor", f"report --store {store.path} --json")
    assert json.loads(cap.stdout)["worst_step"] == "draft"


def test_totals_reconcile_and_state_their_denominators(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    r1, r2, r3, r4, r5 = (s.start_run({"i": i}, None, None) for i in range(5))
    record(s, r1, "draft", "passed", ["passed"], cost=0.01)
    record(s, r2, "draft", "passed", ["gate: too long", "passed"], cost=0.02)
    record(s, r3, "draft", "cached", ["passed"], cached=True)  # r3 reused everything
    record(s, r3, "publish", "skipped", [])
    record(
        s, r4, "draft", "failed", ["error: ServerError: 500"], cost=0.0, error="boom"
    )  # priced $0
    for run, status in ((r1, "passed"), (r2, "passed"), (r3, "passed"), (r4, "failed")):
        s.end_run(run, status, 0.0)
    rep = report(s)
    t = rep["totals"]
    assert (
        rep["runs"],
        t["runs_with_output"],
        t["runs_all_reused"],
        t["runs_without_results"],
    ) == (5, 3, 1, 1)
    assert t["first_pass_runs"] == 1 and t["cost"] == pytest.approx(0.03)
    text = report_text(rep)
    assert "5 runs (3 passed, 1 failed, 1 running)" in text
    assert "whole-run first-pass yield 33% (1/3) of runs that ran a step afresh" in text
    assert "(1 reused every step from the cache; 1 recorded no step)" in text
    draft = next(line for line in text.splitlines() if line.startswith("draft"))
    assert draft.split()[2:9] == ["3", "33%", "(1/3)", "67%", "(2/3)", "1", "0"]  # after "draft ◀"
    publish = next(line for line in text.splitlines() if line.startswith("publish"))
    assert publish.split()[1:6] == ["0", "—", "—", "0", "1"]  # only skipped: shown as such
    assert "first-pass = accepted on the first try" in text and "/ runs" in text
    assert "?" not in text


def test_a_failed_run_whose_calls_were_priced_zero_costs_zero(fake_api, fast_config, tmp_path):
    from fakeapi import Error

    from nbconductor import Pipeline

    fake_api.set_default(Error(400, "bad request"), endpoint="anthropic")
    p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config, root=tmp_path)
    p.step("draft", "Hi", model=W)
    p.step("after", "{{ draft }}!", model=W)  # never runs: its upstream failed
    run = p.run()
    assert run.status == "failed" and run.results["draft"].cost == 0.0 and run.cost == 0.0
    assert p.store.runs()[0]["cost"] == 0.0
    assert run.results["after"].state == "pending" and "?" not in run.summary()
    rep = report(p.store)
    assert rep["totals"]["cost"] == 0.0 and "$0 ·" in report_text(rep)
    p.close()
