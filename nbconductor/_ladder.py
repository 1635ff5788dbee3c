"""The attempt ladder: retries, gates, fallbacks — owned once, above the providers.

For each model (the step's model, then each ``--fallback``), up to ``1 + retries`` attempts.
An attempt fails on a retryable provider error (waiting ``retry-after`` when the server says,
exponential backoff with jitter otherwise), on unusable output, or on a failed gate (whose
feedback goes into the next attempt's prompt). A non-retryable error moves to the next model
at once. When every model is exhausted, a gate failure is flagged for review (``--on-fail
review``) or fails the step; any other failure fails the step. `pause_for_retry` is the one
retry policy (attempts, ``retry-after``, backoff); the rubric judge's calls use it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import _trace
from ._config import ModelRef, RetryPolicy
from ._errors import GateError, LadderFailed, OutputError, ProviderError
from ._pool import ProviderPool
from ._pricing import cost_of
from ._types import Attempt, GateResult, Request, Response, Step, Usage


class Gate(Protocol):
    name: str

    async def check(self, output: Any, ctx: GateContext) -> GateResult: ...


@dataclass
class GateContext:
    step: Step
    prompt: str
    text: str
    pool: ProviderPool
    namespace: dict = field(default_factory=dict)


@dataclass
class Outcome:
    state: str  # passed | flagged
    output: Any
    model: str
    attempts: list[Attempt]
    gates: list[GateResult]
    usage: Usage
    cost: float | None


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for attempt number ``attempt`` (0-based)."""
    return random.uniform(0, min(cap, base * 2**attempt))


async def pause_for_retry(exc: ProviderError, n: int, retries: int, policy: RetryPolicy) -> bool:
    """The retry policy, once for the ladder and the judge: after attempt ``n`` (0-based) of
    ``1 + retries`` failed with ``exc``, wait as the server asks (``retry-after``) or back off,
    and return True; return False at once when no attempt is left, ``exc`` is not retryable, or
    the server asks for a longer wait than the policy allows."""
    if not exc.retryable or n >= retries:
        return False
    if exc.retry_after is not None:
        if exc.retry_after > policy.max_retry_after:
            return False
        await asyncio.sleep(exc.retry_after)
        _trace.waited(exc.retry_after)
    else:
        await asyncio.sleep(backoff(n, policy.base_delay, policy.max_delay))
    return True


