"""The pairwise judge: which of two outputs for the same brief is better, asked in both orders.

A judge model sees output A and output B and answers a ``Preference`` (``better``: A, B or tie,
and a short reason) through structured output and the pool, like the rubric judge. Each pair is
judged twice with the outputs swapped; a preference that flips with the order is position bias,
and counts as a tie.
"""

from __future__ import annotations

import json
from typing import Any

from .. import _stats, _trace
from .._errors import OutputError, ProviderError
from .._ladder import pause_for_retry
from .._types import Request

PREFERENCE_SCHEMA: dict = {
    "title": "Preference",
    "type": "object",
    "properties": {
        "better": {"type": "string", "enum": ["A", "B", "tie"]},
        "reason": {"type": "string", "description": "One or two sentences: why."},
    },
    "required": ["better", "reason"],
    "additionalProperties": False,
}
PAIRWISE_SYSTEM = (
    "You are a strict, fair reviewer. You compare two outputs written for the same brief and say "
    "which is better, or tie when neither is. Judge content, not position or length."
)
MAX_TOKENS = 512


def pairwise_prompt(task: str, a: str, b: str) -> str:
    """The judge's user turn: the brief and the two outputs, each in its own tags."""
    return (
        "Which output serves the brief better?\n\n"
        f"<brief>\n{task.strip()}\n</brief>\n\n"
        f"<output_a>\n{a}\n</output_a>\n\n<output_b>\n{b}\n</output_b>\n\n"
        "Answer with better = A, B or tie, and a short reason."
    )


def parse_preference(data: Any, text: str) -> tuple[str, str]:
    """(A | B | tie, reason) from the judge's answer; raises `OutputError`."""
    if not isinstance(data, dict):
        try:
            data = json.loads((text or "").strip())
        except ValueError:
            raise OutputError("the pairwise judge did not answer with a Preference") from None
    better = str(data.get("better", "")).strip() if isinstance(data, dict) else ""
    if better.lower() == "tie":
        better = "tie"
    if better not in ("A", "B", "tie"):
        raise OutputError(f"the pairwise judge answered better={better!r}, not A, B or tie")
    return better, str(data.get("reason") or "").strip()


async def prefer(pool, spec: str, task: str, a: str, b: str, retries: int = 2) -> tuple[str, str]:
    """One judgement of A against B; raises the last `ProviderError` when none is usable."""
    ref = pool.resolve(spec)
    provider = pool.provider(ref)
    request = Request(
        model=ref.model,
        prompt=pairwise_prompt(task, a, b),
        system=PAIRWISE_SYSTEM,
        json=True,
        schema=PREFERENCE_SCHEMA,
        schema_name="Preference",
        max_tokens=MAX_TOKENS,
    )
    error: ProviderError | None = None
    for n in range(1 + retries):
        try:
            async with pool.slot(ref):
                call = provider.complete(request)
                response = await _trace.call(call, ref, request, pool, attempt=n + 1, role="judge")
            pool.succeeded(ref.provider)
            return parse_preference(response.data, response.text)
        except ProviderError as exc:
            error = exc
            if isinstance(exc, OutputError):
                request.feedback = f"Your answer was not a valid Preference: {exc}"
                continue
            if exc.retryable:
                pool.failed(ref.provider)
            if not await pause_for_retry(exc, n, retries, pool.config.retry):
                break
    assert error is not None
    raise error


async def judge_pair(pool, spec: str, task: str, first: str, second: str) -> dict[str, Any]:
    """``{"winner": "first" | "second" | "tie", "flipped", "reasons"}`` from both orders."""
    one, why_one = await prefer(pool, spec, task, first, second)
    two, why_two = await prefer(pool, spec, task, second, first)
    as_first = {"A": "first", "B": "second", "tie": "tie"}[one]
    as_second = {"A": "second", "B": "first", "tie": "tie"}[two]
    flipped = as_first != as_second and "tie" not in (as_first, as_second)
    return {
        "winner": as_first if as_first == as_second else "tie",
        "flipped": flipped,
        "reasons": [why_one, why_two],
    }


def pairwise_figures(variant: str, base: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pairwise judge's wins, losses and ties of ``variant`` against ``base``, its win rate
    (a tie counts half), the sign test and the order flips (position bias, counted as ties)."""
    wins = sum(p["winner"] == variant for p in pairs)
    losses = sum(p["winner"] == base for p in pairs)
    ties = len(pairs) - wins - losses
    p = _stats.sign_test(wins, losses)
    sentence, winner = _stats.verdict_sentence(variant, base, wins, losses, ties, p)
    return {
        "judge": pairs[0]["judge"],
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "flips": sum(p["flipped"] for p in pairs),
        "win_rate": round((wins + ties / 2) / len(pairs), 4),
        "p_value": round(p, 4),
        "winner": winner,
        "sentence": f"pairwise judge: {sentence}",
    }
