"""A compare as text (terminal) and as a self-contained HTML page (notebook fallback, report file).

Pure: takes a `Comparison` (or its `to_json()`), returns strings. The best value in each column
is marked (``*`` in text, bold in HTML); the grid has a row per brief and a column per variant,
each cell the output (expandable), its score and gate results, the row's winner marked.
"""

from __future__ import annotations

import html
from typing import Any

from .._redact import redact
from .._summary import fmt_cost, preview, text_table

HEADER = [
    "variant",
    "rows",
    "first-pass",
    "final",
    "mean score (95% CI)",
    "failures",
    "tokens",
    "cost/row",
    "p50 s",
    "p95 s",
]
KEYS = [
    "rows",
    "first_pass_yield",
    "final_yield",
    "mean_score",
    "failures",
    "tokens",
    "cost_per_row",
    "p50_latency_s",
    "p95_latency_s",
]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def human_line(verdict: dict[str, Any]) -> str:
    h = verdict["human"]
    agreement = h["agreement_with_judge"]
    return (
        f"people (blind, {h['decided']} decided): {h['wins']} wins, {h['losses']} losses, "
        f"{h['ties']} ties, {h['both_bad']} both bad; win rate {h['win_rate']:.0%}"
        + ("" if agreement is None else f"; agree with the pairwise judge on {agreement:.0%}")
    )


