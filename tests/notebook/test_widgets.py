"""Widget state logic: layout, static SVG/text, GraphWidget traitlets, form, timeline."""

from __future__ import annotations

import ipywidgets as w
import pytest
from snapshots import PNG_1PX, node

from nbconductor.notebook.widgets.form import IntakeForm, field_for
from nbconductor.notebook.widgets.graph import GraphWidget, markdown_to_html
from nbconductor.render import _layout

# ---------------------------------------------------------------------------- static views


# ---------------------------------------------------------------------------- GraphWidget


def test_graph_widget_traitlets_follow_update(snapshot, monkeypatch):
    calls = []
    real = _layout.compute_layout
    monkeypatch.setattr(
        "nbconductor.notebook.widgets.graph.compute_layout", lambda *a: calls.append(a) or real(*a)
    )
    g = GraphWidget(snapshot)
    assert [n["id"] for n in g.nodes] == [n["id"] for n in snapshot["nodes"]]
    assert all({"x", "y", "w", "h", "caption"} <= set(n) for n in g.nodes)
    assert {(e["source"], e["target"]) for e in g.edges} == {tuple(e) for e in snapshot["edges"]}
    assert g.run["summary"].startswith("run r-42")
    assert "prompt" not in g.nodes[0]  # big fields stay in Python until selected

    seen = []
    g.observe(lambda ch: seen.append(ch["name"]), names=["nodes", "edges"])
    snapshot["nodes"][3]["state"] = "passed"
    g.update(snapshot)
    assert len(calls) == 1, "a state change must not recompute the layout"
    assert seen == ["nodes"]
    assert next(n for n in g.nodes if n["id"] == "translate")["state"] == "passed"

    snapshot["nodes"].append(node("publish"))
    snapshot["edges"].append(["stats", "publish"])
    g.update(snapshot)
    assert len(calls) == 2
    assert "edges" in seen


def test_selecting_a_node_sets_detail(snapshot):
    g = GraphWidget(snapshot)
    assert g.detail == {}
    g.selected = "draft"  # what the browser does on click
    d = g.detail
    assert d["id"] == "draft" and d["state"] == "flagged"
    assert ["Model", "offline:writer"] in d["facts"] and ["Cost", "$0.0031"] in d["facts"]
    assert d["gates"] == [
        {"name": "rubric", "passed": False, "score": "0.62", "feedback": "Too long"}
    ]
    assert d["prompt"] == "Write about <topic>"
    assert "<h1>Issue 1</h1>" in d["output_html"] and "<strong>world</strong>" in d["output_html"]
    assert "<script>" not in d["output_html"] and "&lt;script&gt;" in d["output_html"]

    g.select("research")
    assert g.detail["output_text"].startswith('[\n  {\n    "name": "Acme"')
    g.select("image")
    assert g.detail["error"] == "RateLimitError: 429"
    g.select("cover")
    assert g.detail["image_src"] == "data:image/png;base64," + PNG_1PX
    with pytest.raises(KeyError, match="no step 'nope'.*research"):
        g.select("nope")
    g.select(None)
    assert g.selected == "" and g.detail == {}


def test_detail_follows_live_updates_and_removed_nodes(snapshot):
    g = GraphWidget(snapshot)
    g.select("stats")
    assert g.detail["output_text"] is None
    snapshot["nodes"][5].update(state="passed", output="done", output_kind="text")
    g.update(snapshot)
    assert g.detail["output_text"] == "done" and g.detail["state"] == "passed"
    snapshot["nodes"].pop(5)
    g.update(snapshot)
    assert g.selected == "" and g.detail == {}


def test_graph_mimebundle_has_widget_svg_and_text(snapshot):
    data, _ = GraphWidget(snapshot)._repr_mimebundle_()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert 'data-node="draft"' in data["image/svg+xml"]
    assert data["text/plain"].startswith("run r-42")


