"""`RunResult`: what one run produced, a `StepResult` per step, and how it reads and fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import StepFailed
from ._states import FAILED, FLAGGED, PASSED, PENDING, SKIPPED
from ._types import StepResult, Usage

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """What one run produced: a `StepResult` per step, in graph order."""

    run_id: str
    results: dict[str, StepResult]
    status: str = PASSED
    started: float = 0.0
    ended: float = 0.0

    def __getitem__(self, step: str) -> Any:
        return self.results[step].output

    @property
    def outputs(self) -> dict[str, Any]:
        return {name: r.output for name, r in self.results.items()}

    @property
    def cost(self) -> float | None:
        """What this run spent: its fresh calls (a cache hit, a skipped or a never-run step costs
        nothing); None when a call's price is unknown."""
        costs = [
            r.cost
            for r in self.results.values()
            if not r.cached and r.state not in (SKIPPED, PENDING)
        ]
        return None if any(c is None for c in costs) else sum(costs)

    @property
    def usage(self) -> Usage:
        """Tokens this run spent (cache hits spend none; None where a provider did not say)."""
        fresh = [
            r for r in self.results.values() if not r.cached and r.state not in (SKIPPED, PENDING)
        ]
        total = Usage() if fresh else Usage(0, 0)
        for r in fresh:
            total = total + r.usage
        return total

    def names(self, state: str) -> list[str]:
        return [n for n, r in self.results.items() if r.state == state]

    @property
    def failed(self) -> list[str]:
        return self.names(FAILED)

    @property
    def flagged(self) -> list[str]:
        return self.names(FLAGGED)

    def raise_for_status(self) -> None:
        """Raise `StepFailed` for the first failed step, saying how many more failed."""
        failed = self.failed
        if failed:
            first = self.results[failed[0]]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            message = (first.error or FAILED).removeprefix(f"step `{failed[0]}` failed: ")
            raise StepFailed(failed[0], message + more)

    def summary(self) -> str:
        from ._summary import summary_table

        return summary_table(self)

    def _repr_markdown_(self) -> str:
        return self.summary()
