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
from ._states import FLAGGED, PASSED, SKIPPED
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


@dataclass
class Verdict:
    """What a step's gates said of one output: their results (those that ran) and, when a
    judge gave no verdict, the `GateError` that stopped them."""

    results: list[GateResult]
    error: GateError | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(g.passed for g in self.results)

    def failures(self) -> str:
        """The feedback of every gate that failed, ``; ``-joined."""
        return "; ".join(g.feedback for g in self.results if not g.passed)


async def evaluate_gates(gates: list[Gate], output: Any, ctx: GateContext) -> Verdict:
    """Run ``gates`` on ``output`` in order, once for model and Python steps; a judge that gives
    no verdict (`GateError`) stops them and is returned in the verdict, not raised."""
    results: list[GateResult] = []
    try:
        for gate in gates:
            results.append(await gate.check(output, ctx))
    except GateError as exc:
        return Verdict(results, exc)
    _trace.gates(results)
    return Verdict(results)


def charge(
    usage: Usage, cost: float | None, results: list[GateResult]
) -> tuple[Usage, float | None]:
    """``usage`` and ``cost`` with a judge's tokens and cost added: they belong to the attempt
    it judged."""
    for g in results:
        if g.usage is not None:
            usage, cost = usage + g.usage, _add_cost(cost, g.cost)
    return usage, cost


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
    ladder = _Ladder(step, request, pool, parse, list(gates), namespace or {}, on_attempt, image)
    for index, ref in enumerate(models):
        if pool.cooling(ref.provider) and index < len(models) - 1:
            ladder.attempts.append(_skipped(ref))
            continue
        outcome = await ladder.climb(ref, index)
        if outcome is not None:
            return outcome
        if ladder.rejected and step.on_fail == "retry":
            break
    return ladder.give_up()


