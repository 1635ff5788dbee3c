"""Audits and judge calibration: can the gates behind first-pass yield be trusted?

``--audit RATE`` on a step (or its ``%%rubric``) sends that share of outputs that *passed* every
gate to the review queue as audit items; the run does not wait. Sampling is a hash of the seed
(``$NBCONDUCTOR_AUDIT_SEED``, default ``0``), the step and the output's cache key, so the same
outputs are audited every time. Reviewer decisions on audit items and on flagged items measure
each gate (`calibration`): reviewed items, agreement, false passes (passed, then rejected or
edited), false flags (flagged, then approved unchanged), Cohen's kappa; and per step the
**audited first-pass yield** — first-pass yield × (1 − the false-pass rate measured on audits),
with a 95% Wilson interval.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any

Z = 1.959964  # the normal quantile of a 95% interval
NEEDED_FOR_10_POINTS = math.ceil(Z**2 * 0.25 / 0.1**2)  # worst case p = 0.5: ±10 points


def sampled(step: str, key: str, rate: float, seed: str | None = None) -> bool:
    """Whether the output with cache key ``key`` of ``step`` is audited at ``rate``."""
    seed = os.environ.get("NBCONDUCTOR_AUDIT_SEED", "0") if seed is None else seed
    h = int(hashlib.sha256(f"{seed}:{step}:{key}".encode()).hexdigest()[:15], 16)
    return h / 16**15 < rate


def add_audit(store, result_id: int, step: str, rate: float) -> None:
    """Put a passed result in the review queue as an audit item (once)."""
    store.execute(
        "INSERT INTO audits (result_id, step, rate, at, status) VALUES (?, ?, ?, ?, 'open') "
        "ON CONFLICT (result_id) DO NOTHING",
        (result_id, step, rate, time.time()),
    )


def open_audit_ids(store) -> list[int]:
    try:
        rows = store.query("SELECT result_id FROM audits WHERE status='open' ORDER BY result_id")
    except Exception:  # noqa: BLE001 - an older, read-only store without the table
        return []
    return [r["result_id"] for r in rows]


def is_open_audit(store, result_id: int) -> bool:
    try:
        return bool(
            store.query(
                "SELECT 1 AS x FROM audits WHERE result_id=? AND status='open'", (result_id,)
            )
        )
    except Exception:  # noqa: BLE001 - an older, read-only store without the table
        return False


def decide_audit(store, row, action: str, before: Any, after: Any, note: str = "") -> int:
    """Record a reviewer's decision on an audit item; returns the review id. A rejected or
    edited audit marks the output rejected or edited (the cache no longer serves a rejected one).
    Raises `ReviewError` when someone decided it meanwhile."""
    from ._review import ReviewError

    state = {"approve": "approved", "edit": "edited", "reject": "rejected"}.get(action)
    if state is None:
        raise ReviewError(f"an audit item is approved, edited or rejected, not {action!r}")
    with store.transaction():
        claimed = store.execute(
            "UPDATE audits SET status='decided' WHERE result_id=? AND status='open'", (row["id"],)
        )
        if claimed.rowcount != 1:
            raise ReviewError(f"audit #{row['id']} ({row['step']}) is already decided")
        if action == "edit":
            store.update_output(row["id"], after, state)
        elif action == "reject":
            store.execute("UPDATE results SET state=? WHERE id=?", (state, row["id"]))
        return store.record_review(row["id"], f"audit-{action}", before, after, note)


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of ``k`` successes in ``n``."""
    if n == 0:
        return None
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n * n)) / (1 + Z**2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """Cohen's kappa of gate (pass/flag) against reviewer (accept/not) over a 2×2 table."""
    n = tp + fp + fn + tn
    if n == 0:
        return None
    observed = (tp + tn) / n
    gate_pass, human_accept = (tp + fp) / n, (tp + fn) / n
    expected = gate_pass * human_accept + (1 - gate_pass) * (1 - human_accept)
    return None if expected == 1 else round((observed - expected) / (1 - expected), 4)


def calibration(store, first_pass: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Per step: its gates' agreement with reviewers, and the audited first-pass yield.

    ``first_pass`` is each step's (first-pass outputs, fresh outputs) from the report; an audit
    a reviewer overturned counts there as not first-pass, but the gates passed it, so it is
    added back before the measured false-pass rate is applied to all of them. Returns
    ``{step: {"gates": {gate: {...}}, "audits", "audits_reviewed", "false_pass_rate",
    "audited_first_pass_yield", "interval", "note"}}``.
    """
    try:
        rows = store.query(
            "SELECT rv.result_id, rv.decision, r.step, r.gates, a.result_id AS audited, "
            "a.status AS audit_status FROM reviews rv JOIN results r ON r.id = rv.result_id "
            "LEFT JOIN audits a ON a.result_id = rv.result_id ORDER BY rv.id"
        )
        audit_rows = store.query("SELECT step, status FROM audits")
    except Exception:  # noqa: BLE001 - an older, read-only store without the table
        return {}
    seen: set[int] = set()
    out: dict[str, Any] = {}
    for r in rows:
        if r["result_id"] in seen:
            continue
        seen.add(r["result_id"])
        decision = r["decision"].removeprefix("audit-")
        if decision not in ("approve", "edit", "reject"):
            continue  # a re-run says nothing about the output
        accept = decision == "approve"
        step = out.setdefault(r["step"], _empty())
        for g in json.loads(r["gates"] or "[]"):
            s = step["gates"].setdefault(g["name"], {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
            s[("t" if g.get("passed") == accept else "f") + ("p" if g.get("passed") else "n")] += 1
        if r["audited"] is not None:
            step["audits_reviewed"] += 1
            step["false_passes"] += not accept
    for a in audit_rows:
        out.setdefault(a["step"], _empty())["audits"] += 1
    for name, step in out.items():
        for gate, s in step["gates"].items():
            n = sum(s.values())
            step["gates"][gate] = {
                "reviewed": n,
                "agreement": round((s["tp"] + s["tn"]) / n, 4) if n else None,
                "false_passes": s["fp"],
                "false_flags": s["fn"],
                "kappa": kappa(s["tp"], s["fp"], s["fn"], s["tn"]),
            }
        n, k = step["audits_reviewed"], step["false_passes"]
        first, runs = first_pass.get(name, (0, 0))
        fpy = (first + k) / runs if runs else None  # the gates' own first-pass yield
        interval = wilson(k, n)
        step["false_pass_rate"] = round(k / n, 4) if n else None
        if fpy is not None and interval is not None:
            step["audited_first_pass_yield"] = round(fpy * (1 - k / n), 4)
            step["interval"] = [
                round(fpy * (1 - interval[1]), 4),
                round(fpy * (1 - interval[0]), 4),
            ]
        if n < NEEDED_FOR_10_POINTS:
            step["note"] = (
                f"{n} audits reviewed: about {NEEDED_FOR_10_POINTS - n} more give a ±10-point "
                "interval on the false-pass rate"
            )
    return out


def _empty() -> dict[str, Any]:
    return {
        "gates": {},
        "audits": 0,
        "audits_reviewed": 0,
        "false_passes": 0,
        "false_pass_rate": None,
        "audited_first_pass_yield": None,
        "interval": None,
        "note": None,
    }


def calibration_text(cal: dict[str, Any]) -> str:
    """The calibration as lines under the report table."""
    lines = ["judge calibration (reviewer decisions on audits and flagged items):"]
    for step, s in cal.items():
        for gate, g in s["gates"].items():
            agreement = "—" if g["agreement"] is None else f"{g['agreement']:.0%}"
            kap = "—" if g["kappa"] is None else f"{g['kappa']:.2f}"
            lines.append(
                f"  {step} / {gate}: {g['reviewed']} reviewed, agreement {agreement}, "
                f"{g['false_passes']} false passes, {g['false_flags']} false flags, kappa {kap}"
            )
        if s["audited_first_pass_yield"] is not None:
            lo, hi = s["interval"]
            lines.append(
                f"  {step}: audited first-pass yield {s['audited_first_pass_yield']:.0%} "
                f"[{lo:.0%}, {hi:.0%}] ({s['false_passes']} of {s['audits_reviewed']} audits failed)"
            )
        if s["note"]:
            lines.append(f"  {step}: {s['audits']} audit items; {s['note']}")
    return "\n".join(lines)
