"""The graph, timeline and form as the magics drive them: snapshots of real runs in a real
InteractiveShell, the live graph following run events, and the parameters the form finds."""

from __future__ import annotations

import re
import time

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell, new_magics

from nbconductor._errors import StepFailed
from nbconductor._notebook import current_parameters
from nbconductor._types import Attempt, GateResult, StepResult, Usage
from nbconductor.notebook.widgets.form import IntakeForm
from nbconductor.notebook.widgets.graph import GraphWidget
from nbconductor.notebook.widgets.live import LiveGraph
from nbconductor.render._snapshot import attempt_spans, snapshot
from nbconductor.render.timeline import TimelineView, timeline_rows
from nbconductor.store._review import decide, queue

PARAMS = 'topic = "pricing pages"\nmarkets = ["fr", "de", "ja"]'
RESEARCH = (
    "research --json",
    'List five competitors on {{ topic }} as JSON: [{"name": ..., "angle": ...}]',
)
DRAFT = (
    'draft --check "max_words(3)" --retries 0 --on-fail review',
    "Write about {{ topic }} avoiding {{ research }}",
)
TRANSLATE = ('translate --map "lang in markets"', "Translate into {{ lang }}: {{ draft }}")
STATS = ("stats --python", '{"words": len(draft.split()), "languages": len(translate)}')


@pytest.fixture
def ip(tmp_path, monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "NBCONDUCTOR_OFFLINE_LATENCY"):
        monkeypatch.delenv(var, raising=False)
    yield fresh_shell(tmp_path, monkeypatch)


fresh = new_magics  # a new magics object (and pipeline), as a new kernel would have


def pipeline(ip):
    return ip.user_ns["__nbconductor__"].pipeline


def step(ip, line, body):
    with capture_output() as cap:
        ip.run_cell_magic("step", line, body)
    return cap


def conductor(ip, line):
    with capture_output() as cap:
        value = ip.run_line_magic("conductor", line)
    return value, cap


def newsletter(ip):
    ip.run_cell(PARAMS, store_history=True)
    for line, body in (RESEARCH, DRAFT, TRANSLATE, STATS):
        step(ip, line, body)


def states(widget: GraphWidget) -> dict[str, str]:
    return {n["id"]: n["state"] for n in widget.nodes}


# ---------------------------------------------------------------------------- %conductor graph


def test_graph_before_any_run_is_all_pending(ip):
    ip.run_cell(PARAMS)
    ip.run_cell_magic("step", RESEARCH[0] + " --lazy", RESEARCH[1])
    ip.run_cell_magic("step", DRAFT[0] + " --lazy", DRAFT[1])
    widget, _ = conductor(ip, "graph")
    assert isinstance(widget, GraphWidget)
    assert states(widget) == {"research": "pending", "draft": "pending"}
    assert widget.run["summary"] == "run · not run yet"
    assert [(e["source"], e["target"]) for e in widget.edges] == [("research", "draft")]
    assert {n["model"] for n in widget.nodes} == {"offline:default"}  # the alias it will use


def test_graph_shows_states_items_and_inspector(ip):
    newsletter(ip)
    widget, _ = conductor(ip, "graph")
    # Each %%step cell re-served its upstream from the cache; the flagged draft, served from
    # the cache, still shows flagged: it waits in the review queue.
    assert states(widget) == {
        "research": "cached",
        "draft": "flagged",
        "translate": "cached",
        "stats": "passed",
    }
    translate = next(n for n in widget.nodes if n["id"] == "translate")
    assert translate["items"] == 3 and translate["caption"]["badge"] == "×3"
    assert sorted((e["source"], e["target"]) for e in widget.edges) == [
        ("draft", "stats"),
        ("draft", "translate"),
        ("research", "draft"),
        ("translate", "stats"),
    ]

    widget.select("draft")
    detail = widget.detail
    assert detail["state"] == "flagged"
    assert detail["output_html"].startswith("<p>[offline:default] Write about pricing pages")
    assert detail["gates"] == [
        {
            "name": "max_words(3)",
            "passed": False,
            "score": "0.00",
            "feedback": detail["gates"][0]["feedback"],
        }
    ]
    assert "words" in detail["gates"][0]["feedback"]
    assert detail["prompt"].startswith("Write about pricing pages avoiding [")
    assert ["Upstream", "research"] in detail["facts"] and [
        "Downstream",
        "translate, stats",
    ] in detail["facts"]
    widget.select("research")
    assert '"name": "name 1"' in widget.detail["output_text"]

    data, _ = widget._repr_mimebundle_()
    assert 'data-node="draft" data-state="flagged"' in data["image/svg+xml"]
    assert "⚑ flagged" in data["text/plain"]


