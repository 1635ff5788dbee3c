"""Blind pairwise review by people: two variants' outputs for one brief, names hidden, in random
order; the preferences recorded in the store, and their figures next to the judge's.

`pending` lists what is left to decide in an experiment (each non-base variant against base,
row by row); `Task.decide` records a choice (A, B, tie, both bad) with who and when;
`human_figures` gives the people's wins, losses, ties, win rate and agreement with the pairwise
judge where both have answered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ._errors import OptionError
from ._redact import redact
from .store._experiments import CHOICES, experiment_prefs, record_preference


@dataclass
class Task:
    """One blind comparison: ``a`` and ``b`` are the outputs as shown; the names stay hidden
    until decided (`names`)."""

    experiment_id: str
    row_index: int
    brief: str
    a: str
    b: str
    variant: str  # the variant compared with ``vs``
    vs: str
    first: str  # which of the two is shown as A

    def names(self) -> tuple[str, str]:
        """(the name behind A, the name behind B): shown once decided."""
        return (self.first, self.vs if self.first == self.variant else self.variant)

    def decide(self, store, choice: str) -> str:
        """Record ``choice`` (A, B, tie, both bad); returns the winner's name, ``tie`` or
        ``both bad``. Raises `OptionError` for another answer or a pair decided already."""
        if choice not in CHOICES:
            raise OptionError(f"a preference is one of {', '.join(CHOICES)}, got {choice!r}")
        a, b = self.names()
        winner = {"A": a, "B": b}.get(choice, choice)
        if not record_preference(
            store, self.experiment_id, self.row_index, self.variant, self.vs, winner, self.first
        ):
            raise OptionError(f"brief {self.row_index} ({self.variant} vs {self.vs}) is decided")
        return winner


def pending(comparison, store, seed: int | None = None) -> list[Task]:
    """What is left to decide in ``comparison``, in random order with random sides."""
    rng = random.Random(seed)
    done = {
        (p["row_index"], p["variant"]) for p in experiment_prefs(store, comparison.experiment_id)
    }
    base = comparison.variants[0]
    outputs = {
        (c["row_index"], c["variant"]): c for c in comparison.cells if c["repeat_index"] == 0
    }
    tasks = []
    for (row, variant), cell in sorted(outputs.items()):
        if variant == base or (row, variant) in done or (row, base) not in outputs:
            continue
        mine, theirs = redact(cell["output"] or ""), redact(outputs[row, base]["output"] or "")
        first = rng.choice([variant, base])
        a, b = (mine, theirs) if first == variant else (theirs, mine)
        brief = redact("; ".join(f"{k}: {v}" for k, v in (cell.get("params") or {}).items()))
        tasks.append(Task(comparison.experiment_id, row, brief, a, b, variant, base, first))
    rng.shuffle(tasks)
    return tasks


def human_figures(
    variant: str, base: str, prefs: list[dict[str, Any]], pairs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """People's verdicts on ``variant`` against ``base``; None when nobody has decided one."""
    mine = [p for p in prefs if p["variant"] == variant and p["vs"] == base]
    if not mine:
        return None
    wins = sum(p["choice"] == variant for p in mine)
    losses = sum(p["choice"] == base for p in mine)
    both_bad = sum(p["choice"] == "both bad" for p in mine)
    ties = len(mine) - wins - losses - both_bad
    judge = {p["row_index"]: p["winner"] for p in pairs if p["variant"] == variant}
    both = [p for p in mine if p["row_index"] in judge]
    agree = sum(
        judge[p["row_index"]] == ("tie" if p["choice"] == "both bad" else p["choice"]) for p in both
    )
    return {
        "decided": len(mine),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "both_bad": both_bad,
        "win_rate": round((wins + (ties + both_bad) / 2) / len(mine), 4),
        "agreement_with_judge": round(agree / len(both), 4) if both else None,
        "reviewers": sorted({p["reviewer"] or "?" for p in mine}),
    }
