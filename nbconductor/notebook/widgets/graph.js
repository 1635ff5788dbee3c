// nbconductor step graph. Layout, captions and inspector HTML come from Python
// (nbconductor/widgets/graph.py); this file only draws them and reports clicks.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function h(tag, cls, text, parent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  if (parent) parent.append(node);
  return node;
}

function text(parent, x, y, value, cls, attrs) {
  const t = svg("text", { x, y, class: cls, ...attrs }, parent);
  t.textContent = value;
  return t;
}

function render({ model, el }) {
  el.classList.add("nbc-graph");
  const bar = h("div", "nbc-bar", null, el);
  const runLine = h("div", "nbc-run", null, bar);
  const legend = h("div", "nbc-legend", null, bar);
  const body = h("div", "nbc-body", null, el);
  const canvas = h("div", "nbc-canvas", null, body);
  const inspector = h("aside", "nbc-inspector", null, body);
  const root = svg("svg", { class: "nbc-svg", role: "group" }, canvas);

  const select = (id) => {
    model.set("selected", model.get("selected") === id ? "" : id);
    model.save_changes();
  };

  function drawLegend() {
    legend.replaceChildren();
    for (const [state, c] of Object.entries(model.get("palette"))) {
      const item = h("span", "nbc-legend-item", null, legend);
      item.dataset.state = state;
      const swatch = h("span", "nbc-swatch", c.glyph, item);
      swatch.style.cssText = `background:${c.fill};border-color:${c.stroke};color:${c.stroke}`;
      h("span", null, state, item);
    }
  }

  function drawGraph() {
    const palette = model.get("palette");
    const selected = model.get("selected");
    const { width, height } = model.get("size");
    root.replaceChildren();
    const defs = svg("defs", {}, root);
    for (const kind of ["", "-hot"]) {
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: `nbc-arrowhead${kind}` },
        svg("marker", { id: `nbc-arrow${kind}-${model.cid}`, viewBox: "0 0 10 10", refX: 9,
          refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse",
          orient: "auto-start-reverse" }, defs));
    }
    root.setAttribute("width", width);
    root.setAttribute("height", height);
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    // Shrink a wide graph to the cell's width, down to 70%; wider than that, it scrolls.
    root.style.minWidth = `${Math.round(width * 0.7)}px`;
    // As wide as the graph: the inspector sits beside a narrow graph, below a wide one.
    canvas.style.flexBasis = `${width + 2}px`;
    for (const e of model.get("edges")) {
      const hot = selected && (e.source === selected || e.target === selected);
      svg("path", { d: e.path, class: hot ? "nbc-edge nbc-hot" : "nbc-edge",
        "data-source": e.source, "data-target": e.target,
        "marker-end": `url(#nbc-arrow${hot ? "-hot" : ""}-${model.cid})` }, root);
    }
    for (const n of model.get("nodes")) {
      const c = palette[n.state];
      const cap = n.caption;
      const g = svg("g", { class: "nbc-node", transform: `translate(${n.x},${n.y})`,
        tabindex: 0, role: "button", "data-node": n.id, "data-state": n.state,
        "aria-label": `${n.label}: ${n.state}`, "aria-pressed": String(n.id === selected) }, root);
      svg("title", {}, g).textContent = cap.tooltip;
      svg("rect", { class: "nbc-box", width: n.w, height: n.h, rx: 8,
        fill: c.fill, stroke: c.stroke }, g);
      svg("rect", { x: 5, y: 6, width: 5, height: n.h - 12, rx: 2.5, fill: c.stroke }, g);
      text(g, 18, 22, cap.title, "nbc-title");
      text(g, n.w - 10, 22, c.glyph, "nbc-glyph", { fill: c.stroke });
      text(g, 18, 39, cap.subtitle, "nbc-sub");
      text(g, 18, 56, cap.metrics, "nbc-sub");
      if (cap.badge) {
        const bx = n.w - 28 - cap.badge_w;
        svg("rect", { x: bx, y: 9, width: cap.badge_w, height: 17, rx: 8.5,
          class: "nbc-badge", stroke: c.stroke }, g);
        text(g, bx + cap.badge_w / 2, 22, cap.badge, "nbc-badge-text");
      }
      g.addEventListener("click", () => select(n.id));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(n.id); }
      });
    }
  }

  function section(title, parent) {
    const s = h("section", "nbc-section", null, parent);
    h("h4", null, title, s);
    return s;
  }

  function drawDetail() {
    const d = model.get("detail");
    inspector.replaceChildren();
    inspector.hidden = !d || !d.id;
    if (inspector.hidden) return;
    inspector.dataset.node = d.id;
    const c = model.get("palette")[d.state];
    const head = h("header", null, null, inspector);
    h("strong", "nbc-inspector-title", d.label, head);
    const chip = h("span", "nbc-chip", `${c.glyph} ${d.state}`, head);
    chip.style.cssText = `background:${c.fill};border-color:${c.stroke}`;
    const close = h("button", "nbc-close", "×", head);
    close.title = "Close";
    close.addEventListener("click", () => select(d.id));

    const facts = h("table", "nbc-facts", null, inspector);
    for (const [k, v] of d.facts) {
      const row = h("tr", null, null, facts);
      h("th", null, k, row);
      h("td", null, v, row);
    }

    if (d.error) h("pre", "nbc-error", d.error, section("Error", inspector));
    if (d.gates.length) {
      const list = h("ul", "nbc-gates", null, section("Gates", inspector));
      for (const g of d.gates) {
        const li = h("li", g.passed ? "nbc-pass" : "nbc-fail", null, list);
        h("span", "nbc-gate-name", `${g.passed ? "✓" : "✕"} ${g.name}${g.score ? ` ${g.score}` : ""}`, li);
        if (g.feedback) h("div", "nbc-feedback", g.feedback, li);
      }
    }
    const out = section("Output", inspector);
    out.classList.add("nbc-output");
    out.dataset.kind = d.output_kind;
    // output_html is built in Python from escaped text (graph.markdown_to_html).
    if (d.output_html != null) h("div", "nbc-md", null, out).innerHTML = d.output_html;
    else if (d.image_src) h("img", null, null, out).src = d.image_src;
    else if (d.output_text != null) h("pre", null, d.output_text, out);
    else h("div", "nbc-muted", "No output yet.", out);
    if (d.prompt != null) {
      const det = h("details", "nbc-section nbc-prompt", null, inspector);
      h("summary", null, "Prompt", det);
      h("pre", null, d.prompt, det);
    }
  }

  const drawRun = () => { runLine.textContent = model.get("run").summary || ""; };
  const handlers = [
    ["change:nodes change:edges change:size change:selected", drawGraph],
    ["change:palette", () => { drawLegend(); drawGraph(); }],
    ["change:detail", drawDetail],
    ["change:run", drawRun],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  drawLegend(); drawRun(); drawGraph(); drawDetail();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); };
}

export default { render };