def test_graph_shows_a_decided_flag_as_cached(ip):
    newsletter(ip)
    store = pipeline(ip).store
    flagged = [i for i in queue(store) if i.step == "draft"]
    assert len(flagged) == 1
    decide(store, flagged[0].id, "approve")
    pipeline(ip).memory.clear()  # a new kernel: the store alone says what was decided
    conductor(ip, "run")
    widget, _ = conductor(ip, "graph")
    assert states(widget)["draft"] == "cached"


def test_graph_rejects_arguments(ip):
    with pytest.raises(UsageError, match="graph: unrecognized arguments: --nope"):
        ip.run_line_magic("conductor", "graph --nope")


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_maps_review_decisions_and_attempt_outcomes(ip):
    ip.run_cell_magic("step", "a --lazy", "Say {{ 1 }}")
    t = 1000.0
    tries = [
        Attempt("offline:x", t, t + 1, "error", "boom"),
        Attempt("offline:x", t + 1, t + 2, "gate", "long"),
        Attempt("offline:x", t + 2, t + 3, "gate", "long"),
    ]
    flagged = StepResult(
        "a",
        "flagged",
        "out",
        attempts=tries,
        started=t,
        ended=t + 3,
        gates=[GateResult("max_words(3)", False)],
    )
    node = snapshot(pipeline(ip), {"a": flagged})["nodes"][0]
    assert node["state"] == "flagged" and node["attempts"] == 3 and node["latency"] == 3
    assert node["attempt_spans"] == [
        [t, t + 1, "failed"],
        [t + 1, t + 2, "failed"],
        [t + 2, t + 3, "flagged"],
    ]

    approved = StepResult("a", "approved", "out", attempts=tries[:1], started=t, ended=t + 1)
    assert snapshot(pipeline(ip), {"a": approved})["nodes"][0]["state"] == "passed"
    rejected = StepResult("a", "rejected", "out", started=t, ended=t + 1)
    assert snapshot(pipeline(ip), {"a": rejected})["nodes"][0]["state"] == "failed"

    # a cache hit keeps the producing run's attempts (the count), but its span is when it was served
    hit = StepResult(
        "a", "cached", "out", attempts=tries, started=t + 50, ended=t + 50, cached=True
    )
    assert attempt_spans(hit) == [[t + 50, t + 50, "cached"]]
    assert snapshot(pipeline(ip), {"a": hit})["nodes"][0]["attempts"] == 3


def test_snapshot_outputs_by_kind(ip):
    from nbconductor._types import PNG

    ip.run_cell_magic("step", "a --lazy", "Say {{ 1 }}")
    p = pipeline(ip)

    def shown(output):
        n = snapshot(p, {"a": StepResult("a", "passed", output)})["nodes"][0]
        return n["output_kind"], n["output"], n["image_b64"]

    png = PNG(b"\x89PNG\r\n\x1a\n....")
    assert shown(png)[0] == "image" and shown(png)[2] == "iVBORw0KGgouLi4u"
    assert shown({"k": [1, 2]}) == ("json", '{\n  "k": [\n    1,\n    2\n  ]\n}', None)
    assert shown(["one", "two"]) == ("markdown", "one\n\n---\n\ntwo", None)
    assert shown(None) == ("none", "", None)


def test_failed_python_step_shows_its_error(ip):
    ip.run_cell(PARAMS)
    with pytest.raises(StepFailed, match="ZeroDivisionError"), capture_output():
        ip.run_cell_magic("step", "boom --python", "1 / 0")
    widget, _ = conductor(ip, "graph")
    assert states(widget) == {"boom": "failed"}
    widget.select("boom")
    assert "ZeroDivisionError" in widget.detail["error"]
    assert "error: step `boom` failed: ZeroDivisionError" in widget.to_text()


# ---------------------------------------------------------------------------- the live graph


