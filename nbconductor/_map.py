"""A ``--map`` step's result from its items' results (each item is run and stored on its own)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from ._states import CACHED, FAILED, FLAGGED, PASSED
from ._types import Step, StepResult, Usage


def combine_items(step: Step, parts: list[StepResult], items: list, started: float) -> StepResult:
    """The map step's result from its items'. Usage, cost and attempts are the fresh items' only:
    a reused item was paid for by the run that made it."""
    states = {p.state for p in parts}
    state = (
        FAILED
        if FAILED in states
        else FLAGGED
        if FLAGGED in states
        else (CACHED if states == {CACHED} else PASSED)
    )
    fresh = [p for p in parts if not p.cached]
    usage = Usage() if fresh else Usage(0, 0)
    cost: float | None = 0.0
    for p in fresh:
        usage = usage + p.usage
        cost = None if cost is None or p.cost is None else cost + p.cost
    prefix = f"step `{step.name}` failed: "
    errors = [
        f"item {i} ({_short(items[i])}) failed: {p.error.removeprefix(prefix)}"
        for i, p in enumerate(parts)
        if p.error
    ]
    if errors and state == FAILED:
        kept = sum(1 for p in parts if p.state != FAILED)
        errors.append(
            f"the other {kept} item{' is' if kept == 1 else 's are'} kept and reused on the next run"
        )
    key = hashlib.sha256("".join(p.cache_key or "" for p in parts).encode()).hexdigest()
    return StepResult(
        step.name,
        state,
        [p.output for p in parts],
        prompt=parts[0].prompt if parts else None,
        model=", ".join(dict.fromkeys(p.model for p in parts if p.model)) or None,
        attempts=[a for p in fresh for a in p.attempts],
        gates=[g for p in parts for g in p.gates],
        usage=usage,
        cost=cost,
        started=started,
        ended=time.time(),
        error="; ".join(errors) or None,
        cache_key=key,
        cached=all(p.cached for p in parts) and bool(parts),
        items=len(parts),
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