def figure_cells(f: dict[str, Any]) -> list[str]:
    ci = f.get("score_ci")
    score = _num(f["mean_score"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return [
        str(f["rows"]),
        _pct(f["first_pass_yield"]),
        _pct(f["final_yield"]),
        score,
        str(f["failures"]),
        f"{f['tokens']:,}",
        fmt_cost(f["cost_per_row"]),
        _num(f["p50_latency_s"]),
        _num(f["p95_latency_s"]),
    ]


def _rows(data: dict[str, Any], mark) -> list[list[str]]:
    out = []
    for name, f in data["variants"].items():
        cells = figure_cells(f)
        out.append(
            [name] + [mark(c) if k in f["best"] else c for k, c in zip(KEYS, cells, strict=True)]
        )
    return out


def compare_text(comparison) -> str:
    """The figures table, the verdicts and a line on what was resumed."""
    data = comparison.to_json() if hasattr(comparison, "to_json") else comparison
    lines = [
        f"compare {data['step']}: {data['rows']} rows × {len(data['variants'])} variants"
        + (f" × {data['repeats']} repeats" if data.get("repeats", 1) > 1 else "")
        + f" (experiment {data.get('experiment', '?')}; * best)",
        text_table(HEADER, _rows(data, lambda c: c + "*")),
        "",
    ]
    for v in data["verdicts"].values():
        lines.append(v["sentence"])
        if "pairwise" in v:
            pw = v["pairwise"]
            lines.append(
                f"  {pw['sentence']}; win rate {pw['win_rate']:.0%}, order flips {pw['flips']}"
            )
        if "human" in v:
            lines.append("  " + human_line(v))
    resumed = getattr(comparison, "resumed", 0)
    if resumed:
        lines.append(f"({resumed} cells were already in the store and were not run again)")
    return "\n".join(lines)


_CSS = """<style>
.nbc-compare table{border-collapse:collapse;font:13px system-ui,sans-serif;margin:4px 0}
.nbc-compare th,.nbc-compare td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.nbc-compare th{background:#f3f3f3}.nbc-compare .best{font-weight:bold;color:#0b6e2e}
.nbc-compare .win{background:#eefbea}.nbc-compare details summary{cursor:pointer}
.nbc-compare .fail{color:#a00}.nbc-compare pre{white-space:pre-wrap;max-width:40em;margin:2px 0}
</style>"""


def compare_html(comparison, grid_rows: int = 50) -> str:
    """The figures table, the verdicts and the per-brief grid, as one HTML fragment."""
    data = comparison.to_json()
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for row in [[e(r[0])] + [e(c) for c in r[1:]] for r in _rows(data, lambda c: "\x00" + c)]
    ).replace("<td>\x00", '<td class="best">')
    verdicts = "".join(
        f"<li>{e(v['sentence'])}</li>"
        + (
            f"<li>{e(v['pairwise']['sentence'])}; win rate {v['pairwise']['win_rate']:.0%}, "
            f"order flips {v['pairwise']['flips']}</li>"
            if "pairwise" in v
            else ""
        )
        + (f"<li>{e(human_line(v))}</li>" if "human" in v else "")
        for v in data["verdicts"].values()
    )
    parts = [
        _CSS,
        '<div class="nbc-compare">',
        f"<b>compare {e(data['step'])}</b>: {data['rows']} rows × {len(data['variants'])} variants "
        f"(experiment <code>{e(data['experiment'])}</code>; best in bold)",
        f"<table><tr>{head}</tr>{body}</table>",
        f"<ul>{verdicts}</ul>",
        _grid(comparison, grid_rows),
        "</div>",
    ]
    return "".join(parts)


def _grid(comparison, limit: int) -> str:
    e = html.escape
    winners = comparison.winners()
    by_key = {}
    for c in comparison.cells:
        by_key.setdefault((c["row_index"], c["variant"]), c)  # the first repeat
    head = "<th>#</th><th>brief</th>" + "".join(f"<th>{e(v)}</th>" for v in comparison.variants)
    rows = []
    for i in range(min(comparison.rows, limit)):
        params = next((c["params"] for (r, _), c in by_key.items() if r == i), {})
        brief = e(redact(preview(", ".join(f"{k}={v}" for k, v in params.items()), 60)))
        tds = []
        for v in comparison.variants:
            c = by_key.get((i, v))
            if c is None:
                tds.append("<td>—</td>")
                continue
            gates = " ".join(("✓" if g["passed"] else "✗") + e(g["name"]) for g in c["gates"])
            win = ' class="win"' if v in winners.get(i, []) and len(winners.get(i, [])) == 1 else ""
            score = "—" if c["score"] is None else f"{c['score']:.2f}"
            state = f' <span class="fail">{e(c["state"] or "")}</span>' if c["failed"] else ""
            text = redact(c["output"] or "")
            tds.append(
                f"<td{win}><details><summary>{score} {gates}{state} — {e(preview(text, 40))}"
                f"</summary><pre>{e(text)}</pre></details></td>"
            )
        rows.append(f"<tr><td>{i}</td><td>{brief}</td>{''.join(tds)}</tr>")
    more = (
        f"<p>({comparison.rows - limit} more rows in the store)</p>"
        if comparison.rows > limit
        else ""
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"


def report_page(comparison) -> str:
    """A whole HTML page (``nbconductor compare --out DIR``), with the plots when matplotlib
    is installed."""
    from .._errors import MissingDependency

    try:
        plots = f'<p><img alt="plots" src="{figure_data_uri(compare_figure(comparison))}"></p>'
    except MissingDependency:
        plots = ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>compare {html.escape(comparison.step)}</title></head><body>"
        f"{compare_html(comparison, grid_rows=10_000)}{plots}</body></html>"
    )


def compare_figure(comparison):
    """A matplotlib Figure: the score distribution per variant (box and points), and cost per
    row against mean score per variant. Drawn on an Agg canvas without pyplot; raises
    `MissingDependency` without matplotlib (the ``lab`` extra)."""
    from .._errors import missing_dependency

    missing_dependency("matplotlib", "lab", "the compare plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(comparison.variants)
    figures = comparison.figures()
    fig = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    scores = [
        [c["score"] for c in comparison.cells if c["variant"] == v and c["score"] is not None]
        for v in names
    ]
    left.boxplot([s or [0] for s in scores], showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names)
    for i, s in enumerate(scores, start=1):
        left.scatter([i] * len(s), s, s=12, alpha=0.5, color="#0072B2")
    left.set_ylabel("rubric score")
    left.set_title("score per brief", fontsize="medium")
    for v in names:
        f = figures[v]
        if f["mean_score"] is None:
            continue
        cost = f["cost_per_row"] if f["cost_per_row"] is not None else 0.0
        right.scatter([cost], [f["mean_score"]], s=40, color="#D55E00")
        right.annotate(v, (cost, f["mean_score"]), xytext=(5, 4), textcoords="offset points")
    right.set_xlabel("cost per row ($)")
    right.set_ylabel("mean score")
    right.set_title("cost vs quality", fontsize="medium")
    fig.tight_layout()
    return fig


def figure_data_uri(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