def test_live_graph_follows_a_run(ip):
    ip.run_cell(PARAMS)
    for line, body in (RESEARCH, DRAFT, TRANSLATE):
        ip.run_cell_magic("step", line + " --lazy", body)
    magics = ip.user_ns["__nbconductor__"]
    live = LiveGraph(magics.pipeline, interval=0)
    assert states(live.widget) == {
        "research": "pending",
        "draft": "pending",
        "translate": "pending",
    }
    seen = []

    def observer(event, name, payload):
        live.observe(event, name, payload)
        if event != "text":
            seen.append((event, name, states(live.widget)[name], live.widget.run["status"]))

    with capture_output():
        magics.run(None, live=observer)
    assert seen[:2] == [
        ("start", "research", "running", "running"),
        ("attempt", "research", "running", "running"),
    ]
    assert ("end", "research", "passed", "running") in seen
    assert ("end", "draft", "flagged", "running") in seen
    assert ("end", "translate", "passed", "running") in seen
    # tokens are counted as steps finish
    assert live.widget.run["tokens"] > 0 and live.widget.run["summary"].startswith(
        "run · running · "
    )

    live.finish(magics.pipeline)
    assert states(live.widget) == {"research": "passed", "draft": "flagged", "translate": "passed"}
    assert (
        live.widget.run["status"] == "flagged"
        and live.widget.run["id"] == magics.pipeline.last_run.run_id
    )
    live.observe("start", "draft", None)  # late events after the end change nothing
    assert states(live.widget)["draft"] == "flagged"


def test_live_graph_counts_attempts_while_running(ip):
    ip.run_cell(PARAMS)
    ip.run_cell_magic("step", "a --lazy", "Say {{ topic }}")
    ip.run_cell_magic("step", "b --lazy", "Repeat {{ a }}")
    p = pipeline(ip)
    previous = StepResult("b", "passed", "old", started=1.0, ended=2.0)
    p.results["b"] = previous
    live = LiveGraph(p, targets=["a"], interval=0)
    # only `a` runs: `b` keeps its last result
    assert states(live.widget) == {"a": "pending", "b": "passed"}
    live.observe("start", "a", None)
    t = time.time()
    live.observe(
        "attempt",
        "a",
        Attempt("offline:default", t, t + 0.1, "gate", "too long", Usage(10, 5), 0.25),
    )
    node = next(n for n in live.widget.nodes if n["id"] == "a")
    assert (
        node["state"] == "running"
        and node["attempts"] == 2
        and node["tokens"] == 15
        and node["cost"] == 0.25
    )
    assert node["caption"]["metrics"] == "2 attempts · 15 tok · $0.25"
    spans = live.widget._snapshot["nodes"][0]["attempt_spans"]
    assert spans == [[t, t + 0.1, "failed"], [t + 0.1, None, "running"]]