async def run_ladder(
    step: Step,
    request: Request,
    models: list[ModelRef],
    pool: ProviderPool,
    parse: Callable[[Response], Any],
    gates: list[Gate] = (),
    namespace: dict | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    image: bool = False,
) -> Outcome:
    """Run one step's request through the ladder; returns an `Outcome` or raises `LadderFailed`."""
    policy = pool.config.retry
    attempts: list[Attempt] = []
    usage = Usage()
    total_cost: float | None = 0.0
    feedback: str | None = None
    last_gates: list[GateResult] = []
    last_output: Any = None
    last_error: BaseException | None = None
    last_model = ""  # last_gates/last_output/last_model: the latest output a gate rejected

    for index, ref in enumerate(models):
        if pool.cooling(ref.provider) and index < len(models) - 1:
            attempts.append(_skipped(ref))
            continue
        provider = pool.provider(ref)
        for n in range(1 + step.retries):
            req = dataclasses.replace(request, model=ref.model, feedback=feedback)
            started = time.time()
            response: Response | None = None
            try:
                async with pool.slot(ref):
                    call = provider.image(req) if image else provider.complete(req)
                    response = await _trace.call(
                        call, ref, req, pool, attempt=n + 1, fallback=index, image=image
                    )
                output = parse(response)
            except ProviderError as exc:
                exc.provider = exc.provider or ref.provider
                exc.model = exc.model or ref.model
                last_error = exc
                # An unusable answer still cost tokens: they count, per attempt and in the total.
                # No answer and no usage reported: nothing was billed (0 tokens, $0).
                spent = response.usage if response is not None else exc.usage or Usage(0, 0)
                spent_cost = _spent_cost(ref, response, spent, pool, image)
                usage = usage + spent
                if spent_cost is not None and total_cost is not None:
                    total_cost += spent_cost
                att = Attempt(
                    ref.spec,
                    started,
                    time.time(),
                    "error",
                    f"{type(exc).__name__}: {exc}",
                    spent,
                    spent_cost,
                )
                attempts.append(att)
                if on_attempt:
                    on_attempt(att)
                if isinstance(exc, OutputError):
                    feedback = f"Your output was not valid: {exc}"
                elif exc.retryable:
                    pool.failed(ref.provider)
                if not await pause_for_retry(exc, n, step.retries, policy):
                    break  # not retryable, none left, or a longer wait than we allow: fall back
                continue
            pool.succeeded(ref.provider)
            call_cost = _spent_cost(ref, response, response.usage, pool, image)
            call_usage = response.usage
            results = []
            ctx = GateContext(step, req.prompt, response.text, pool, namespace or {})
            try:
                for gate in gates:
                    results.append(await gate.check(output, ctx))
            except GateError as exc:
                # The judge gave no verdict, but the answer and the judge's calls were billed.
                call_usage, call_cost = call_usage + exc.usage, _add_cost(call_cost, exc.cost)
                usage, total_cost = usage + call_usage, _add_cost(total_cost, call_cost)
                att = Attempt(
                    ref.spec,
                    started,
                    time.time(),
                    "error",
                    f"GateError: {exc.reason}",
                    call_usage,
                    call_cost,
                )
                attempts.append(att)
                if on_attempt:
                    on_attempt(att)
                raise LadderFailed(
                    step.name, exc.reason, attempts, results, output, exc, prompt=request.prompt
                ) from None
            _trace.gates(results)
            for g in results:  # a judge's tokens and cost belong to the attempt it judged
                if g.usage is not None:
                    call_usage = call_usage + g.usage
                    call_cost = _add_cost(call_cost, g.cost)
            usage = usage + call_usage
            total_cost = _add_cost(total_cost, call_cost)
            passed = all(g.passed for g in results)
            att = Attempt(
                ref.spec,
                started,
                time.time(),
                "passed" if passed else "gate",
                None if passed else "; ".join(g.feedback for g in results if not g.passed),
                call_usage,
                call_cost,
            )
            attempts.append(att)
            if on_attempt:
                on_attempt(att)
            if passed:
                return Outcome(
                    "passed",
                    output,
                    response.model or ref.spec,
                    attempts,
                    results,
                    usage,
                    total_cost,
                )
            last_gates, last_output = results, output
            last_model = response.model or ref.spec
            feedback = "\n".join(
                f"- {g.name}: {g.feedback}"
                + (f"\n  Suggested edit: {g.suggestion}" if g.suggestion else "")
                for g in results
                if not g.passed
            )
            if step.on_fail == "fallback":
                break
        if last_gates and step.on_fail == "retry":
            break

    # An output that a gate rejected beats none: if a fallback then failed outright, the
    # rejected output is still what goes to review (or names the failure).
    if last_gates and step.on_fail == "review":
        return Outcome("flagged", last_output, last_model, attempts, last_gates, usage, total_cost)
    if last_gates:
        detail = "; ".join(
            f"{g.name}"
            + (f" scored {g.score:.2f}" if g.score is not None else "")
            + f": {g.feedback}"
            for g in last_gates
            if not g.passed
        )
        raise LadderFailed(
            step.name,
            f"did not pass its gates after {_attempts(attempts)} ({detail})",
            attempts,
            last_gates,
            last_output,
            prompt=request.prompt,
        )
    tried = ", ".join(dict.fromkeys(a.model for a in attempts))
    raise LadderFailed(
        step.name,
        f"{last_error} (after {_attempts(attempts)}; models tried: {tried})",
        attempts,
        [],
        None,
        last_error,
        prompt=request.prompt,
    )


def _add_cost(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _attempts(attempts: list[Attempt]) -> str:
    n = len(attempts)
    return f"{n} attempt{'' if n == 1 else 's'}"


def _skipped(ref: ModelRef) -> Attempt:
    now = time.time()
    return Attempt(
        ref.spec,
        now,
        now,
        "skipped",
        f"provider `{ref.provider}` is cooling down after repeated failures",
    )


def _spent_cost(
    ref: ModelRef, response: Response | None, usage: Usage, pool: ProviderPool, image: bool
) -> float | None:
    """The cost of one attempt: what the provider said, else priced from usage (None: unknown)."""
    if response is not None and response.cost is not None:
        return response.cost
    if response is None and not usage.total:
        return 0.0  # no answer and no tokens reported: nothing to bill
    return cost_of(
        ref,
        usage,
        pool.config,
        images=1 if image and response is not None else 0,
        batch=pool.batched(ref),
        served=response.model if response is not None else None,
    )
