"""Layered graph layout and static rendering of a run snapshot (pure Python).

Nothing here imports IPython or ipywidgets: the export header, papermill outputs and the
CLI use ``render_svg`` / ``render_text`` without a frontend, and the live widget reuses the
same layout, palette and node captions so both views look alike.

A *snapshot* is the dict the executor produces: ``{"nodes": [...], "edges": [[src, dst], ...],
"run": {...}}`` (see ``GraphWidget``). Layout is Sugiyama-style: layer = topological
generation (longest path from a source), long edges get dummy slots in the layers they cross
so they never run behind a node, and a few barycenter sweeps reduce crossings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .._format import GLYPHS, clip, fmt_cost, fmt_seconds, fmt_tokens, gate_mark
from .._states import CACHED, FAILED, FLAGGED, PASSED, PENDING, RUNNING, SKIPPED

__all__ = [
    "PALETTE",
    "STATES",
    "Layout",
    "box_caption",
    "compute_layout",
    "gate_summary",
    "node_caption",
    "render_svg",
    "render_text",
    "run_summary",
]

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); every
# state also has its own glyph, so colour is never the only cue.
STATES = (PENDING, RUNNING, CACHED, PASSED, FLAGGED, FAILED, SKIPPED)
PALETTE: dict[str, dict[str, str]] = {
    PENDING: {"stroke": "#8C8C8C", "fill": "#F2F2F2", "glyph": GLYPHS[PENDING]},
    RUNNING: {"stroke": "#0072B2", "fill": "#DCEBF5", "glyph": GLYPHS[RUNNING]},
    CACHED: {"stroke": "#56B4E9", "fill": "#E6F4FC", "glyph": GLYPHS[CACHED]},
    PASSED: {"stroke": "#009E73", "fill": "#DDF2EC", "glyph": GLYPHS[PASSED]},
    FLAGGED: {"stroke": "#E69F00", "fill": "#FCF0D6", "glyph": GLYPHS[FLAGGED]},
    FAILED: {"stroke": "#D55E00", "fill": "#F9E3D6", "glyph": GLYPHS[FAILED]},
    SKIPPED: {"stroke": "#B0B0B0", "fill": "#FAFAFA", "glyph": GLYPHS[SKIPPED]},
}

NODE_W, NODE_H = 212.0, 66.0
LAYER_GAP = 64.0  # horizontal space between layers, where edges bend
SLOT_GAP = 18.0  # vertical space between nodes of a layer
DUMMY_H = 10.0  # height of the slot a long edge takes in a layer it crosses
MARGIN = 16.0
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"


@dataclass(frozen=True)
class Layout:
    """Positions of a graph's nodes (top-left corners) and its edges' SVG paths."""

    positions: dict[str, tuple[float, float]]
    layers: list[list[str]]
    edge_paths: dict[tuple[str, str], str] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0
    node_width: float = NODE_W
    node_height: float = NODE_H


def _generations(ids: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(ids)
    g.add_edges_from(edges)
    try:
        gens = [list(gen) for gen in nx.topological_generations(g)]
    except nx.NetworkXUnfeasible:
        # A cycle is the graph model's error to report; still draw something sensible.
        g.remove_edges_from(list(nx.find_cycle(g)))
        return _generations(ids, list(g.edges))
    rank = {n: i for i, n in enumerate(ids)}
    return [sorted(gen, key=rank.__getitem__) for gen in gens]


def _crossings(order: list[list[str]], edges: list[tuple[str, str]], layer_of: dict) -> int:
    """Edge crossings between adjacent layers: per layer pair, the inversions of the segments'
    lower ends once sorted by their upper ends (O(E log E), not the O(E²) pairwise test)."""
    pos = {n: i for layer in order for i, n in enumerate(layer)}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for u, v in edges:
        if layer_of[v] == layer_of[u] + 1:
            by_layer.setdefault(layer_of[u], []).append((pos[u], pos[v]))
    count = 0
    for segs in by_layer.values():
        segs.sort()
        # count pairs a < b with v_a > v_b (equal ends do not cross), with a Fenwick tree
        size = max(v for _, v in segs) + 2
        tree = [0] * (size + 1)
        seen = 0
        for _, v in segs:
            i, not_greater = v + 1, 0
            while i > 0:
                not_greater += tree[i]
                i -= i & -i
            count += seen - not_greater
            i = v + 1
            while i <= size:
                tree[i] += 1
                i += i & -i
            seen += 1
    return count


def _barycenter(order: list[list[str]], edges: list[tuple[str, str]], layer_of: dict) -> None:
    preds: dict[str, list[str]] = {n: [] for layer in order for n in layer}
    succs: dict[str, list[str]] = {n: [] for layer in order for n in layer}
    for u, v in edges:
        succs[u].append(v)
        preds[v].append(u)

    def centred(*layers: list[str]) -> dict[str, float]:
        return {n: i - (len(layer) - 1) / 2 for layer in layers for i, n in enumerate(layer)}

    best, best_c = [list(layer) for layer in order], _crossings(order, edges, layer_of)
    for sweep in range(6):
        down = sweep % 2 == 0
        nbrs = preds if down else succs
        indices = range(1, len(order)) if down else range(len(order) - 2, -1, -1)
        for i in indices:
            # only this layer and the one it is sorted against: O(layer sizes), not O(graph)
            pos = centred(order[i], order[i - 1] if down else order[i + 1])
            bary = {}
            for n in order[i]:
                ns = [pos[m] for m in nbrs[n]]
                bary[n] = sum(ns) / len(ns) if ns else pos[n]  # no neighbours: stay put
            order[i].sort(key=bary.__getitem__)
        c = _crossings(order, edges, layer_of)
        if c < best_c:
            best, best_c = [list(layer) for layer in order], c
        if c == 0:
            break  # nothing left to improve
    order[:] = best


def compute_layout(node_ids: Sequence[str], edges: Iterable[Sequence[str]]) -> Layout:
    """Lay out a DAG left to right in layers.

    Returns a ``Layout``; edges naming unknown nodes are ignored, and a cycle is broken
    rather than raised (the graph model validates graphs, this only draws them).
    """
    ids = list(dict.fromkeys(node_ids))
    known = set(ids)
    real = list(dict.fromkeys((str(u), str(v)) for u, v in edges if u in known and v in known))
    real = [(u, v) for u, v in real if u != v]
    gens = _generations(ids, real)
    layer_of = {n: i for i, gen in enumerate(gens) for n in gen}

    # Split long edges into unit-length segments through dummy slots.
    order = [list(gen) for gen in gens]
    chains: dict[tuple[str, str], list[str]] = {}
    unit: list[tuple[str, str]] = []
    for u, v in real:
        if layer_of[v] < layer_of[u]:  # only after cycle-breaking; draw as a back edge
            chains[(u, v)] = []
            continue
        prev, chain = u, []
        for layer in range(layer_of[u] + 1, layer_of[v]):
            d = f"\0{u}\0{v}\0{layer}"
            order[layer].append(d)
            layer_of[d] = layer
            chain.append(d)
            unit.append((prev, d))
            prev = d
        unit.append((prev, v))
        chains[(u, v)] = chain
    _barycenter(order, unit, layer_of)

    def height(n: str) -> float:
        return DUMMY_H if n.startswith("\0") else NODE_H

    col_h = [sum(height(n) for n in layer) + SLOT_GAP * max(len(layer) - 1, 0) for layer in order]
    total_h = max(col_h, default=0.0)
    top: dict[str, tuple[float, float]] = {}
    for i, layer in enumerate(order):
        x = MARGIN + i * (NODE_W + LAYER_GAP)
        y = MARGIN + (total_h - col_h[i]) / 2
        for n in layer:
            top[n] = (x, y)
            y += height(n) + SLOT_GAP

    paths = {}
    for (u, v), chain in chains.items():
        paths[(u, v)] = _edge_path(top, u, v, chain)
    positions = {n: top[n] for n in ids}
    layers = [[n for n in layer if not n.startswith("\0")] for layer in order]
    width = MARGIN * 2 + len(order) * NODE_W + max(len(order) - 1, 0) * LAYER_GAP
    return Layout(positions, layers, paths, max(width, 0.0), total_h + 2 * MARGIN)


def _edge_path(top: dict, u: str, v: str, chain: list[str]) -> str:
    (ux, uy), (vx, vy) = top[u], top[v]
    points = [(ux + NODE_W, uy + NODE_H / 2)]
    for d in chain:  # pass straight through each dummy slot's column
        dx, dy = top[d]
        points += [(dx, dy + DUMMY_H / 2), (dx + NODE_W, dy + DUMMY_H / 2)]
    end = (vx - 2, vy + NODE_H / 2)  # stop short so the arrowhead tip touches the box
    if end[0] <= points[-1][0]:  # back edge: loop below the boxes
        lo = max(uy, vy) + NODE_H + SLOT_GAP / 2
        (sx, sy) = points[0]
        return f"M{sx:.1f},{sy:.1f} C{sx + 40:.1f},{lo:.1f} {end[0] - 40:.1f},{lo:.1f} {end[0]:.1f},{end[1]:.1f}"
    points.append(end)
    d = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for i in range(1, len(points)):
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        if i % 2 == 0:  # inside a dummy column: straight line
            d += f" L{x1:.1f},{y1:.1f}"
        else:
            mx = (x0 + x1) / 2
            d += f" C{mx:.1f},{y0:.1f} {mx:.1f},{y1:.1f} {x1:.1f},{y1:.1f}"
    return d


# ---------------------------------------------------------------------------- captions


def node_caption(node: Mapping[str, Any]) -> dict[str, str]:
    """Return the short texts a node box shows: ``title``, ``subtitle``, ``metrics``, ``badge``."""
    attempts = node.get("attempts")
    metrics = []
    if attempts:
        metrics.append(f"{attempts} attempt" + ("s" if attempts != 1 else ""))
    for text in (
        fmt_tokens(
            node.get("tokens"), short=True, unknown="", estimated=bool(node.get("tokens_estimated"))
        ),
        fmt_cost(node.get("cost"), unknown=""),
    ):
        if text:
            metrics.append(text)
    items = node.get("items")
    return {
        "title": str(node.get("label") or node.get("id")),
        "subtitle": str(node.get("model") or node.get("kind") or ""),
        "metrics": " · ".join(metrics),
        "badge": f"×{items}" if items is not None else "",
    }


def gate_summary(gate: Mapping[str, Any]) -> str:
    """Return a gate result as ``rubric ✓ 0.86`` (name, pass/fail glyph, score if any)."""
    mark = gate_mark(gate.get("passed"))
    score = gate.get("score")
    return f"{gate.get('name', 'gate')} {mark}" + (
        f" {float(score):.2f}" if score is not None else ""
    )


def _fit(text: str, px: float, size: float) -> str:
    """Truncate ``text`` to roughly ``px`` pixels at font ``size`` (no font metrics here)."""
    return clip(text, max(int(px / (size * 0.55)), 3))


# ---------------------------------------------------------------------------- SVG


def _state(node: Mapping[str, Any]) -> str:
    state = node.get("state") or PENDING
    return state if state in PALETTE else PENDING


def run_summary(run: Mapping[str, Any]) -> str:
    """Return a one-line run summary: ``run r-1 · running · 412 tokens · $0.0031``."""
    parts = [f"run {run['id']}" if run.get("id") else "run"]
    if run.get("status"):
        parts.append(str(run["status"]))
    if run.get("tokens") is not None:
        parts.append(f"{int(run['tokens'])} tokens")
    if run.get("cost") is not None:
        parts.append(fmt_cost(run["cost"]))
    return " · ".join(parts)


def box_caption(node: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``node_caption`` truncated to fit a node box, the badge width and a tooltip."""
    cap = node_caption(node)
    badge_w = 10 + 7 * len(cap["badge"]) if cap["badge"] else 0
    return {
        "title": _fit(cap["title"], NODE_W - 40 - badge_w, 13),
        "subtitle": _fit(cap["subtitle"], NODE_W - 24, 11),
        "metrics": _fit(cap["metrics"], NODE_W - 24, 11),
        "badge": cap["badge"],
        "badge_w": badge_w,
        "tooltip": _tooltip(node, _state(node)),
    }


