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
        f"people ({h['decided']} decided): {h['wins']} wins, {h['losses']} losses, "
        f"{h['ties']} ties, {h['both_bad']} both bad; win rate {h['win_rate']:.0%}"
        + ("" if agreement is None else f"; agree with the pairwise judge on {agreement:.0%}")
    )


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """A variant's verdict against base as the sentences users read: the paired verdict, then
    the pairwise judge's and the people's when there are any."""
    lines = [verdict["sentence"]]
    if "pairwise" in verdict:
        pw = verdict["pairwise"]
        lines.append(f"{pw['sentence']}; win rate {pw['win_rate']:.0%}, order flips {pw['flips']}")
    if "human" in verdict:
        lines.append(human_line(verdict))
    return lines


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
        first, *more = verdict_lines(v)
        lines += [first, *("  " + m for m in more)]
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
        f"<li>{e(line)}</li>" for v in data["verdicts"].values() for line in verdict_lines(v)
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


def first_cells(comparison) -> dict[tuple[int, str], dict[str, Any]]:
    """Each (row, variant)'s cell of the first repeat: what the grid shows."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for c in comparison.cells:
        by_key.setdefault((c["row_index"], c["variant"]), c)
    return by_key


def brief_text(params: dict[str, Any], width: int = 60) -> str:
    """A row's parameters as one short, redacted line."""
    return redact(preview(", ".join(f"{k}={v}" for k, v in params.items()), width))


def gate_marks(gates: list[dict[str, Any]]) -> str:
    return " ".join(("✓" if g["passed"] else "✗") + g["name"] for g in gates)


def _score(c: dict[str, Any]) -> str:
    return "—" if c["score"] is None else f"{c['score']:.2f}"


def _grid(comparison, limit: int) -> str:
    e = html.escape
    winners = comparison.winners()
    by_key = first_cells(comparison)
    head = "<th>#</th><th>brief</th>" + "".join(f"<th>{e(v)}</th>" for v in comparison.variants)
    rows = []
    for i in range(min(comparison.rows, limit)):
        params = next((c["params"] for (r, _), c in by_key.items() if r == i), {})
        brief = e(brief_text(params))
        tds = []
        for v in comparison.variants:
            c = by_key.get((i, v))
            if c is None:
                tds.append("<td>—</td>")
                continue
            gates = e(gate_marks(c["gates"]))
            win = ' class="win"' if v in winners.get(i, []) and len(winners.get(i, [])) == 1 else ""
            score = _score(c)
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


def compare_view(comparison, pickable: bool = False) -> dict[str, Any]:
    """What the compare widget shows, as JSON-safe data: the title, the figures table (each cell
    its text and whether it is the column's best), each variant's verdict sentences, and the
    grid (a row per brief: the short brief, each variant's score, gate marks, state and output
    preview, the row's winner, and people's picks so far). Outputs in full stay out
    (`cell_detail`): the grid sends previews only."""
    data = comparison.to_json()
    base = comparison.variants[0]
    winners = comparison.winners()
    by_key = first_cells(comparison)
    picks: dict[int, dict[str, str]] = {}
    for p in getattr(comparison, "prefs", []) or []:
        if p["vs"] == base:
            picks.setdefault(p["row_index"], {})[p["variant"]] = p["choice"]
    grid = []
    for i in range(comparison.rows):
        params = next((c["params"] for (r, _), c in by_key.items() if r == i), {})
        cells = {}
        for v in comparison.variants:
            c = by_key.get((i, v))
            if c is not None:
                cells[v] = {
                    "score": _score(c),
                    "gates": gate_marks(c["gates"]),
                    "failed": bool(c["failed"]),
                    "state": c["state"] or "",
                    "preview": preview(redact(c["output"] or ""), 40),
                }
        top = winners.get(i, [])
        grid.append(
            {
                "row": i,
                "brief": brief_text(params),
                "cells": cells,
                "winner": top[0] if len(top) == 1 else None,
                "picks": picks.get(i, {}),
            }
        )
    return {
        "title": f"compare {data['step']}: {data['rows']} rows × {len(data['variants'])} variants"
        + (f" × {data['repeats']} repeats" if data.get("repeats", 1) > 1 else "")
        + f" (experiment {data['experiment']})",
        "header": HEADER,
        "table": [
            {
                "variant": name,
                "cells": [
                    {"text": text, "best": key in f["best"]}
                    for key, text in zip(KEYS, figure_cells(f), strict=True)
                ],
            }
            for name, f in data["variants"].items()
        ],
        "verdicts": [
            {"variant": name, "vs": v["vs"], "lines": verdict_lines(v), "human": v.get("human")}
            for name, v in data["verdicts"].items()
        ],
        "variants": list(comparison.variants),
        "base": base,
        "grid": grid,
        "pickable": pickable,
    }


def cell_detail(comparison, row: int, variant: str) -> dict[str, Any]:
    """One grid cell expanded: its output in full (redacted), score, gate results, state,
    tokens, cost and latency; empty for a cell the compare does not have."""
    c = first_cells(comparison).get((row, variant))
    if c is None:
        return {}
    return {
        "row": row,
        "variant": variant,
        "score": _score(c),
        "state": c["state"] or "",
        "failed": bool(c["failed"]),
        "gates": [
            {
                "name": g["name"],
                "passed": bool(g["passed"]),
                "score": None if g.get("score") is None else f"{g['score']:.2f}",
            }
            for g in c["gates"]
        ],
        "output": redact(c["output"] or ""),
        "facts": [
            ["tokens", f"{c['tokens'] or 0:,}"],
            ["cost", fmt_cost(c["cost"])],
            ["latency", _num(c["latency"], "{:.2f} s")],
        ],
    }


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
