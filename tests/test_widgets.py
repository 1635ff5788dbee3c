"""Widget state logic: layout, static SVG/text, GraphWidget traitlets, form, timeline."""

from __future__ import annotations

import base64
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import ipywidgets as w
import pytest

from nbconductor.notebook.widgets.form import IntakeForm, field_for
from nbconductor.notebook.widgets.graph import GraphWidget, markdown_to_html
from nbconductor.render import _layout
from nbconductor.render._layout import PALETTE, compute_layout, render_svg, render_text
from nbconductor.render.timeline import TimelineView, render_timeline_svg, render_timeline_text

SVG_NS = "{http://www.w3.org/2000/svg}"
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cf000001010100186dd8d60000000049454e44ae426082"
    )
).decode()


def node(nid: str, state: str = "pending", **extra) -> dict:
    base = {
        "id": nid, "label": nid, "kind": "llm", "state": state, "model": None,
        "attempts": None, "tokens": None, "cost": None, "latency": None, "items": None,
        "gates": [], "prompt": None, "output": None, "output_kind": "none", "image_b64": None,
        "error": None, "started": None, "ended": None, "attempt_spans": [],
    }  # fmt: skip
    return {**base, **extra}


@pytest.fixture
def snapshot() -> dict:
    t = 1732170000.0
    return {
        "nodes": [
            node("research", "passed", model="offline:fast", attempts=1, tokens=120, cost=0.001,
                 latency=1.2, output='[{"name": "Acme", "angle": "price"}]', output_kind="json",
                 started=t, ended=t + 1.2, attempt_spans=[[t, t + 1.2, "passed"]]),
            node("draft", "flagged", model="offline:writer", attempts=2, tokens=412, cost=0.0031,
                 latency=1.24, prompt="Write about <topic>",
                 output="# Issue 1\n\nHello **world** <script>alert(1)</script>",
                 output_kind="markdown",
                 gates=[{"name": "rubric", "passed": False, "score": 0.62, "feedback": "Too long"}],
                 started=t + 1.3, ended=t + 2.5,
                 attempt_spans=[[t + 1.3, t + 1.8, "failed"], [t + 1.9, t + 2.5, "flagged"]]),
            node("image", "failed", kind="image", error="RateLimitError: 429", attempts=3,
                 started=t + 1.3, ended=t + 2.0,
                 attempt_spans=[[t + 1.3, t + 1.5, "failed"], [t + 1.55, t + 1.7, "failed"],
                                [t + 1.75, t + 2.0, "failed"]]),
            node("translate", "running", model="offline:fast", items=12, attempts=1,
                 started=t + 2.6, attempt_spans=[[t + 2.6, None, "running"]]),
            node("cover", "cached", kind="image", output_kind="image", image_b64=PNG_1PX),
            node("stats", "pending", kind="python"),
            node("unused", "skipped", kind="python"),
        ],
        "edges": [["research", "draft"], ["research", "image"], ["draft", "translate"],
                  ["translate", "stats"], ["research", "stats"], ["image", "cover"]],
        "run": {"id": "r-42", "status": "running", "cost": 0.0041, "tokens": 532},
    }  # fmt: skip


def boxes_overlap(a: tuple, b: tuple, w: float, h: float) -> bool:
    return abs(a[0] - b[0]) < w and abs(a[1] - b[1]) < h


# ---------------------------------------------------------------------------- layout