def _tooltip(node: Mapping[str, Any], state: str) -> str:
    cap = node_caption(node)
    head = f"{cap['title']} {cap['badge']}".strip() + f" — {state}"
    return "\n".join(t for t in (head, cap["subtitle"], cap["metrics"]) if t)


def _svg_node(node: Mapping[str, Any], x: float, y: float, selected: bool) -> str:
    state = _state(node)
    colours = PALETTE[state]
    cap = box_caption(node)
    nid = escape(str(node["id"]))
    dash = ' stroke-dasharray="5 3"' if state in (SKIPPED, PENDING) else ""
    width = 3 if selected else 1.5
    out = [
        f'<g class="nbc-node" data-node="{nid}" data-state="{state}" '
        f'transform="translate({x:.1f},{y:.1f})">',
        f"<title>{escape(cap['tooltip'])}</title>",
        f'<rect width="{NODE_W:.0f}" height="{NODE_H:.0f}" rx="8" fill="{colours["fill"]}" '
        f'stroke="{colours["stroke"]}" stroke-width="{width}"{dash}/>',
        f'<rect width="5" height="{NODE_H - 12:.0f}" x="5" y="6" rx="2.5" fill="{colours["stroke"]}"/>',
        f'<text x="18" y="22" font-size="13" font-weight="600" fill="#1B1B1B">'
        f"{escape(cap['title'])}</text>",
        f'<text x="{NODE_W - 10:.0f}" y="22" font-size="14" text-anchor="end" '
        f'fill="{colours["stroke"]}">{colours["glyph"]}</text>',
        f'<text x="18" y="39" font-size="11" fill="#4A4A4A">{escape(cap["subtitle"])}</text>',
        f'<text x="18" y="56" font-size="11" fill="#4A4A4A">{escape(cap["metrics"])}</text>',
    ]
    if cap["badge"]:
        bw = cap["badge_w"]
        bx = NODE_W - 28 - bw
        out.append(
            f'<rect x="{bx:.0f}" y="9" width="{bw}" height="17" rx="8.5" fill="#FFFFFF" '
            f'stroke="{colours["stroke"]}"/><text x="{bx + bw / 2:.0f}" y="22" '
            f'font-size="11" text-anchor="middle" fill="#1B1B1B">{escape(cap["badge"])}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _svg_legend(y: float) -> tuple[str, float]:
    parts, x = [], MARGIN
    for state in STATES:
        c = PALETTE[state]
        parts.append(
            f'<g class="nbc-legend-item" data-state="{state}" transform="translate({x:.0f},{y:.0f})">'
            f'<rect width="14" height="14" rx="3" fill="{c["fill"]}" stroke="{c["stroke"]}" '
            f'stroke-width="1.5"/><text x="7" y="11" font-size="10" text-anchor="middle" '
            f'fill="{c["stroke"]}">{c["glyph"]}</text>'
            f'<text x="19" y="11" font-size="11" fill="#4A4A4A">{state}</text></g>'
        )
        x += 26 + 6.5 * len(state) + 12
    return "".join(parts), x


def render_svg(
    snapshot: Mapping[str, Any], *, layout: Layout | None = None, selected: str | None = None
) -> str:
    """Return a standalone SVG document of the snapshot's graph, with a run line and legend.

    Every node is a ``<g data-node=ID data-state=STATE>``; all text is XML-escaped.
    Pass ``layout`` to reuse one computed earlier for the same nodes and edges.
    """
    nodes = list(snapshot.get("nodes") or [])
    edges = [tuple(e) for e in snapshot.get("edges") or []]
    if layout is None:
        layout = compute_layout([n["id"] for n in nodes], edges)
    legend, legend_w = _svg_legend(30)
    head = 56.0
    width = max(layout.width, legend_w + MARGIN, 320.0)
    height = head + max(layout.height, NODE_H + 2 * MARGIN)
    summary = run_summary(snapshot.get("run") or {})
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="nbc-graph-static" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'font-family="{escape(FONT)}">',
        "<defs>"
        + "".join(
            f'<marker id="nbc-arrow{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
            'markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{fill}"/></marker>'
            for kind, fill in (("", "#8A8A8A"), ("-hot", "#1B1B1B"))
        )
        + "</defs>",
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#FFFFFF"/>',
        f'<text x="{MARGIN:.0f}" y="20" font-size="13" font-weight="600" fill="#1B1B1B">'
        f"{escape(summary)}</text>",
        legend,
        f'<g transform="translate(0,{head:.0f})">',
    ]
    for (u, v), d in layout.edge_paths.items():
        hot = selected is not None and selected in (u, v)
        out.append(
            f'<path class="nbc-edge" data-source="{escape(u)}" data-target="{escape(v)}" '
            f'd="{d}" fill="none" stroke="{"#1B1B1B" if hot else "#8A8A8A"}" '
            f'stroke-width="{2 if hot else 1.4}" marker-end="url(#nbc-arrow{"-hot" if hot else ""})"/>'
        )
    for node in nodes:
        x, y = layout.positions.get(node["id"], (MARGIN, MARGIN))
        out.append(_svg_node(node, x, y, node["id"] == selected))
    out.append("</g></svg>")
    return "".join(out)


