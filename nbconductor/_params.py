"""Parameter names are identifiers, parameter values are data.

Every way a run gets parameters — a batch file (CSV, YAML, JSON), ``nbconductor run -p``, the
intake form, `Pipeline.run(params)`, papermill's own ``-p`` — ends in names bound in a
notebook's namespace and, for papermill, in a cell of Python source that papermill writes. So a
name must be a Python identifier that is not a keyword and not a ``__dunder__``, and a value that
goes into source must be JSON-typed data (str, int, float, bool, None, lists and string-keyed
dicts of them), written only as a literal. Breaking the rule raises `ParameterError` (one line,
naming the parameter) before anything runs.

`install_translator` puts a checking Python translator into papermill's registry (the
engine's entry point calls it, so plain ``papermill`` gets it too); the in-process engine
also refuses an injected-parameters cell that is anything but literal assignments.
"""

from __future__ import annotations

import ast
import difflib
import keyword
from collections.abc import Iterable
from typing import Any

from ._errors import ParameterError

__all__ = [
    "assigned_names",
    "check_injected",
    "check_known",
    "check_name",
    "check_names",
    "check_value",
]

_MAX_DEPTH = 50


def _shown(name: object) -> str:
    text = repr(name)  # repr: a newline in a name stays on the one line of the message
    return text if len(text) <= 80 else text[:77] + "…'"


def check_name(name: object, where: str) -> str:
    """``name`` if it is a usable parameter name; raises `ParameterError` naming it and ``where``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ParameterError(
            f"{where}: parameter name {_shown(name)} is not a Python identifier: use letters, digits and _, "
            "not starting with a digit (e.g. topic)",
            name=str(name),
        )
    if keyword.iskeyword(name):
        raise ParameterError(
            f"{where}: parameter name {name!r} is a Python keyword: choose another name "
            f"(e.g. {name}_)",
            name=name,
        )
    if name.startswith("__") and name.endswith("__"):
        raise ParameterError(
            f"{where}: parameter name {name!r} is reserved (names like __x__ belong to "
            "Python): choose another name",
            name=name,
        )
    return name


def check_names(names: Iterable[object], where: str) -> None:
    """`check_name` for each name."""
    for name in names:
        check_name(name, where)


def check_value(name: str, value: Any, where: str, _depth: int = 0) -> None:
    """Raise `ParameterError` unless ``value`` is JSON-typed data that papermill writes as a literal."""
    if _depth > _MAX_DEPTH:
        raise ParameterError(f"{where}: the value of `{name}` is nested too deeply", name=name)
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_value(name, item, where, _depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParameterError(
                    f"{where}: the value of `{name}` has a key {_shown(key)} that is not a "
                    "string: use string keys",
                    name=name,
                )
            check_value(name, item, where, _depth + 1)
        return
    raise ParameterError(
        f"{where}: the value of `{name}` is a {type(value).__name__}: use text, a number, "
        "true/false, null, a list or a mapping",
        name=name,
    )


def check_known(names: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise `ParameterError` for the first name not in ``known``, suggesting the closest."""
    known = sorted(set(known))
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            sets = f"sets {', '.join(known)}" if known else "sets no parameters"
            raise ParameterError(
                f"{where}: unknown parameter `{name}`: {hint}the notebook's parameters cell {sets}",
                name=name,
            )


def assigned_names(source: str) -> set[str] | None:
    """Names a parameters cell assigns at top level, or None when it is not plain Python."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


_FLOAT_WORDS = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}


def _is_literal(node: ast.AST) -> bool:
    # papermill writes non-finite floats as float('nan'); everything else it writes is a literal
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and str(node.args[0].value).lower() in _FLOAT_WORDS
    ):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values
        )
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def check_injected(source: str) -> None:
    """Raise `ParameterError` unless ``source`` only assigns literals to parameter names."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParameterError(
            f"the injected parameters cell is not valid Python ({exc.msg}, line {exc.lineno}); "
            "nothing was run"
        ) from None
    for node in tree.body:
        ok = (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and _is_literal(node.value)
        )
        if not ok:
            raise ParameterError(
                f"the injected parameters cell holds code, not `name = value` lines "
                f"(line {node.lineno}); nothing was run"
            )
        check_name(node.targets[0].id, "injected parameters")