def test_layers_are_topological_generations():
    lay = compute_layout(
        ["a", "b", "c", "d", "e"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d")]
    )
    assert [sorted(layer) for layer in lay.layers] == [["a", "e"], ["b", "c"], ["d"]]
    xs = {n: lay.positions[n][0] for n in "abcde"}
    assert xs["a"] == xs["e"] < xs["b"] == xs["c"] < xs["d"]


def test_barycenter_untangles_declared_order():
    # Declared order puts b2 above b1, which would cross a1->b1 with a2->b2.
    lay = compute_layout(["a1", "a2", "b2", "b1"], [("a1", "b1"), ("a2", "b2")])
    assert lay.positions["b1"][1] < lay.positions["b2"][1]


def test_long_edge_goes_through_a_dummy_slot_not_a_node():
    lay = compute_layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    path = lay.edge_paths[("a", "c")]
    assert " L" in path  # straight run through the dummy slot in b's layer
    # the dummy slot is beside b, so the straight run is not inside b's box
    y_run = float(re.search(r" L[\d.]+,([\d.]+)", path)[1])
    bx, by = lay.positions["b"]
    assert not (by <= y_run <= by + lay.node_height)


def test_fifty_nodes_do_not_overlap():
    rng = random.Random(7)
    ids = [f"step_{i}" for i in range(50)]
    edges = [(ids[i], ids[j]) for j in range(1, 50) for i in rng.sample(range(j), k=min(j, 2))]
    lay = compute_layout(ids, edges)
    pos = list(lay.positions.values())
    assert len(pos) == 50
    for i in range(50):
        for j in range(i + 1, 50):
            assert not boxes_overlap(pos[i], pos[j], lay.node_width, lay.node_height)
    assert all(0 <= x and x + lay.node_width <= lay.width for x, _ in pos)
    assert all(0 <= y and y + lay.node_height <= lay.height for _, y in pos)


def test_cycles_and_unknown_edges_do_not_crash():
    lay = compute_layout(["a", "b"], [("a", "b"), ("b", "a"), ("a", "ghost")])
    assert set(lay.positions) == {"a", "b"}


# ---------------------------------------------------------------------------- static views


def test_svg_shows_every_node_with_its_state_colour(snapshot):
    svg = render_svg(snapshot)
    root = ET.fromstring(svg)  # well-formed XML, so escaping worked
    groups = {g.get("data-node"): g for g in root.iter(f"{SVG_NS}g") if g.get("data-node")}
    assert set(groups) == {n["id"] for n in snapshot["nodes"]}
    for n in snapshot["nodes"]:
        g = groups[n["id"]]
        assert g.get("data-state") == n["state"]
        rect = g.find(f"{SVG_NS}rect")
        assert rect.get("fill") == PALETTE[n["state"]]["fill"]
        assert rect.get("stroke") == PALETTE[n["state"]]["stroke"]
    texts = "".join(t.text or "" for t in root.iter(f"{SVG_NS}text"))
    assert "×12" in texts and "offline:writer" in texts and "$0.0031" in texts
    assert "2 attempts" in texts
    legend = {
        g.get("data-state") for g in root.iter(f"{SVG_NS}g") if "legend" in (g.get("class") or "")
    }
    assert legend == set(PALETTE)
    assert len([p for p in root.iter(f"{SVG_NS}path") if p.get("data-source")]) == 6


def test_svg_escapes_text():
    snap = {"nodes": [node('<b onclick="x">&', "passed", model="m<1>")], "edges": [], "run": {}}
    svg = render_svg(snap)
    ET.fromstring(svg)
    assert "<b onclick" not in svg and "&lt;b onclick=&quot;x&quot;&gt;&amp;" in svg


def test_text_summary(snapshot):
    text = render_text(snapshot)
    assert text.startswith("run r-42 · running · 532 tokens · $0.0041 · 7 steps")
    line = next(li for li in text.splitlines() if " draft " in li)
    assert "flagged" in line and "rubric ✕ 0.62" in line and "← research" in line
    assert "error: RateLimitError: 429" in text


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


# ---------------------------------------------------------------------------- timeline


def test_timeline_has_one_bar_per_attempt(snapshot):
    root = ET.fromstring(render_timeline_svg(snapshot))
    bars = [r for r in root.iter(f"{SVG_NS}rect") if r.get("class") == "nbc-attempt"]
    per_node = {}
    for bar in bars:
        per_node.setdefault(bar.get("data-node"), []).append(bar)
    assert {k: len(v) for k, v in per_node.items()} == {
        "research": 1,
        "draft": 2,
        "image": 3,
        "translate": 1,
    }
    assert [b.get("data-state") for b in per_node["draft"]] == ["failed", "flagged"]
    assert [b.get("data-attempt") for b in per_node["image"]] == ["1", "2", "3"]
    assert per_node["draft"][0].get("fill") == PALETTE["failed"]["fill"]
    # parallel steps overlap in time: draft and image both start at +1.3 s
    assert float(per_node["draft"][0].get("x")) == float(per_node["image"][0].get("x"))


def test_timeline_view_text_and_bundle(snapshot):
    text = render_timeline_text(snapshot)
    assert text.splitlines()[0].startswith("Timeline · run r-42 · 2.60 s wall · peak 2 in parallel")
    assert any(li.startswith("draft") and "2 attempts" in li for li in text.splitlines())
    assert any(li.startswith("stats") and li.endswith("pending") for li in text.splitlines())
    view = TimelineView(snapshot)
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"image/svg+xml", "text/plain"}
    view.update({"nodes": [], "edges": [], "run": {}})
    ET.fromstring(view.to_svg())
    assert view.to_text().startswith("Timeline")


def test_static_modules_do_not_import_ipywidgets():
    code = (
        "import sys, nbconductor.render._layout, nbconductor.render.timeline;"
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