# ---------------------------------------------------------------------------- text


def render_text(snapshot: Mapping[str, Any]) -> str:
    """Return a plain-text summary of the snapshot: one line per step, in layer order."""
    nodes = {n["id"]: n for n in snapshot.get("nodes") or []}
    edges = [tuple(e) for e in snapshot.get("edges") or []]
    ups: dict[str, list[str]] = {n: [] for n in nodes}
    for u, v in edges:
        if v in ups and u in nodes:
            ups[v].append(u)
    lines = [run_summary(snapshot.get("run") or {}) + f" · {len(nodes)} steps"]
    if not nodes:
        return lines[0]
    gens = _generations(list(nodes), [(u, v) for u, v in edges if u in nodes and v in nodes])
    w = max(len(str(n.get("label") or i)) for i, n in nodes.items())
    for layer, gen in enumerate(gens, 1):
        for nid in gen:
            node = nodes[nid]
            cap = node_caption(node)
            state = _state(node)
            cols = [
                f"{layer:>2}",
                f"{cap['title']:<{w}}",
                f"{PALETTE[state]['glyph']} {state:<7}",
                cap["subtitle"],
            ]
            cols += [
                t for t in (cap["badge"], cap["metrics"], fmt_seconds(node.get("latency"))) if t
            ]
            cols += [gate_summary(g) for g in node.get("gates") or []]
            if ups[nid]:
                cols.append("← " + ", ".join(ups[nid]))
            lines.append("  ".join(cols).rstrip())
            if node.get("error"):
                lines.append(" " * 4 + "error: " + str(node["error"]).splitlines()[0][:200])
    return "\n".join(lines)