@dataclass
class _Ladder:
    """One step's way down the ladder: what it has tried and spent, and the latest output a
    gate rejected (`rejected`, `last_output`, `last_model`)."""

    step: Step
    request: Request
    pool: ProviderPool
    parse: Callable[[Response], Any]
    gates: list[Gate]
    namespace: dict
    on_attempt: Callable[[Attempt], None] | None
    image: bool
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = 0.0
    feedback: str | None = None
    rejected: list[GateResult] = field(default_factory=list)
    last_output: Any = None
    last_model: str = ""
    last_error: BaseException | None = None

    async def climb(self, ref: ModelRef, index: int) -> Outcome | None:
        """Up to ``1 + retries`` attempts on model ``ref`` (the ``index``-th of the ladder); an
        `Outcome` when one passed its gates, else None (go on to the next model)."""
        provider = self.pool.provider(ref)
        for n in range(1 + self.step.retries):
            req = dataclasses.replace(self.request, model=ref.model, feedback=self.feedback)
            started = time.time()
            response, output, error = await self.attempt(provider, ref, req, n, index)
            if error is not None:
                if not await self.failed(error, ref, response, started, n):
                    break  # not retryable, none left, or a longer wait than we allow: fall back
                continue
            self.pool.succeeded(ref.provider)
            outcome = await self.judge(ref, req, response, output, started)
            if outcome is not None:
                return outcome
            if self.step.on_fail == "fallback":
                break
        return None

    async def attempt(
        self, provider: Any, ref: ModelRef, req: Request, n: int, index: int
    ) -> tuple[Response | None, Any, ProviderError | None]:
        """One attempt: send ``req`` and parse the answer; returns (response, output, error)."""
        response: Response | None = None
        try:
            async with self.pool.slot(ref):
                call = provider.image(req) if self.image else provider.complete(req)
                response = await _trace.call(
                    call, ref, req, self.pool, attempt=n + 1, fallback=index, image=self.image
                )
            return response, self.parse(response), None
        except ProviderError as exc:
            return response, None, exc

    async def failed(
        self,
        exc: ProviderError,
        ref: ModelRef,
        response: Response | None,
        started: float,
        n: int,
    ) -> bool:
        """Record an attempt that got no usable answer; True when another attempt may follow."""
        exc.provider = exc.provider or ref.provider
        exc.model = exc.model or ref.model
        self.last_error = exc
        # An unusable answer still cost tokens: they count, per attempt and in the total.
        # No answer and no usage reported: nothing was billed (0 tokens, $0).
        spent = response.usage if response is not None else exc.usage or Usage(0, 0)
        spent_cost = _spent_cost(ref, response, spent, self.pool, self.image)
        self.usage = self.usage + spent
        if spent_cost is not None and self.cost is not None:
            self.cost += spent_cost
        self._record(ref, started, "error", f"{type(exc).__name__}: {exc}", spent, spent_cost)
        if isinstance(exc, OutputError):
            self.feedback = f"Your output was not valid: {exc}"
        elif exc.retryable:
            self.pool.failed(ref.provider)
        return await pause_for_retry(exc, n, self.step.retries, self.pool.config.retry)

    async def judge(
        self, ref: ModelRef, req: Request, response: Response, output: Any, started: float
    ) -> Outcome | None:
        """Evaluate the gates on an answer; an `Outcome` when it passed, else None (the
        gates' feedback goes into the next attempt). Raises `LadderFailed` when a judge gave
        no verdict."""
        call_cost = _spent_cost(ref, response, response.usage, self.pool, self.image)
        ctx = GateContext(self.step, req.prompt, response.text, self.pool, self.namespace)
        verdict = await evaluate_gates(self.gates, output, ctx)
        if verdict.error is not None:
            exc = verdict.error
            # The judge gave no verdict, but the answer and the judge's calls were billed.
            call_usage, call_cost = response.usage + exc.usage, _add_cost(call_cost, exc.cost)
            self._spend(call_usage, call_cost)
            self._record(ref, started, "error", f"GateError: {exc.reason}", call_usage, call_cost)
            raise LadderFailed(
                self.step.name,
                exc.reason,
                self.attempts,
                verdict.results,
                output,
                exc,
                prompt=self.request.prompt,
            ) from None
        call_usage, call_cost = charge(response.usage, call_cost, verdict.results)
        self._spend(call_usage, call_cost)
        passed = verdict.passed
        state, detail = (PASSED, None) if passed else ("gate", verdict.failures())
        self._record(ref, started, state, detail, call_usage, call_cost)
        model = response.model or ref.spec
        if passed:
            return Outcome(
                PASSED, output, model, self.attempts, verdict.results, self.usage, self.cost
            )
        self.rejected, self.last_output, self.last_model = verdict.results, output, model
        self.feedback = "\n".join(
            f"- {g.name}: {g.feedback}"
            + (f"\n  Suggested edit: {g.suggestion}" if g.suggestion else "")
            for g in verdict.results
            if not g.passed
        )
        return None

    def give_up(self) -> Outcome:
        """After every model: the rejected output flagged for review, or `LadderFailed`."""
        # An output that a gate rejected beats none: if a fallback then failed outright, the
        # rejected output is still what goes to review (or names the failure).
        step, attempts = self.step, self.attempts
        if self.rejected and step.on_fail == "review":
            return Outcome(
                FLAGGED,
                self.last_output,
                self.last_model,
                attempts,
                self.rejected,
                self.usage,
                self.cost,
            )
        if self.rejected:
            detail = "; ".join(
                f"{g.name}"
                + (f" scored {g.score:.2f}" if g.score is not None else "")
                + f": {g.feedback}"
                for g in self.rejected
                if not g.passed
            )
            raise LadderFailed(
                step.name,
                f"did not pass its gates after {_attempts(attempts)} ({detail})",
                attempts,
                self.rejected,
                self.last_output,
                prompt=self.request.prompt,
            )
        tried = ", ".join(dict.fromkeys(a.model for a in attempts))
        raise LadderFailed(
            step.name,
            f"{self.last_error} (after {_attempts(attempts)}; models tried: {tried})",
            attempts,
            [],
            None,
            self.last_error,
            prompt=self.request.prompt,
        )

    def _spend(self, usage: Usage, cost: float | None) -> None:
        self.usage, self.cost = self.usage + usage, _add_cost(self.cost, cost)

    def _record(
        self,
        ref: ModelRef,
        started: float,
        state: str,
        detail: str | None,
        usage: Usage,
        cost: float | None,
    ) -> None:
        att = Attempt(ref.spec, started, time.time(), state, detail, usage, cost)
        self.attempts.append(att)
        if self.on_attempt:
            self.on_attempt(att)


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
        SKIPPED,
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
