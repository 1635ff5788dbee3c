"""nbconductor's exceptions.

The hierarchy::

    ConductorError
    ├── DefinitionError          a pipeline as written cannot run (user's mistake)
    │   ├── CycleError           .cycle: the steps in the cycle, in order
    │   ├── UnknownNameError     .step, .name, .suggestion
    │   ├── OptionError          an option or its value is wrong
    │   │   ├── StoreError       .path: a file given as a run store is not one
    │   │   └── ParameterError   a parameter name or value is not allowed (also a ValueError)
    │   └── TemplateError        a prompt template does not parse or render
    ├── ConfigError              nbconductor.toml / [tool.nbconductor] is wrong
    ├── MissingDependency        an optional package is absent; names the extra
    ├── ProviderError            a model call failed; .provider, .model, .status, .retryable,
    │   │                        .retry_after, .usage (tokens billed for a failed call, or None)
    │   ├── TransportError       connection, timeout, cut, stalled or malformed stream (retryable)
    │   ├── RateLimitError       429 / 529 / overloaded; .retry_after seconds (retryable)
    │   ├── ServerError          5xx, 408, 409 (retryable)
    │   ├── AuthError            401 / 403; says which key to set (not retried)
    │   ├── RequestError         400 / 404 / 422 (not retried)
    │   └── OutputError          malformed output, invalid JSON or schema (retryable)
    ├── ReviewError              a review decision cannot be made (unknown id, already decided, …)
    └── StepFailed               a step could not produce an accepted output; .step, .cause
        ├── LadderFailed         every attempt, fallback and gate was used up; .attempts, .gates,
        │                        .output (the last rejected one), .prompt (what was sent)
        ├── GateError            a model-backed gate gave no verdict; .reason, .usage, .cost, .calls
        └── PythonStepError      a ``--python`` step raised; the message is the user's own line

`DefinitionError`s are shown in a notebook as a one-line IPython ``UsageError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._types import Attempt, GateResult, Usage


class ConductorError(Exception):
    """Base class of every nbconductor error."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through nbconductor's internals.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class DefinitionError(ConductorError):
    """The pipeline as declared cannot run; the message says how to fix it."""


class CycleError(DefinitionError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        path = " → ".join([*cycle, cycle[0]])
        super().__init__(
            f"the steps form a cycle: {path}; remove one of these references or --after edges"
        )


class UnknownNameError(DefinitionError):
    def __init__(self, step: str, name: str, known: Iterable[str] = ()):
        self.step, self.name = step, name
        close = difflib.get_close_matches(name, sorted(set(known)), n=1)
        self.suggestion = close[0] if close else None
        hint = (
            f"did you mean `{self.suggestion}`?"
            if self.suggestion
            else "define it in a cell, pass it as a parameter, or declare a step of that name"
        )
        super().__init__(f"step `{step}` refers to unknown name `{name}`: {hint}")


class OptionError(DefinitionError):
    """An option, or an option's value, is not valid."""


class StoreError(OptionError):
    """A path given as a run store is not one (not SQLite, or without nbconductor's tables); ``.path``."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(message)


class ParameterError(OptionError, ValueError):
    """A run parameter's name is not an identifier, or its value is not plain data; ``.name``."""

    def __init__(self, message: str, name: str | None = None):
        self.name = name
        super().__init__(message)


class TemplateError(DefinitionError):
    """A prompt template has a syntax error or fails to render."""


class ConfigError(ConductorError):
    """The configuration file is invalid."""


class MissingDependency(ConductorError):
    def __init__(self, package: str, extra: str, purpose: str = ""):
        self.package, self.extra = package, extra
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the `{package}` package is needed{what}: pip install 'nbconductor[{extra}]' "
            f"(from a checkout, in its folder: pip install -e '.[{extra}]')"
        )


class ProviderError(ConductorError):
    """A model call failed. ``retryable`` says whether another attempt may succeed."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
    ):
        super().__init__(message)
        self.provider, self.model, self.status = provider, model, status
        self.retry_after = retry_after
        # An unusable answer was still billed: its tokens count (None: nothing was reported).
        self.usage = usage


class TransportError(ProviderError):
    retryable = True


class RateLimitError(ProviderError):
    retryable = True


class ServerError(ProviderError):
    retryable = True


class AuthError(ProviderError):
    retryable = False


class RequestError(ProviderError):
    retryable = False


class OutputError(ProviderError):
    """The model answered, but the answer is unusable (bad JSON, schema mismatch)."""

    retryable = True


class StepFailed(ConductorError):
    """A step could not produce an accepted output."""

    def __init__(self, step: str, message: str, cause: BaseException | None = None):
        self.step, self.cause = step, cause
        super().__init__(f"step `{step}` failed: {message}")


class LadderFailed(StepFailed):
    """Every attempt, fallback model and gate retry of a step was used up without an accepted output."""

    def __init__(
        self,
        step: str,
        message: str,
        attempts: list[Attempt],
        gates: list[GateResult],
        output: Any = None,
        cause: BaseException | None = None,
        *,
        prompt: str | None = None,
    ):
        super().__init__(step, message, cause)
        self.attempts, self.gates, self.output = attempts, gates, output
        self.prompt = prompt  # the audit trail keeps what was sent, even on failure


class GateError(StepFailed):
    """A model-backed gate (the rubric judge) gave no verdict; says what its calls spent."""

    def __init__(
        self,
        step: str,
        reason: str,
        *,
        usage: Usage,
        cost: float | None,
        calls: int,
        cause: BaseException | None = None,
    ):
        super().__init__(step, reason, cause)
        self.reason, self.usage, self.cost, self.calls = reason, usage, cost, calls


class PythonStepError(StepFailed):
    """A Python step raised; the message is the user's own exception and line."""


class ReviewError(ConductorError):
    """A review action cannot be done (unknown id, already decided, an edit that does not parse)."""


def missing_dependency(package: str, extra: str, purpose: str = ""):
    """Import ``package`` or raise `MissingDependency` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependency(package, extra, purpose) from exc
