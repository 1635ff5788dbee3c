// nbconductor compare widget. Every figure and sentence comes from Python
// (nbconductor/render/_compare.py: compare_view, cell_detail); this file draws them, reports
// clicks (`selected`) and sends picks ({kind: "prefer", row, variant, choice}). Text is set
// with textContent only: nothing from a model reply is parsed as HTML.

function h(tag, cls, text, parent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  if (parent) parent.append(node);
  return node;
}

function render({ model, el }) {
  el.classList.add("nbc-cmp");
  const title = h("div", "nbc-cmp-title", null, el);
  const table = h("table", "nbc-cmp-figures", null, el);
  const verdicts = h("ul", "nbc-cmp-verdicts", null, el);
  const status = h("div", "nbc-cmp-status", null, el);
  const grid = h("table", "nbc-cmp-grid", null, el);

  const select = (key) => {
    model.set("selected", model.get("selected") === key ? "" : key);
    model.save_changes();
  };

  function drawFigures(view) {
    title.textContent = `${view.title} · best in bold`;
    table.replaceChildren();
    const head = h("tr", null, null, table);
    for (const name of view.header) h("th", null, name, head);
    for (const row of view.table) {
      const tr = h("tr", null, null, table);
      tr.dataset.variant = row.variant;
      h("td", "nbc-cmp-name", row.variant, tr);
      for (const cell of row.cells) h("td", cell.best ? "nbc-cmp-best" : null, cell.text, tr);
    }
    verdicts.replaceChildren();
    for (const v of view.verdicts) {
      v.lines.forEach((line, i) => {
        const li = h("li", i ? "nbc-cmp-sub" : null, line, verdicts);
        li.dataset.variant = v.variant;
        if (v.human && line.startsWith("people")) li.classList.add("nbc-cmp-people");
      });
    }
  }

  function pickControls(view, row, td) {
    const others = view.variants.filter((v) => v !== view.base && !(v in row.picks));
    for (const [v, choice] of Object.entries(row.picks)) {
      h("div", "nbc-cmp-picked", `${v} vs ${view.base}: ${choice}`, td);
    }
    if (!others.length) return;
    let against = others[0];
    const bar = h("div", "nbc-cmp-pick", null, td);
    if (others.length > 1) {
      const menu = h("select", null, null, bar);
      for (const v of others) h("option", null, v, menu).value = v;
      menu.addEventListener("change", () => { against = menu.value; draw(); });
    }
    const buttons = h("span", null, null, bar);
    function draw() {
      buttons.replaceChildren();
      for (const choice of [against, view.base, "tie", "both bad"]) {
        const b = h("button", "nbc-cmp-choice", choice, buttons);
        b.dataset.choice = choice;
        b.addEventListener("click", (ev) => {
          ev.stopPropagation();
          model.send({ kind: "prefer", row: row.row, variant: against, choice });
        });
      }
    }
    draw();
  }

  function drawGrid() {
    const view = model.get("view");
    const selected = model.get("selected");
    const detail = model.get("detail");
    grid.replaceChildren();
    const head = h("tr", null, null, grid);
    h("th", null, "#", head);
    h("th", null, "brief", head);
    for (const v of view.variants) h("th", null, v, head);
    if (view.pickable) h("th", null, "your pick", head);
    for (const row of view.grid) {
      const tr = h("tr", "nbc-cmp-row", null, grid);
      tr.dataset.row = row.row;
      h("td", null, String(row.row), tr);
      h("td", "nbc-cmp-brief", row.brief, tr);
      for (const v of view.variants) {
        const cell = row.cells[v];
        const td = h("td", "nbc-cmp-cell", null, tr);
        td.dataset.variant = v;
        if (!cell) { td.textContent = "—"; continue; }
        const key = `${row.row}:${v}`;
        if (row.winner === v) td.classList.add("nbc-cmp-win");
        if (key === selected) td.classList.add("nbc-cmp-open");
        td.setAttribute("role", "button");
        td.setAttribute("aria-expanded", key === selected ? "true" : "false");
        const top = h("div", "nbc-cmp-score", `${cell.score} ${cell.gates}`, td);
        if (row.winner === v) h("span", "nbc-cmp-crown", " ★", top);
        if (cell.failed) h("span", "nbc-cmp-fail", ` ${cell.state}`, top);
        h("div", "nbc-cmp-preview", cell.preview, td);
        td.addEventListener("click", () => select(key));
      }
      if (view.pickable) pickControls(view, row, h("td", "nbc-cmp-picks", null, tr));
      if (detail && detail.row === row.row && selected === `${row.row}:${detail.variant}`) {
        const more = h("tr", "nbc-cmp-detail", null, grid);
        more.dataset.row = row.row;
        more.dataset.variant = detail.variant;
        const td = h("td", null, null, more);
        td.colSpan = 2 + view.variants.length + (view.pickable ? 1 : 0);
        h("div", "nbc-cmp-detail-head", `brief ${row.row} · ${detail.variant} · score ${detail.score}` +
          (detail.state ? ` · ${detail.state}` : ""), td);
        const gates = h("ul", "nbc-cmp-gates", null, td);
        for (const g of detail.gates) {
          h("li", g.passed ? "nbc-cmp-pass" : "nbc-cmp-fail",
            `${g.passed ? "✓" : "✗"} ${g.name}${g.score ? " " + g.score : ""}`, gates);
        }
        h("div", "nbc-cmp-facts", detail.facts.map(([k, v]) => `${k} ${v}`).join(" · "), td);
        h("pre", "nbc-cmp-output", detail.output, td);
      }
    }
  }

  function drawAll() {
    drawFigures(model.get("view"));
    drawGrid();
  }
  drawAll();
  status.textContent = model.get("status");
  model.on("change:view", drawAll);
  model.on("change:selected", drawGrid);
  model.on("change:detail", drawGrid);
  model.on("change:status", () => { status.textContent = model.get("status"); });
}

export default { render };
