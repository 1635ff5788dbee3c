"""System-level metrics across runs: how often each step's output is good enough, and at what cost.

Counted over fresh step executions in the store (one row per step per run; a cache hit reuses
an output already counted, so it is not counted again, and a skipped step produced nothing):

- **first-pass yield**: the share accepted on the first try — no gate failed, no output was
  unusable (invalid JSON / schema) and nobody edited it. Transport faults (429, 5xx, timeouts,
  cut, stalled or malformed streams) do not count against it: they are reliability, not
  quality, and show in mean attempts (`_types.quality_failure` is the rule).
- **whole-run first-pass yield**: over the runs that ran at least one step afresh; runs that
  reused every step from the cache, and runs that recorded no step, are counted apart.
- **final yield**: the share whose final output was accepted — passed its gates after retries
  or fallbacks, or was approved or edited by a reviewer. Outputs still waiting for review are
  not (yet) accepted; they are counted in ``pending``.
- **mean attempts**: model calls per output (an item of a ``--map`` step is one output).
- **fallbacks**: outputs for which a fallback model was used.
- **worst step**: the step with the lowest first-pass yield, ties broken by lower final yield,
  then more human edits and rejects, then pipeline order: where quality drops most.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any

from .._format import fmt_cost, md_table
from .._summary import text_table
from .._types import quality_failure
from ._base import ACCEPTED, COUNTED
from ._sqlite import Store


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def report(store_or_path: Store | str | os.PathLike | None = None) -> dict:
    """Per-step metrics across every run in a store, and the step where quality drops most.

    Returns a JSON-ready dict: ``store``, ``runs``, ``steps`` (name → metrics, in the order
    steps first ran), ``totals``, ``worst_step`` (a name or None) and ``worst_step_reason``.
    Raises `ReviewError` when ``store_or_path`` names no store.
    """
    from ._review import _as_store

    store = _as_store(store_or_path, readonly=True)
    rows = store.query(
        "SELECT id, run_id, step, state, model, attempts, attempt_log, gates, items, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_tokens, cost, started, ended FROM results "
        "WHERE item IS NULL AND cached=0 ORDER BY id"
    )
    hits: dict[str, int] = defaultdict(int)
    reused_runs: set[str] = set()  # runs with a cache hit or a skipped step
    order: dict[str, None] = {}  # every step, in the order it first appears
    for r in store.query(
        "SELECT run_id, step, cached, state FROM results WHERE item IS NULL ORDER BY id"
    ):
        order.setdefault(r["step"])
        if r["cached"]:
            hits[r["step"]] += 1
        if r["cached"] or r["state"] == "skipped":
            reused_runs.add(r["run_id"])
    skips: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["state"] == "skipped":
            skips[r["step"]] += 1
    decisions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in store.query(
        "SELECT results.step AS step, reviews.decision AS decision, COUNT(*) AS n FROM reviews "
        "JOIN results ON results.id = reviews.result_id GROUP BY results.step, reviews.decision"
    ):
        decisions[r["step"]][r["decision"]] += r["n"]

    by_step: dict[str, list] = {
        name: [] for name in order
    }  # a step only ever cached or skipped shows too
    for r in rows:
        if r["state"] in COUNTED:
            by_step[r["step"]].append(r)
    steps = {
        name: _metrics(rs, hits[name], decisions[name], skips[name]) for name, rs in by_step.items()
    }

    run_rows = store.query("SELECT * FROM runs")
    first_pass_runs = defaultdict(lambda: True)
    for r in rows:
        if r["state"] in COUNTED:
            first_pass_runs[r["run_id"]] &= _first_pass(r)
    worst, reason = _worst(steps)
    costs = [s["cost"] for s in steps.values() if s["cost"] is not None]
    all_ids = {r["id"] for r in run_rows}
    return {
        "store": store.path,
        "runs": len(run_rows),
        "steps": steps,
        "totals": {
            "runs": len(run_rows),
            # the whole-run first-pass yield's denominator: runs that ran at least one step afresh
            "runs_with_output": len(first_pass_runs),
            # runs that ran no step afresh: every step reused from the cache or skipped
            "runs_all_reused": len((reused_runs & all_ids) - first_pass_runs.keys()),
            # runs with no step result at all (stopped, or failed before a step finished)
            "runs_without_results": len(all_ids - first_pass_runs.keys() - reused_runs),
            "runs_by_status": _by_status(run_rows),
            # a run is first-pass when every step in it was accepted first time, untouched
            "first_pass_runs": sum(first_pass_runs.values()),
            "first_pass_yield": _ratio(sum(first_pass_runs.values()), len(first_pass_runs)),
            "failed_runs": sum(1 for r in run_rows if r["status"] == "failed"),
            # killed mid-way: marked so by a later run, or still `running` with its process gone
            "interrupted_runs": sum(1 for r in run_rows if _interrupted(r)),
            "pending_review": sum(s["pending"] for s in steps.values()),
            "tokens": sum(s["tokens"] for s in steps.values()),
            "cost": round(sum(costs), 6) if costs else None,
            "cost_unknown": sum(s["cost_unknown"] for s in steps.values()),
            # reviewer -> decision -> how many (several reviewers share one queue)
            "decisions_by_reviewer": _by_reviewer(store),
        },
        "worst_step": worst,
        "worst_step_reason": reason,
    } | _calibration(store, steps)


def _calibration(store: Store, steps: dict) -> dict:
    """``{"calibration": …}`` when there are audits or reviews (`_audit.calibration`), else {}."""
    from ._audit import calibration

    cal = calibration(store, {n: (s["first_pass"], s["runs"]) for n, s in steps.items()})
    return {"calibration": cal} if cal else {}


def _by_reviewer(store: Store) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in store.query(
        'SELECT "user" AS who, decision, COUNT(*) AS n FROM reviews GROUP BY "user", decision '
        'ORDER BY "user", decision'
    ):
        out.setdefault(r["who"] or "unknown", {})[r["decision"]] = r["n"]
    return out


def _interrupted(run) -> bool:
    from ._sqlite import process_gone

    if run["status"] == "interrupted":
        return True
    keys = run.keys()
    return (
        run["status"] == "running"
        and "pid" in keys
        and process_gone(run["host"], run["pid"], run["pid_start"] if "pid_start" in keys else None)
    )


def _by_status(run_rows) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in run_rows:
        out[r["status"] or "running"] += 1
    return dict(out)


def _attempts(row) -> list[dict]:
    return json.loads(row["attempt_log"] or "[]")


def _first_pass(row) -> bool:
    """Accepted on the first try: passed, and no attempt failed a gate or gave unusable output."""
    if row["state"] != "passed":
        return False
    return not any(quality_failure(a["outcome"], a.get("error")) for a in _attempts(row))


def _metrics(
    rows: list, cache_hits: int, decisions: dict[str, int], skipped: int = 0
) -> dict[str, Any]:
    n = len(rows)
    outputs = sum(max(1, r["items"] or 1) for r in rows)  # a --map step makes one output per item
    calls = 0
    fallbacks = 0
    for r in rows:
        made = [a for a in _attempts(r) if a["outcome"] != "skipped"]
        calls += len(made) if made else max(1, r["items"] or 1)  # a Python step runs once
        if len({a["model"] for a in _attempts(r)}) > 1:
            fallbacks += 1
    states = defaultdict(int)
    for r in rows:
        states[r["state"]] += 1
    first = sum(1 for r in rows if _first_pass(r))
    latencies = [
        r["ended"] - r["started"]
        for r in rows
        if r["started"] is not None and r["ended"] is not None
    ]
    inp = sum(r["input_tokens"] or 0 for r in rows)
    out = sum(r["output_tokens"] or 0 for r in rows)
    # outputs whose server sent no usage: their tokens were estimated from the text
    estimated = sum(
        1 for r in rows if any((a.get("usage") or {}).get("estimated") for a in _attempts(r))
    )
    costs = [r["cost"] for r in rows if r["cost"] is not None]
    return {
        "runs": n,
        "first_pass": first,
        "first_pass_yield": _ratio(first, n),
        "final_yield": _ratio(sum(states[s] for s in ACCEPTED), n),
        "mean_attempts": round(calls / outputs, 3) if outputs else None,
        "fallbacks": fallbacks,
        "passed": states["passed"],
        "flagged": states["flagged"] + states["approved"] + states["edited"] + states["rejected"],
        "pending": states["flagged"],
        "approved": states["approved"],
        "edits": states["edited"],
        "rejects": states["rejected"],
        "failed": states["failed"],
        "decisions": dict(decisions),
        "cache_hits": cache_hits,
        "skipped": skipped,
        "input_tokens": inp,
        "output_tokens": out,
        "tokens": inp + out,
        "tokens_estimated": estimated,
        "cost": round(sum(costs), 6)
        if costs or not n
        else None,  # nothing ran afresh: nothing spent
        "cost_unknown": n - len(costs),
        "latency_p50": _round(percentile(latencies, 50)),
        "latency_p95": _round(percentile(latencies, 95)),
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _worst(steps: dict[str, dict]) -> tuple[str | None, str]:
    ranked = [
        (
            s["first_pass_yield"],
            s["final_yield"] if s["final_yield"] is not None else 1.0,
            -(s["edits"] + s["rejects"]),
            i,
            name,
        )
        for i, (name, s) in enumerate(steps.items())
        if s["first_pass_yield"] is not None
    ]
    if not ranked:
        return None, "no step has run yet"
    fpy, _, _, _, name = min(ranked)
    if fpy >= 1:
        return None, "every step passed its gates first time in every run"
    s = steps[name]
    why = (
        f"lowest first-pass yield: {s['first_pass']} of {s['runs']} outputs ({fpy:.0%}) were accepted first time"
        f"; {s['flagged']} flagged, {s['edits']} edited, {s['rejects']} rejected, {s['failed']} failed"
    )
    return name, why


# showing ------------------------------------------------------------------------------------
HEADER = [
    "step",
    "runs",
    "first-pass",
    "final",
    "cached",
    "skipped",
    "attempts",
    "fallbacks",
    "edits",
    "rejects",
    "pending",
    "tokens",
    "cost",
    "p50",
    "p95",
]
#: What each column counts, printed under the table: every figure names its denominator.
LEGEND = (
    "runs = fresh executions of the step (cache hits and skips are counted apart, not in any yield); "
    "first-pass = accepted on the first try (no gate failure, no unusable answer, not edited) / runs; "
    "final = accepted in the end (passed, approved or edited) / runs; "
    "attempts = model calls per output (transport retries included); tokens, cost, p50, p95 = fresh runs only"
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _share(a: int, b: int) -> str:
    """``75% (3/4)``: a share with its numerator and denominator."""
    return "—" if not b else f"{a / b:.0%} ({a}/{b})"


def _cost(cost: float | None, unknown: int) -> str:
    if not unknown:
        return fmt_cost(cost)
    what = f"{unknown} unpriced"
    return what if cost is None else f"{fmt_cost(cost)} + {what}"


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}s"


def report_rows(rep: dict) -> list[list[str]]:
    rows = []
    for name, s in rep["steps"].items():
        mark = " ◀" if name == rep.get("worst_step") else ""
        accepted = s["passed"] + s["approved"] + s["edits"]
        rows.append(
            [
                name + mark,
                str(s["runs"]),
                _share(s["first_pass"], s["runs"]),
                _share(accepted, s["runs"]),
                str(s["cache_hits"]),
                str(s.get("skipped", 0)),
                "—" if s["mean_attempts"] is None else f"{s['mean_attempts']:.2f}",
                str(s["fallbacks"]),
                str(s["edits"]),
                str(s["rejects"]),
                str(s["pending"]),
                ("~" if s.get("tokens_estimated") else "") + f"{s['tokens']:,}",
                _cost(s["cost"], s["cost_unknown"]),
                _secs(s["latency_p50"]),
                _secs(s["latency_p95"]),
            ]
        )
    return rows


def _footer(rep: dict) -> str:
    t = rep["totals"]
    n, fresh = rep["runs"], t["runs_with_output"]
    aside = [
        f"{k} {what}"
        for k, what in (
            (t.get("runs_all_reused", 0), "reused every step from the cache"),
            (t.get("runs_without_results", 0), "recorded no step"),
        )
        if k
    ]
    statuses = ", ".join(
        f"{k} {st}" for st, k in sorted(t.get("runs_by_status", {}).items(), key=lambda kv: -kv[1])
    )
    lines = [
        f"{n} run{'' if n == 1 else 's'}"
        + (f" ({statuses})" if statuses else "")
        + " · whole-run first-pass yield "
        f"{_share(t['first_pass_runs'], fresh) if fresh else '—'} of runs that ran a step afresh"
        + (f" ({'; '.join(aside)})" if aside else "")
        + f" · {t['tokens']:,} tokens · {_cost(t['cost'], t.get('cost_unknown', 0))}"
        f" · {t['pending_review']} waiting for review"
    ]
    if t.get("interrupted_runs"):
        n = t["interrupted_runs"]
        lines.append(
            f"{n} run{'s' if n != 1 else ''} interrupted (killed mid-way; finished steps are reused "
            "by the next run)"
        )
    if t.get("decisions_by_reviewer"):
        lines.append(
            "decisions by reviewer: "
            + "; ".join(
                f"{who} {sum(d.values())} ("
                + ", ".join(f"{n} {k}" for k, n in sorted(d.items()))
                + ")"
                for who, d in t["decisions_by_reviewer"].items()
            )
        )
    if rep["worst_step"]:
        lines.append(f"quality drops most at `{rep['worst_step']}`: {rep['worst_step_reason']}")
    else:
        lines.append(rep["worst_step_reason"])
    return "\n".join(lines)


def report_text(rep: dict) -> str:
    """The report as a fixed-width table for terminals."""
    if not rep["steps"]:
        return f"no step results in {rep['store']} yet: run a pipeline first"
    text = text_table(HEADER, report_rows(rep)) + "\n\n" + _footer(rep) + "\n" + LEGEND
    if rep.get("calibration"):
        from ._audit import calibration_text

        text += "\n\n" + calibration_text(rep["calibration"])
    return text


def report_markdown(rep: dict) -> str:
    if not rep["steps"]:
        return f"*no step results in `{rep['store']}` yet: run a pipeline first*"
    lines = md_table(HEADER, report_rows(rep))
    text = "\n".join(lines) + "\n\n" + _footer(rep).replace("\n", "  \n") + f"  \n*{LEGEND}*"
    if rep.get("calibration"):
        from ._audit import calibration_text

        text += "\n\n```\n" + calibration_text(rep["calibration"]) + "\n```"
    return text


def report_figure(rep: dict):
    """A matplotlib Figure: first-pass and final yield per step, the worst step marked.

    Drawn on an Agg canvas without pyplot, so it works headless and adds no figure to the
    notebook's pyplot state. Raises `MissingDependency` without matplotlib.
    """
    from .._errors import missing_dependency

    missing_dependency("matplotlib", "lab", "the report plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rep["steps"])
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 2), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = range(len(names))
    first = [rep["steps"][n]["first_pass_yield"] or 0 for n in names]
    final = [rep["steps"][n]["final_yield"] or 0 for n in names]
    ax.bar([i - 0.2 for i in x], first, width=0.4, label="first-pass yield", color="#0072B2")
    ax.bar([i + 0.2 for i in x], final, width=0.4, label="final yield", color="#9ecae1")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of outputs")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    if rep["worst_step"] in names:
        i = names.index(rep["worst_step"])
        ax.annotate(
            "quality drops here",
            (i - 0.2, first[i]),
            xytext=(0, 14),
            textcoords="offset points",
            ha="center",
            color="#D55E00",
            arrowprops={"arrowstyle": "->", "color": "#D55E00"},
        )
    ax.legend(
        loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize="small"
    )
    ax.set_xlabel(f"step ({rep['runs']} runs)")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()


def cli_report(store: str | None = None, *, as_json: bool = False) -> int:
    """``nbconductor report [--store PATH] [--json]``; returns the exit status."""
    from ._review import open_store

    path = store
    store = open_store(path, readonly=True)  # a report only reads: a read-only store works
    try:
        rep = report(store)
    finally:
        store.close()
    print(json.dumps(rep, indent=2) if as_json else report_text(rep))
    return 0