def test_display_handle_refreshed_when_run_finishes(snapshot):
    class Handle:
        updates = 0

        def update(self, obj):
            Handle.updates += 1

    g = GraphWidget(snapshot)
    g._handle = Handle()
    g.update(snapshot)
    assert Handle.updates == 0
    snapshot["run"]["status"] = "done"
    g.update(snapshot)
    g.update(snapshot)
    assert Handle.updates == 1


def test_markdown_is_safe_and_covers_the_basics():
    html = markdown_to_html(
        "## Plan\n\n- one *a*\n- two `<x>`\n\n1. first\n2. second\n\n"
        "```\n<b>code</b>\n```\n\n> quoted\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "[ok](https://example.com/?a=1&b=2) [bad](javascript:alert(1)) <img src=x onerror=y>"
    )
    assert "<h2>Plan</h2>" in html
    assert "<ul><li>one <em>a</em></li><li>two <code>&lt;x&gt;</code></li></ul>" in html
    assert "<ol><li>first</li><li>second</li></ol>" in html
    assert "<pre><code>&lt;b&gt;code&lt;/b&gt;</code></pre>" in html
    assert "<blockquote><p>quoted</p></blockquote>" in html
    assert "<th>a</th>" in html and "<td>2</td>" in html
    assert '<a href="https://example.com/?a=1&amp;b=2"' in html
    assert "javascript:" not in html.split("href=")[-1].split(">")[0]
    assert "<img" not in html and "&lt;img src=x onerror=y&gt;" in html


# ---------------------------------------------------------------------------- form


def test_form_builds_typed_fields():
    form = IntakeForm(
        {"topic": "AI", "brief": "x" * 100, "words": 400, "temperature": 0.3, "draft_only": False,
         "markets": ["fr", "de"], "notes": None, "weights": {"a": 1}}
    )  # fmt: skip
    kinds = {name: type(f) for name, f in form.fields.items()}
    assert kinds == {
        "topic": w.Text, "brief": w.Textarea, "words": w.IntText, "temperature": w.FloatText,
        "draft_only": w.Checkbox, "markets": w.TagsInput, "notes": w.Text, "weights": w.Textarea,
    }  # fmt: skip
    assert form.values() == {
        "topic": "AI", "brief": "x" * 100, "words": 400, "temperature": 0.3, "draft_only": False,
        "markets": ["fr", "de"], "notes": None, "weights": {"a": 1},
    }  # fmt: skip
    assert isinstance(field_for(True), w.Checkbox)  # not IntText: bool is an int


def test_run_button_calls_on_run_with_typed_values():
    got = []
    form = IntakeForm({"topic": "AI", "words": 400, "markets": ["fr"], "urgent": False},
                      on_run=lambda p: got.append(p) or "queued")  # fmt: skip
    form.fields["topic"].value = "Pricing pages"
    form.fields["words"].value = 250
    form.fields["markets"].value = ["fr", "ja"]
    form.fields["urgent"].value = True
    form.run_button.click()
    assert got == [
        {"topic": "Pricing pages", "words": 250, "markets": ["fr", "ja"], "urgent": True}
    ]
    assert form.last_result == "queued" and form.last_error is None
    assert "done" in form.status.value and not form.run_button.disabled


def test_run_errors_show_in_output():
    def boom(params):
        raise ValueError("topic is empty")

    form = IntakeForm({"topic": ""}, on_run=boom)
    form.run_button.click()
    assert isinstance(form.last_error, ValueError)
    assert "ValueError: topic is empty" in "".join(o.get("text", "") for o in form.output.outputs)
    assert "ValueError" in form.status.value and not form.run_button.disabled

    bad = IntakeForm({"weights": {"a": 1}}, on_run=lambda p: p)
    bad.fields["weights"].value = "{not json"
    bad.run_button.click()
    assert "parameter 'weights' must be JSON" in str(bad.last_error)


def test_form_mimebundle_has_text_fallback():
    data, _ = IntakeForm({"topic": "AI", "n": 3})._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "topic = 'AI'" in data["text/plain"] and "n     = 3" in data["text/plain"]
