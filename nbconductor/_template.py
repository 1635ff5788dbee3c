"""Prompt templates (sandboxed Jinja2) and the names a step's body refers to."""

from __future__ import annotations

import ast
import builtins
import json
from functools import lru_cache
from typing import Any

from ._errors import OptionError, TemplateError

_BUILTINS = frozenset(dir(builtins))
# Names every template can use without declaring them.
TEMPLATE_GLOBALS = frozenset({"history", "loop", "range", "dict", "lipsum", "cycler", "joiner", "namespace"})


@lru_cache(maxsize=1)
def _env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)
    env.filters["json"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False, default=str)
    env.finalize = _finalize
    return env


def _finalize(value: Any) -> Any:
    # {{ research }} on a --json step's output shows JSON, not a Python repr.
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json(indent=2)
    return value


@lru_cache(maxsize=4096)
def compile_template(source: str, step: str = "?"):
    """Parse a template once; raises `TemplateError` naming the step and line."""
    from jinja2 import TemplateSyntaxError

    try:
        return _env().from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"step `{step}`: template syntax error on line {exc.lineno}: {exc.message}") from None


@lru_cache(maxsize=4096)
def template_names(source: str, step: str = "?") -> frozenset[str]:
    """The free names a template refers to (`{{ x }}`, `{% for a in xs %}`…)."""
    from jinja2 import TemplateSyntaxError, meta

    try:
        ast_ = _env().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"step `{step}`: template syntax error on line {exc.lineno}: {exc.message}") from None
    return frozenset(meta.find_undeclared_variables(ast_)) - TEMPLATE_GLOBALS


def render(source: str, values: dict[str, Any], step: str = "?") -> str:
    """Render a template with ``values``; raises `TemplateError` on failure."""
    from jinja2 import TemplateError as JinjaError

    template = compile_template(source, step)
    try:
        return template.render(values).strip()
    except JinjaError as exc:
        raise TemplateError(f"step `{step}`: template failed to render: {exc}") from None


@lru_cache(maxsize=4096)
def python_names(source: str, step: str = "?", mode: str = "exec") -> frozenset[str]:
    """Free names read by Python code (a `--python` body or a `--when` expression)."""
    try:
        tree = ast.parse(source, mode=mode)
    except SyntaxError as exc:
        what = "expression" if mode == "eval" else "code"
        raise OptionError(f"step `{step}`: Python {what} has a syntax error on line {exc.lineno}: {exc.msg}") from None
    loaded: set[str] = set()
    stored: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(loaded - stored - _BUILTINS)


def parse_map(spec: str, step: str = "?") -> tuple[str, str]:
    """Split ``"VAR in EXPR"`` into (VAR, EXPR); raises `OptionError` when malformed."""
    var, sep, expr = spec.partition(" in ")
    var, expr = var.strip(), expr.strip()
    if not sep or not var.isidentifier() or not expr:
        raise OptionError(
            f'step `{step}`: --map must look like "VAR in EXPR" (e.g. --map "lang in markets"), got {spec!r}'
        )
    python_names(expr, step, "eval")
    return var, expr
