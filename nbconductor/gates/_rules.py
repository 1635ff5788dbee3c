"""Rule gates (``--check EXPR``) and the list of gates a step must pass.

A check is a built-in (``max_words(400)``, ``contains("next step")``, ``regex(r"^# ")``,
``json`` …) or the name of a notebook function ``output -> bool | (bool, message)``.
"""

from __future__ import annotations

import builtins
import inspect
import json as _json
import re
import types
from collections.abc import Callable
from typing import Any

from .._errors import OptionError
from .._types import GateResult, Step

Checker = Callable[[Any], "bool | tuple[bool, str]"]


def _text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return output.model_dump_json()
    return _json.dumps(output, default=str)


def max_words(n: int) -> Checker:
    def check(output: Any):
        words = len(_text(output).split())
        return words <= n, f"output has {words} words; the limit is {n}"

    check.__name__ = f"max_words({n})"
    return check


def min_words(n: int) -> Checker:
    def check(output: Any):
        words = len(_text(output).split())
        return words >= n, f"output has {words} words; at least {n} are needed"

    check.__name__ = f"min_words({n})"
    return check


def max_chars(n: int) -> Checker:
    def check(output: Any):
        size = len(_text(output))
        return size <= n, f"output has {size} characters; the limit is {n}"

    check.__name__ = f"max_chars({n})"
    return check


def contains(s: str) -> Checker:
    def check(output: Any):
        return s.lower() in _text(output).lower(), f"output does not contain {s!r}"

    check.__name__ = f"contains({s!r})"
    return check


def not_contains(s: str) -> Checker:
    def check(output: Any):
        return s.lower() not in _text(
            output
        ).lower(), f"output contains {s!r}, which is not allowed"

    check.__name__ = f"not_contains({s!r})"
    return check


def regex(pattern: str) -> Checker:
    compiled = re.compile(pattern, re.M)

    def check(output: Any):
        return bool(compiled.search(_text(output))), f"output does not match /{pattern}/"

    check.__name__ = f"regex({pattern!r})"
    return check


def json(output: Any):
    """Valid JSON text (an output that is already parsed JSON passes)."""
    if not isinstance(output, str):
        return True, ""
    try:
        _json.loads(output)
        return True, ""
    except ValueError as exc:
        return False, f"output is not valid JSON: {exc}"


BUILTIN_CHECKS: dict[str, Any] = {
    "max_words": max_words,
    "min_words": min_words,
    "max_chars": max_chars,
    "contains": contains,
    "not_contains": not_contains,
    "regex": regex,
    "json": json,
}
# Built-ins that take an argument and return the check; ``--check max_words`` alone is a mistake.
_FACTORIES = {
    max_words: "max_words(400)",
    min_words: "min_words(50)",
    max_chars: "max_chars(2000)",
    contains: 'contains("next step")',
    not_contains: 'not_contains("TODO")',
    regex: 'regex(r"^# ")',
}


class RuleGate:
    """A ``--check``: a callable of the output, its failure message the feedback."""

    def __init__(self, expr: str, fn: Checker):
        self.name, self.fn = expr, fn

    async def check(self, output: Any, ctx) -> GateResult:
        try:
            verdict = self.fn(output)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:  # noqa: BLE001 - a user's check that raises fails the gate
            return GateResult(
                self.name, False, 0.0, f"the check raised {type(exc).__name__}: {exc}"
            )
        if verdict is None:
            return GateResult(
                self.name,
                False,
                0.0,
                f"the check {self.name} returned None; it must return "
                "True/False or (passed, message)",
            )
        if isinstance(verdict, tuple):
            ok, message = (
                bool(verdict[0]),
                str(verdict[1]) if len(verdict) > 1 and verdict[1] else "",
            )
        else:
            ok, message = bool(verdict), ""
        if not ok and not message:
            message = f"output failed the check {self.name}"
        return GateResult(self.name, ok, 1.0 if ok else 0.0, "" if ok else message)


def compile_check(expr: str, namespace: dict, step: str) -> RuleGate:
    """Turn a ``--check`` expression into a gate; raises `OptionError` when it cannot.

    Notebook names (functions, parameters such as a word limit) are in scope; a built-in
    check's name wins over anything of that name that is not a function (``import json``,
    a parameter ``max_words = 400``), and a notebook function of that name wins over it.
    """
    scope = dict(namespace)
    for name, fn in BUILTIN_CHECKS.items():
        if name not in scope or not callable(scope[name]):
            scope[name] = fn
    # One dict as globals, so names in a lambda body (``lambda o: len(o) < limit``) resolve.
    scope["__builtins__"] = builtins
    try:
        fn = eval(expr, scope)  # noqa: S307 - the notebook's own expression
    except NameError as exc:
        raise OptionError(
            f"step `{step}`: --check {expr}: {exc}; built-in checks are "
            f"{', '.join(BUILTIN_CHECKS)}, or name a function defined in the notebook"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise OptionError(
            f"step `{step}`: --check {expr} is not valid: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(fn, types.FunctionType) and fn in _FACTORIES:
        raise OptionError(
            f"step `{step}`: --check {expr} needs an argument, e.g. --check '{_FACTORIES[fn]}'"
        )
    if not callable(fn):
        raise OptionError(
            f"step `{step}`: --check {expr} is not a check: it must be a built-in check or "
            "a function of the output returning a bool or (bool, message)"
        )
    return RuleGate(expr, fn)


def gates_for(step: Step, namespace: dict) -> list:
    """The gates of ``step``: its checks, then its rubric (if any)."""
    gates: list = [compile_check(expr, namespace, step.name) for expr in step.checks]
    if step.rubric is not None:
        from ._judge import RubricGate

        gates.append(RubricGate(step.rubric))
    return gates
