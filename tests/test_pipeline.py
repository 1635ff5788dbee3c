"""`Pipeline` owns its invariants: a graph that always checks, a cached graph, reset, accept."""

from __future__ import annotations

import pytest

import nbconductor._pipeline as pipeline_module
from nbconductor import Pipeline
from nbconductor._errors import CycleError, UnknownNameError


@pytest.fixture
def p(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite", namespace={"topic": "cats"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("tagline", "One line from {{ draft }}", model="offline:t")
    yield p
    p.close()


def test_add_refuses_a_cycle_and_leaves_the_pipeline_as_it_was(p):
    before = dict(p.steps)
    with pytest.raises(CycleError, match="draft → tagline → draft|tagline → draft → tagline"):
        p.step("draft", "Rewrite {{ tagline }}", model="offline:w")  # replacing
    assert p.steps == before and p.steps["draft"] is before["draft"]
    with pytest.raises(UnknownNameError):
        p.step("extra", "x", after="nothing")  # adding
    assert "extra" not in p.steps and p.graph.deps["tagline"] == {"draft"}


def test_a_new_step_that_an_earlier_step_reads_can_close_a_cycle(p):
    # adding a step no earlier step reads skips the cycle search; this one is read by `intro`
    p.step("intro", "Intro to {{ outro }}", model="offline:w")  # `outro` is no step yet
    with pytest.raises(CycleError, match="intro → outro → intro|outro → intro → outro"):
        p.step("outro", "Outro after {{ intro }}", model="offline:w")
    assert "outro" not in p.steps
    p.step("size", "len(tagline)", python=True)  # read by nobody: added, and the graph checks
    assert p.graph.deps["size"] == {"tagline"} and p.graph.generations()[-1] == ["size"]


def test_the_graph_is_built_once_until_the_steps_change(p, monkeypatch):
    built = []
    real = pipeline_module.Graph
    monkeypatch.setattr(
        pipeline_module, "Graph", lambda steps, **kw: built.append(1) or real(steps, **kw)
    )
    g = p.graph  # built when the last step was added, which checked it
    assert p.graph is g and p.run()["tagline"] and p.graph is g and built == []
    p.step("size", "len(tagline)", python=True)  # a new step: one build, which add() checks
    assert p.graph is not g and "size" in p.graph.steps and len(built) == 1
    g = p.graph
    p.steps["draft"] = p.steps["draft"].replace(body="About {{ topic }}")  # replaced directly
    assert p.graph is not g and len(built) == 2
    del p.steps["size"]
    assert "size" not in p.graph.steps


def test_reset_forgets_declarations_and_results(p):
    p.context("voice", "Warm.")
    p.run()
    p.reset()
    assert not p.steps and not p.contexts and not p.results and p.last_run is None
    assert not p.graph.steps


def test_accept_puts_a_decision_where_downstream_steps_read_it(p):
    first = p.run()
    draft = first.results["draft"]
    assert p.accept("draft", "Cats are great.", edited=True, cache_key=draft.cache_key) == (
        "Cats are great."
    )
    assert p.results["draft"].output == "Cats are great."
    again = p.run(force={"tagline"})
    assert again.results["draft"].cached and again["draft"] == "Cats are great."
    assert "Cats are great." in again.results["tagline"].prompt
    with pytest.raises(Exception, match="no step named `drat`: did you mean `draft`"):
        p.accept("drat", "x")