def test_live_graph_throttles_and_sends_the_last_update(ip):
    ip.run_cell_magic("step", "a --lazy", "One")
    ip.run_cell_magic("step", "b --lazy", "Two")
    live = LiveGraph(pipeline(ip), interval=0.15)
    live.observe("start", "a", None)  # the first event goes out at once
    assert states(live.widget)["a"] == "running"
    live.observe("start", "b", None)  # within the interval: held back...
    assert states(live.widget)["b"] == "pending"
    deadline = time.monotonic() + 3
    while states(live.widget)["b"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert states(live.widget)["b"] == "running"  # ...and sent when the interval has passed
    sends = live.sends
    # a step ending is throttled too (one redraw for many ends), and `finish` sends the rest
    live.observe("end", "a", StepResult("a", "passed", "x", started=1.0, ended=2.0))
    live.observe("end", "b", StepResult("b", "passed", "y", started=1.0, ended=2.0))
    assert live.sends == sends and states(live.widget) == {"a": "running", "b": "running"}
    live.finish()
    assert states(live.widget) == {"a": "passed", "b": "passed"}
    assert live.widget.run["summary"] == "run · stopped"


def test_live_graph_cost_is_linear_in_steps(ip):
    """Each event redraws only its own node, and at most 1 / interval times a second: a run
    of many quick steps makes a bounded number of widget updates, each of changed nodes only."""
    for i in range(300):
        ip.run_cell_magic("step", f"s{i} --python --lazy", "1" if i == 0 else f"s{i - 1} + 1")
    p = pipeline(ip)
    live = LiveGraph(p, interval=0.25)
    patched = []
    original = live.widget.patch

    def patch(nodes, run=None):
        patched.append(len(nodes))
        original(nodes, run)

    live.widget.patch = patch
    full = []
    live.widget.update = lambda snap, _u=live.widget.update: (full.append(1), _u(snap))
    started = time.monotonic()
    p.run(observer=live.observe)
    live.finish(p)
    elapsed = time.monotonic() - started
    assert p.results["s299"].output == 300
    assert states(live.widget)["s299"] == "passed" and live.widget.run["status"] == "passed"
    assert full == []  # never the whole graph again
    # throttled: the first event, one per interval, and finish
    assert len(patched) <= 2 + elapsed / 0.25
    assert sum(patched) <= 2 * 300  # each step redrawn about once (start and end in one redraw)


def test_live_graph_marks_a_run_that_never_finished(ip):
    ip.run_cell_magic("step", "a --lazy", "One")
    ip.run_cell_magic("step", "b --lazy", "Two {{ a }}")
    live = LiveGraph(pipeline(ip), interval=0)
    live.observe("start", "a", None)
    live.observe("end", "a", StepResult("a", "passed", "x", started=1.0, ended=2.0))
    live.observe("start", "b", None)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        live.finish()
    assert states(live.widget) == {"a": "passed", "b": "pending"}
    assert live.widget.run["summary"] == "run · interrupted"


def test_conductor_run_shows_a_live_graph_that_ends_final(ip):
    newsletter(ip)
    _, cap = conductor(ip, "run --force")
    texts = [o.data.get("text/plain", "") for o in cap.outputs]
    run_id = pipeline(ip).last_run.run_id
    # displayed while running, then its saved fallback refreshed to the end state
    assert texts[0].startswith("run · running · 4 steps")
    final = [t for t in texts if t.startswith(f"run {run_id} · flagged")]
    assert final and "⚑ flagged" in final[-1] and "×3" in final[-1]


# ---------------------------------------------------------------------------- %conductor timeline


def test_timeline_needs_a_run(ip):
    with pytest.raises(UsageError, match="timeline: nothing has run yet"):
        ip.run_line_magic("conductor", "timeline")


def test_timeline_shows_the_last_run(ip, monkeypatch):
    newsletter(ip)
    view, _ = conductor(ip, "timeline")
    assert isinstance(view, TimelineView)
    # the last run was the stats cell's: its upstream came from the cache, stats ran
    rows, t0, t1 = timeline_rows(view.snapshot)
    assert [r["id"] for r in rows] == ["research", "draft", "translate", "stats"]
    assert {r["id"]: [s[2] for s in r["spans"]] for r in rows} == {
        "research": ["cached"],
        "draft": ["cached"],
        "translate": ["cached"],
        "stats": ["passed"],
    }
    last = pipeline(ip).last_run
    assert last.started <= t0 <= t1 <= last.ended  # not the times of the runs that made the cache

    monkeypatch.setenv("NBCONDUCTOR_OFFLINE_LATENCY", "0.05")  # so the translations overlap
    conductor(ip, "run --force")
    view, _ = conductor(ip, "timeline")
    rows, _, _ = timeline_rows(view.snapshot)
    spans = {r["id"]: [s[2] for s in r["spans"]] for r in rows}
    assert spans == {
        "research": ["passed"],
        "draft": ["flagged"],
        "translate": ["passed"] * 3,
        "stats": ["passed"],
    }
    svg = view._repr_mimebundle_()["image/svg+xml"]
    assert svg.count('class="nbc-attempt"') == 6
    assert 'data-node="translate" data-attempt="3"' in svg
    # the three translations ran at once: one lane each, one above the other
    tops = re.findall(
        r'data-node="translate" data-attempt="\d" data-state="passed" x="[\d.]+" y="([\d.]+)"', svg
    )
    assert len(set(tops)) == 3
    assert (
        view.to_text().splitlines()[0].startswith(f"Timeline · run {pipeline(ip).last_run.run_id}")
    )


def test_timeline_keeps_to_the_steps_of_the_last_run(ip):
    newsletter(ip)
    step(ip, "other", "Something else about {{ topic }}")
    view, _ = conductor(ip, "timeline")
    assert [n["id"] for n in view.snapshot["nodes"]] == ["other"]
    assert view.snapshot["edges"] == []


# ---------------------------------------------------------------------------- %conductor form


def write_notebook(path, params_source, tag=True):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(params_source)
    if tag:
        params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("%load_ext nbconductor"), params]
    nbformat.write(nb, path)
    return path


