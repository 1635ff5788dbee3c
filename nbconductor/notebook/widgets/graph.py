"""The live step-graph widget (anywidget) and its inspector content.

``GraphWidget(snapshot)`` draws the run snapshot the executor produces::

    {"nodes": [{"id", "label", "kind", "state", "model", "attempts", "tokens", "cost",
                "latency", "items", "gates", "prompt", "output", "output_kind",
                "image_b64", "error", "started", "ended", "attempt_spans"}, ...],
     "edges": [[upstream, downstream], ...],
     "run": {"id", "status", "cost", "tokens"}}

Layout is computed in Python (``_layout.compute_layout``) and only when the set of nodes or
edges changes; state changes only resend the small per-node summaries. Prompts and outputs
stay in Python until a node is selected: then ``detail`` carries that node's inspector
content, with Markdown already rendered to HTML from escaped text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..._format import fmt_cost, fmt_seconds
from ..._states import PENDING, RUNNING
from ...render._layout import (
    NODE_H,
    NODE_W,
    PALETTE,
    STATES,
    Layout,
    box_caption,
    compute_layout,
    render_svg,
    render_text,
    run_summary,
)

__all__ = ["GraphWidget", "markdown_to_html", "node_detail"]

_HERE = Path(__file__).parent
_LIVE = {None, "", PENDING, "queued", "starting", RUNNING}


class GraphWidget(anywidget.AnyWidget):
    """A live, clickable step graph of one run.

    ``update(snapshot)`` refreshes it (cheap; call it on every state change). Clicking a
    node sets ``selected`` from the browser; ``detail`` then holds that node's inspector
    content. Displayed, it also carries a static SVG and a text summary, which is what
    papermill outputs, nbviewer and GitHub show.
    """

    _esm = _HERE / "graph.js"
    _css = _HERE / "graph.css"

    nodes = traitlets.List(help="per-node summaries with box position x, y, w, h").tag(sync=True)
    edges = traitlets.List(help="[{source, target, path}] with SVG path data").tag(sync=True)
    run = traitlets.Dict(help="the snapshot's run dict, plus a one-line summary").tag(sync=True)
    size = traitlets.Dict({"width": 0, "height": 0}).tag(sync=True)
    palette = traitlets.Dict(help="state -> {stroke, fill, glyph}").tag(sync=True)
    selected = traitlets.Unicode("", help="id of the node open in the inspector").tag(sync=True)
    detail = traitlets.Dict(help="inspector content of the selected node").tag(sync=True)

    def __init__(self, snapshot: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._snapshot: dict[str, Any] = {"nodes": [], "edges": [], "run": {}}
        self._by_id: dict[str, Mapping[str, Any]] = {}
        self._structure: tuple | None = None
        self._layout: Layout | None = None
        self._payload: list[dict[str, Any]] = []
        self._slot: dict[str, int] = {}
        self._handle: Any = None
        super().__init__(palette={s: dict(PALETTE[s]) for s in STATES}, **kwargs)
        if snapshot is not None:
            self.update(snapshot)

    # -- state ---------------------------------------------------------------------------

    def update(self, snapshot: Mapping[str, Any]) -> None:
        """Show ``snapshot``; re-lay out only if its nodes or edges differ from the last one."""
        nodes = list(snapshot.get("nodes") or [])
        edges = [(str(e[0]), str(e[1])) for e in snapshot.get("edges") or []]
        run = dict(snapshot.get("run") or {})
        previous_status = (self._snapshot.get("run") or {}).get("status")
        self._snapshot = {"nodes": nodes, "edges": edges, "run": run}
        self._by_id = {str(n["id"]): n for n in nodes}

        structure = (tuple(self._by_id), tuple(sorted(set(edges))))
        relayout = structure != self._structure
        if relayout:
            self._structure = structure
            self._layout = _cached_layout(structure, list(self._by_id), edges)
        self._payload = [self._item(node) for node in nodes]
        self._slot = {item["id"]: i for i, item in enumerate(self._payload)}

        with self.hold_sync():
            if relayout:
                layout = self._layout
                self.edges = [
                    {"source": u, "target": v, "path": d} for (u, v), d in layout.edge_paths.items()
                ]
                self.size = {"width": layout.width, "height": layout.height}
            self.nodes = list(self._payload)
            self.run = {**run, "summary": run_summary(run)}
            if self.selected and self.selected not in self._by_id:
                self.selected = ""
            self.detail = self._detail(self.selected)
        self._refresh_static(previous_status)

    def patch(self, nodes: list[Mapping[str, Any]], run: Mapping[str, Any] | None = None) -> None:
        """Replace the nodes with these ids (and the run line), keeping the layout: the cost is
        that of the changed nodes, not of the graph. Unknown ids are ignored."""
        previous_status = (self._snapshot.get("run") or {}).get("status")
        all_nodes = self._snapshot["nodes"]
        changed = False
        for node in nodes:
            nid = str(node["id"])
            i = self._slot.get(nid)
            if i is None:
                continue
            all_nodes[i] = node
            self._by_id[nid] = node
            self._payload[i] = self._item(node)
            changed = True
        with self.hold_sync():
            if changed:
                self.nodes = list(self._payload)
            if run is not None:
                self._snapshot["run"] = dict(run)
                self.run = {**run, "summary": run_summary(run)}
            if self.selected:
                self.detail = self._detail(self.selected)
        self._refresh_static(previous_status)

    def _item(self, node: Mapping[str, Any]) -> dict[str, Any]:
        nid = str(node["id"])
        assert self._layout is not None
        x, y = self._layout.positions[nid]
        state = node.get("state") if node.get("state") in PALETTE else PENDING
        item = {k: node.get(k) for k in _SUMMARY_KEYS}
        item.update(id=nid, state=state, x=x, y=y, w=NODE_W, h=NODE_H)
        item["label"] = str(node.get("label") or nid)
        item["caption"] = box_caption(node)
        return item

    def _refresh_static(self, previous_status: Any) -> None:
        status = (self._snapshot.get("run") or {}).get("status")
        if self._handle is not None and status != previous_status and status not in _LIVE:
            # Refresh the static SVG kept in the notebook, so saved outputs show the end state.
            self._handle.update(self)

    def select(self, node_id: str | None) -> None:
        """Open ``node_id`` in the inspector (``None`` closes it); raises KeyError if unknown."""
        if node_id and node_id not in self._by_id:
            known = ", ".join(self._by_id) or "none"
            raise KeyError(f"no step {node_id!r} in this graph (steps: {known})")
        self.selected = node_id or ""

    @traitlets.observe("selected")
    def _on_selected(self, change: dict) -> None:
        self.detail = self._detail(change["new"])

    def _detail(self, node_id: str) -> dict[str, Any]:
        node = self._by_id.get(node_id) if node_id else None
        if node is None:
            return {}
        edges = self._snapshot["edges"]
        return node_detail(
            node,
            upstream=[u for u, v in edges if v == node_id],
            downstream=[v for u, v in edges if u == node_id],
        )

    # -- display -------------------------------------------------------------------------

    def show(self) -> Any:
        """Display the widget and return its display handle.

        Shown this way, the static SVG fallback stored in the notebook is refreshed when the
        run reaches a final status, so papermill output notebooks show how the run ended.
        """
        from IPython.display import display

        self._handle = display(self, display_id=True)
        return self._handle

    def to_svg(self) -> str:
        """Return the current graph as a standalone SVG document."""
        return render_svg(self._snapshot, layout=self._layout, selected=self.selected or None)

    def to_text(self) -> str:
        """Return the current graph as a plain-text summary."""
        return render_text(self._snapshot)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict, dict]:
        # ipywidgets/anywidget give the widget-view mime type; the SVG and text ride along
        # for every frontend that cannot run the widget.
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = {**data, "text/plain": self.to_text()}
        starting = (self._snapshot.get("run") or {}).get("status") == RUNNING and all(
            item["state"] == PENDING for item in self._payload
        )
        if not starting:
            # A live run's all-pending start has no static SVG: the widget view draws the run,
            # and `show` puts the SVG in when the run ends.
            data["image/svg+xml"] = self.to_svg()
        return data, metadata


_SUMMARY_KEYS = ("kind", "model", "attempts", "tokens", "cost", "latency", "items")

# Every `%conductor run` and `graph` makes a widget for the same graph: lay each shape out once.
_LAYOUTS: dict[tuple, Layout] = {}


def _cached_layout(structure: tuple, ids: list[str], edges: list[tuple[str, str]]) -> Layout:
    layout = _LAYOUTS.pop(structure, None) or compute_layout(ids, edges)
    _LAYOUTS[structure] = layout  # most recent last
    while len(_LAYOUTS) > 8:
        del _LAYOUTS[next(iter(_LAYOUTS))]
    return layout


# ---------------------------------------------------------------------------- inspector


def node_detail(
    node: Mapping[str, Any], upstream: list[str] | None = None, downstream: list[str] | None = None
) -> dict[str, Any]:
    """Return the inspector content for one snapshot node (JSON-safe, HTML pre-escaped)."""
    state = node.get("state") if node.get("state") in PALETTE else PENDING
    facts = [
        ("Kind", node.get("kind")),
        ("Model", node.get("model")),
        ("Items", node.get("items")),
        ("Attempts", node.get("attempts")),
        ("Tokens", node.get("tokens")),
        ("Cost", fmt_cost(node.get("cost"), unknown="") or None),
        ("Latency", fmt_seconds(node.get("latency")) or None),
        ("Upstream", ", ".join(upstream or []) or None),
        ("Downstream", ", ".join(downstream or []) or None),
    ]
    kind = node.get("output_kind") or ("none" if node.get("output") is None else "text")
    detail: dict[str, Any] = {
        "id": str(node["id"]),
        "label": str(node.get("label") or node["id"]),
        "state": state,
        "facts": [[k, str(v)] for k, v in facts if v is not None and v != ""],
        "gates": [
            {
                "name": str(g.get("name", "gate")),
                "passed": bool(g.get("passed")),
                "score": None if g.get("score") is None else f"{float(g['score']):.2f}",
                "feedback": str(g.get("feedback") or ""),
            }
            for g in node.get("gates") or []
        ],
        "prompt": None if node.get("prompt") is None else str(node["prompt"]),
        "error": None if node.get("error") is None else str(node["error"]),
        "output_kind": kind,
        "output_html": None,
        "output_text": None,
        "image_src": None,
    }
    output = node.get("output")
    b64 = node.get("image_b64")
    if kind == "image" and isinstance(b64, str) and _BASE64.fullmatch(b64):
        detail["image_src"] = "data:image/png;base64," + re.sub(r"\s+", "", b64)
    elif kind == "markdown" and output is not None:
        detail["output_html"] = markdown_to_html(str(output))
    elif kind == "json" and output is not None:
        detail["output_text"] = _pretty_json(output)
    elif output is not None and kind != "none":
        detail["output_text"] = str(output)
    return detail


_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def _pretty_json(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------- markdown

_CODE_OR_LINK = re.compile(r"(`[^`\n]+`|\[[^\]\n]+\]\((?:https?://|mailto:)[^\s)]+\))")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^\s)]+)\)")
_EMPHASIS = [
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?!\*)"), r"<em>\1</em>"),
    (re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"<em>\1</em>"),
]
_BLOCK = {
    "heading": re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$"),
    "rule": re.compile(r"\s{0,3}([-*_])(\s*\1){2,}\s*$"),
    "ul": re.compile(r"\s*[-*+]\s+(.*)$"),
    "ol": re.compile(r"\s*\d{1,9}[.)]\s+(.*)$"),
    "quote": re.compile(r"\s*>\s?(.*)$"),
    "table": re.compile(r"\s*\|.*\|\s*$"),
}


def _inline(text: str) -> str:
    """Escape ``text`` and render code spans, http(s)/mailto links, bold and italic."""
    out = []
    for i, part in enumerate(_CODE_OR_LINK.split(text)):
        if i % 2 and part.startswith("`"):
            out.append(f"<code>{escape(part[1:-1])}</code>")
        elif i % 2:
            m = _LINK.fullmatch(part)
            assert m is not None
            out.append(
                f'<a href="{escape(m[2])}" target="_blank" rel="noopener noreferrer">'
                f"{_emphasis(escape(m[1]))}</a>"
            )
        else:
            out.append(_emphasis(escape(part)))
    return "".join(out)


def _emphasis(escaped: str) -> str:
    for pattern, repl in _EMPHASIS:
        escaped = pattern.sub(repl, escaped)
    return escaped


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    if len(cells) > 1 and all(re.fullmatch(r":?-{1,}:?", c) for c in cells[1] if c):
        head, body = cells[0], cells[2:]
    else:
        head, body = None, cells
    html = "<table>"
    if head:
        html += "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>"
    html += "<tbody>"
    for row in body:
        html += "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
    return html + "</tbody></table>"


def markdown_to_html(text: str) -> str:
    """Render common Markdown to HTML safely: every character of input is escaped first.

    Supports headings, paragraphs, lists, block quotes, fenced code, rules, pipe tables,
    code spans, bold, italic and http(s)/mailto links. Raw HTML is shown as text.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append("<p>" + "<br>".join(_inline(p) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            flush()
            fence, body, i = line.lstrip()[:3], [], i + 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                body.append(lines[i])
                i += 1
            out.append(f"<pre><code>{escape(chr(10).join(body))}</code></pre>")
            i += 1
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        if m := _BLOCK["heading"].match(line):
            flush()
            level = len(m[1])
            out.append(f"<h{level}>{_inline(m[2])}</h{level}>")
        elif _BLOCK["rule"].match(line):
            flush()
            out.append("<hr>")
        elif _BLOCK["table"].match(line):
            flush()
            rows = []
            while i < len(lines) and _BLOCK["table"].match(lines[i]):
                rows.append(lines[i])
                i += 1
            out.append(_table(rows))
            continue
        elif _BLOCK["ul"].match(line) or _BLOCK["ol"].match(line):
            flush()
            tag = "ul" if _BLOCK["ul"].match(line) else "ol"
            items = []
            while i < len(lines) and (m := _BLOCK[tag].match(lines[i])):
                items.append(f"<li>{_inline(m[1])}</li>")
                i += 1
            out.append(f"<{tag}>{''.join(items)}</{tag}>")
            continue
        elif _BLOCK["quote"].match(line):
            flush()
            quoted = []
            while i < len(lines) and (m := _BLOCK["quote"].match(lines[i])):
                quoted.append(m[1])
                i += 1
            out.append(f"<blockquote>{markdown_to_html(chr(10).join(quoted))}</blockquote>")
            continue
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "".join(out)
