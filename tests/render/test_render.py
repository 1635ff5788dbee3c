"""The pure renderers (`nbconductor.render`): graph layout, static SVG and text, the timeline."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from snapshots import SVG_NS, node

from nbconductor.render._layout import PALETTE, compute_layout, render_svg, render_text
from nbconductor.render.timeline import TimelineView, render_timeline_svg, render_timeline_text


def boxes_overlap(a: tuple, b: tuple, w: float, h: float) -> bool:
    return abs(a[0] - b[0]) < w and abs(a[1] - b[1]) < h


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
