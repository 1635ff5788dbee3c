"""Small, exact statistics for compares and evals: a sign test, a bootstrap interval, percentiles.

Standard library only (``math.comb``); deterministic (the bootstrap uses a fixed seed), so the
same scores always give the same figures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

MIN_ROWS = 6  # under this many paired rows a sign test cannot reach p < 0.05 (2 / 2**5 = 0.0625)
ALPHA = 0.05


def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign test p-value of ``wins`` against ``losses`` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the mean (None for no values)."""
    if not values:
        return None
    if len(values) == 1 or len(set(values)) == 1:
        return (values[0], values[0])
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def paired(
    a: dict[int, float], b: dict[int, float], eps: float = 1e-9
) -> tuple[int, int, int, float]:
    """(wins of ``a``, losses, ties, sign-test p) over the rows both have a score for."""
    wins = losses = ties = 0
    for row in sorted(a.keys() & b.keys()):
        d = a[row] - b[row]
        if d > eps:
            wins += 1
        elif d < -eps:
            losses += 1
        else:
            ties += 1
    return wins, losses, ties, sign_test(wins, losses)


def verdict_sentence(
    name: str, base: str, wins: int, losses: int, ties: int, p: float, unit: str = "briefs"
) -> tuple[str, str | None]:
    """(the sentence users read, the winner or None) for a paired comparison."""
    n = wins + losses + ties
    if n < MIN_ROWS:
        return (f"{name} vs {base}: too few rows to tell ({n} paired; need {MIN_ROWS})", None)
    if p < ALPHA and wins != losses:
        winner, loser, w = (name, base, wins) if wins > losses else (base, name, losses)
        return (f"{winner} beats {loser} on {w} of {n} {unit}, {p_text(p)}, sign test", winner)
    return (
        f"{name} vs {base}: no significant difference ({wins} wins, {losses} losses, {ties} ties, "
        f"{p_text(p)}, sign test)",
        None,
    )


def p_text(p: float) -> str:
    """``p = 0.04``, ``p = 0.008``, ``p < 0.001``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"
