"""The rubric gate: an LLM judge scores a step's output against a rubric (``%%rubric``).

The judge answers through structured output (a ``Verdict``: score in [0, 1], feedback, a
suggested edit), through the same provider pool as the steps, so aliases, concurrency limits,
cooldowns, pricing and test servers apply to it too. Its tokens and cost are reported on the
`GateResult` and folded by the ladder into the attempt it judged.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import _trace
from .._errors import OutputError, ProviderError
from .._format import strip_fence
from .._ladder import GateError, pause_for_retry
from .._pricing import cost_of
from .._types import GateResult, Request, Rubric, Usage
from ._rules import _text

if TYPE_CHECKING:
    from .._ladder import GateContext

#: The judge's answer. Every field required, no extras: accepted by strict structured outputs.
VERDICT_SCHEMA: dict = {
    "title": "Verdict",
    "type": "object",
    "properties": {
        "score": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "How well the output meets the rubric: 1 = every line fully met, 0 = none.",
        },
        "feedback": {
            "type": "string",
            "description": "Which rubric lines are not met and why, quoting them; what to change.",
        },
        "suggested_edit": {
            "type": "string",
            "description": "A concrete edit that would make the output pass (rewritten passage or "
            "exact change); empty when nothing needs changing.",
        },
    },
    "required": ["score", "feedback", "suggested_edit"],
    "additionalProperties": False,
}

JUDGE_SYSTEM = (
    "You are a strict, fair reviewer. You judge one output against a rubric and answer only with "
    "a Verdict: a score from 0 to 1 (1 means every rubric line is fully met), feedback that names "
    "the rubric lines the output misses and why, and a concrete suggested edit that would fix it."
)

#: The judge's token limit unless ``%%rubric --max-tokens`` says otherwise. Its attempts per
#: verdict follow the step's ``--retries`` (1 + N), through the ladder's `pause_for_retry`.
JUDGE_MAX_TOKENS = 1024


def judge_prompt(rubric: str, task: str, output: str) -> str:
    """The judge's user turn. The tags delimit what is judged from what it is judged against."""
    task_part = f"<task>\n{task.strip()}\n</task>\n\n" if task and task.strip() else ""
    return (
        "Judge the output below against the rubric.\n\n"
        f"<rubric>\n{rubric.strip()}\n</rubric>\n\n"
        f"{task_part}"
        f"<output>\n{output}\n</output>\n\n"
        "Score each rubric line, then give one overall score from 0 to 1. In feedback, quote the rubric "
        "lines the output misses. In suggested_edit, write the change that would make it pass."
    )


def parse_verdict(data: Any, text: str) -> tuple[float, str, str]:
    """(score, feedback, suggested edit) from a judge's answer; raises `OutputError`."""
    if not isinstance(data, dict):
        try:
            data = json.loads(strip_fence(text or ""))
        except ValueError:
            raise OutputError(
                f"the judge did not answer with a Verdict (JSON): {text[:120]!r}"
            ) from None
    if not isinstance(data, dict) or "score" not in data:
        raise OutputError(f"the judge's verdict has no score: {str(data)[:120]}")
    score = data["score"]
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            pass
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise OutputError(f"the judge's score {data['score']!r} is not a number between 0 and 1")
    return (
        float(score),
        str(data.get("feedback") or "").strip(),
        str(data.get("suggested_edit") or "").strip(),
    )


class RubricGate:
    """``%%rubric``: passes when the judge's score reaches the rubric's threshold."""

    name = "rubric"

    def __init__(self, rubric: Rubric):
        self.rubric = rubric

    async def check(self, output: Any, ctx: GateContext) -> GateResult:
        """The judge's verdict as a `GateResult` (with the judge's usage and cost).

        Raises `GateError` (with the usage and cost of the judge's calls) naming the judge when
        it gives no verdict in ``1 + step.retries`` attempts: an unreachable or misconfigured
        judge is an error to fix, not a verdict on the output.
        """
        pool = ctx.pool
        ref = pool.resolve(self.rubric.judge or "judge")
        provider = pool.provider(ref)
        request = Request(
            model=ref.model,
            prompt=judge_prompt(self.rubric.text, ctx.prompt, ctx.text or _text(output)),
            system=JUDGE_SYSTEM,
            json=True,
            schema=VERDICT_SCHEMA,
            schema_name="Verdict",
            max_tokens=self.rubric.max_tokens or JUDGE_MAX_TOKENS,
        )
        policy = pool.config.retry
        retries = ctx.step.retries  # the step's retry policy: 1 + --retries attempts per verdict
        usage, cost, calls = Usage(), 0.0, 0
        error: ProviderError | None = None
        for n in range(1 + retries):
            calls += 1
            try:
                async with pool.slot(ref):
                    call = provider.complete(request)
                    response = await _trace.call(
                        call, ref, request, pool, attempt=n + 1, role="judge"
                    )
                pool.succeeded(ref.provider)
                spent = response.usage
                call_cost = (
                    response.cost
                    if response.cost is not None
                    else cost_of(
                        ref, spent, pool.config, batch=pool.batched(ref), served=response.model
                    )
                )
                usage, cost = (
                    usage + spent,
                    None if cost is None or call_cost is None else cost + call_cost,
                )
                score, feedback, suggestion = parse_verdict(response.data, response.text)
            except ProviderError as exc:
                error = exc
                spent = exc.usage  # an unusable answer was still billed
                if spent is not None and spent.total:
                    call_cost = cost_of(ref, spent, pool.config, batch=pool.batched(ref))
                    usage, cost = (
                        usage + spent,
                        None if cost is None or call_cost is None else cost + call_cost,
                    )
                if isinstance(exc, OutputError):  # an answer, unusable: ask again, saying why
                    request.feedback = f"Your answer was not a valid Verdict: {exc}"
                    continue
                if exc.retryable:
                    pool.failed(ref.provider)
                if not await pause_for_retry(exc, n, retries, policy):
                    break
                continue
            passed = score >= self.rubric.threshold
            if not passed and not feedback:
                feedback = f"scored {score:.2f}, below the threshold {self.rubric.threshold:.2f}"
            return GateResult(self.name, passed, score, feedback, suggestion or None, usage, cost)
        detail = f"{type(error).__name__}: {error}"
        if "raise --max-tokens" in detail:
            detail = detail.replace(
                "raise --max-tokens",
                f"raise %%rubric {ctx.step.name} --max-tokens (now {request.max_tokens})",
            )
        raise GateError(
            ctx.step.name,
            f"the rubric judge `{ref.spec}` gave no verdict after {calls} "
            f"{'try' if calls == 1 else 'tries'}: {detail}",
            usage=usage,
            cost=cost,
            calls=calls,
            cause=error,
        )
