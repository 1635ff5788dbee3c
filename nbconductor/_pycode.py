"""Running a ``--python`` step's body like a notebook cell: the last expression is the output."""

from __future__ import annotations

import ast
import linecache
import sys
import traceback
from functools import lru_cache
from typing import Any

from ._errors import OptionError, PythonStepError

__all__ = ["PythonStepError", "run_python"]


@lru_cache(maxsize=1024)
def _compile(source: str, step: str):
    filename = f"<step {step}>"
    try:
        tree = ast.parse(source, filename, "exec")
    except SyntaxError as exc:
        raise OptionError(
            f"step `{step}`: Python syntax error on line {exc.lineno}: {exc.msg}"
        ) from None
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    # Register the source so tracebacks show the user's line.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # dont_inherit: this module's `from __future__ import annotations` must not leak into the
    # user's code (pydantic models defined in a step need real annotations).
    try:
        body = compile(tree, filename, "exec", dont_inherit=True)
        tail = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
    except SyntaxError as exc:  # parses, but cannot run at top level: `return`, `yield`, `await`…
        raise OptionError(
            f"step `{step}`: Python error on line {exc.lineno}: {exc.msg}; a --python step's "
            "body runs like a cell: its last expression is the output (no return or yield)"
        ) from None
    return body, tail


def run_python(source: str, values: dict[str, Any], step: str) -> Any:
    """Execute ``source`` with ``values`` in scope; returns the last expression's value.

    Raises `PythonStepError` whose message is the exception and the step's own line.
    """
    body, tail = _compile(source, step)
    scope = dict(values)
    try:
        exec(body, scope)  # noqa: S102 - the notebook's own code
        return eval(tail, scope) if tail is not None else None  # noqa: S307
    except Exception as exc:
        raise PythonStepError(step, _user_frames(exc, step)) from exc


def _user_frames(exc: BaseException, step: str) -> str:
    filename = f"<step {step}>"
    frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if f.filename == filename]
    where = ""
    if frames:
        f = frames[-1]
        line = linecache.getline(filename, f.lineno).strip()
        where = f" (line {f.lineno}: {line})"
    return f"{type(exc).__name__}: {exc}{where}"
