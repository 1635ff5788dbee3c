"""The error hierarchy: written out in `_errors`' docstring, and errors declare their context."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from nbconductor import Pipeline, _errors
from nbconductor._errors import LadderFailed, OutputError, ProviderError
from nbconductor._types import Usage

PKG = Path(_errors.__file__).resolve().parent


def _classes() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(_errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, Exception)
        and obj.__module__ == _errors.__name__
    }


def test_the_docstring_draws_every_error_under_its_parent():
    parents: dict[str, str] = {}
    stack = [(-1, "ConductorError")]
    for line in _errors.__doc__.splitlines():
        branch = max(line.find("├──"), line.find("└──"))
        if branch < 0:
            continue
        name = line[branch + 3 :].split()[0]
        while stack[-1][0] >= branch:
            stack.pop()
        parents[name] = stack[-1][1]
        stack.append((branch, name))
    classes = _classes()
    assert set(parents) | {"ConductorError"} == set(classes)
    for name, parent in parents.items():
        assert classes[name].__bases__[0].__name__ == parent, name


def test_step_and_review_errors_live_in_the_hierarchy():
    from nbconductor._ladder import GateError as ladder_gate_error
    from nbconductor._pycode import PythonStepError
    from nbconductor.store._review import ReviewError

    assert {"LadderFailed", "GateError", "PythonStepError", "ReviewError"} <= set(_classes())
    assert ladder_gate_error is _errors.GateError and PythonStepError is _errors.PythonStepError
    assert ReviewError is _errors.ReviewError


def test_context_is_declared_in_the_constructor():
    err = OutputError("bad JSON", provider="p", model="m", usage=Usage(3, 4))
    assert err.usage == Usage(3, 4)
    assert ProviderError("x").usage is None
    failed = LadderFailed("draft", "no", [], [], prompt="Write")
    assert failed.prompt == "Write" and LadderFailed("d", "no", [], []).prompt is None


def test_no_context_is_patched_onto_an_exception_or_read_back_with_getattr():
    """Inside ``except <an nbconductor error> as exc:`` the context is a declared attribute:
    never set afterwards (``exc.usage = ...``), never guessed at (``getattr(exc, "usage", None)``)."""
    ours = set(_classes())
    found = []
    for path in PKG.rglob("*.py"):
        for handler in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(handler, ast.ExceptHandler) and handler.name and handler.type):
                continue
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if not any(isinstance(t, ast.Name) and t.id in ours for t in types):
                continue
            for node in ast.walk(handler):
                targets = node.targets if isinstance(node, ast.Assign) else []
                for t in targets:
                    if (
                        isinstance(t, ast.Attribute)
                        and getattr(t.value, "id", None) == handler.name
                    ):
                        if t.attr in ("usage", "prompt"):
                            found.append(f"{path.name}:{node.lineno} sets {handler.name}.{t.attr}")
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", None) == "getattr"
                    and getattr(node.args[0], "id", None) == handler.name
                ):
                    found.append(f"{path.name}:{node.lineno} getattr({handler.name}, ...)")
    # and nothing outside a handler builds an error, then patches it before raising
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        for attr in ("usage", "prompt"):
            for var in ("err", "exc", "error"):
                if f"{var}.{attr} = " in text:
                    found.append(f"{path.name} sets {var}.{attr}")
    assert found == []


def test_a_failed_step_keeps_the_prompt_it_sent(tmp_path):
    p = Pipeline(store=tmp_path / "s.sqlite")
    p.step("draft", "Write about {{ topic }}", model="offline:m", checks=["max_words(1)"])
    p.steps["draft"] = p.steps["draft"].replace(retries=0, on_fail="fail")
    run = p.run({"topic": "cats"})
    assert run.failed == ["draft"]
    assert run.results["draft"].prompt == "Write about cats"