def test_parameters_come_from_the_tagged_cell_of_the_session_notebook(ip, tmp_path, monkeypatch):
    path = write_notebook(
        tmp_path / "brief.ipynb", 'topic = "from the file"\nwords = 300\ndraft_only = False'
    )
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))  # as Jupyter sets it for the kernel
    fresh(ip)
    ip.run_cell('topic = "edited in the kernel"', store_history=True)
    # current values from the kernel; a name not run yet takes the cell's literal
    assert current_parameters(ip) == {
        "topic": "edited in the kernel",
        "words": 300,
        "draft_only": False,
    }


def test_parameters_session_name_relative_to_the_kernel_directory(ip, tmp_path, monkeypatch):
    write_notebook(tmp_path / "brief.ipynb", 'topic = "x"\nmarkets = ["fr"]')
    monkeypatch.setenv("JPY_SESSION_NAME", "some/dir/brief.ipynb")
    fresh(ip)
    assert list(current_parameters(ip)) == ["topic", "markets"]


def test_parameters_fall_back_to_the_kernel(ip, tmp_path):
    # no notebook file: the latest all-literal cell that sets names the steps read
    ip.run_cell('topic = "pricing pages"\nmarkets = ["fr", "de"]\nwords = 200', store_history=True)
    ip.run_cell("scratch = 1", store_history=True)  # no step reads it
    ip.run_cell("import math\nratio = math.pi", store_history=True)  # not literal
    step(ip, "draft --lazy", "Write {{ words }} words about {{ topic }} for {{ markets }}")
    assert current_parameters(ip) == {
        "topic": "pricing pages",
        "markets": ["fr", "de"],
        "words": 200,
    }
    # an explicit list wins over the guess
    ip.user_ns["__parameters__"] = ["topic"]
    assert current_parameters(ip) == {"topic": "pricing pages"}
    del ip.user_ns["__parameters__"]
    # with no history, the names the steps read that hold plain values
    ip.history_manager.reset()
    ip.user_ns.pop("In", None)
    ip.user_ns["helper"] = object()
    step(ip, "other --lazy", "{{ helper }}")
    assert current_parameters(ip) == {
        "markets": ["fr", "de"],
        "topic": "pricing pages",
        "words": 200,
    }


def test_form_without_parameters_says_how_to_get_them(ip):
    with pytest.raises(UsageError, match="form: no parameters found: tag the cell"):
        ip.run_line_magic("conductor", "form")


def test_form_run_uses_the_new_values(ip, tmp_path, monkeypatch):
    path = write_notebook(tmp_path / "brief.ipynb", PARAMS)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    fresh(ip)
    newsletter(ip)
    form, _ = conductor(ip, "form")
    assert isinstance(form, IntakeForm) and list(form.fields) == ["topic", "markets"]
    assert form.fields["topic"].value == "pricing pages" and form.fields["markets"].value == [
        "fr",
        "de",
        "ja",
    ]
    form.fields["topic"].value = "bakery websites"
    form.fields["markets"].value = ["it", "es"]
    with capture_output() as cap:
        result = form.submit()
    assert form.last_error is None
    assert ip.user_ns["topic"] == "bakery websites"
    assert ip.user_ns["draft"].startswith("[offline:default] Write about bakery websites")
    assert [t[:38] for t in ip.user_ns["translate"]] == [
        "[offline:default] Translate into it: [",
        "[offline:default] Translate into es: [",
    ]
    run = pipeline(ip).last_run
    assert result.data == run.summary() and run.status == "flagged"
    # the run showed its live graph, ending in the final states
    assert any(
        o.data.get("text/plain", "").startswith(f"run {run.run_id} · flagged") for o in cap.outputs
    )


def test_form_run_reports_a_failed_step_in_one_line(ip, tmp_path, monkeypatch):
    path = write_notebook(tmp_path / "brief.ipynb", "n = 1")
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    fresh(ip)
    ip.run_cell("n = 1", store_history=True)
    step(ip, "ratio --python", "10 / n")
    form, _ = conductor(ip, "form")
    form.fields["n"].value = 0
    with capture_output():
        assert form.submit() is None
    assert isinstance(form.last_error, UsageError)
    assert "ratio" in str(form.last_error) and "ZeroDivisionError" in str(form.last_error)
