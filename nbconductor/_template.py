"""Prompt templates (sandboxed Jinja2) and the names a step's body refers to."""

from __future__ import annotations

import ast
import builtins
import json
from collections.abc import Collection
from functools import lru_cache
from typing import Any

from ._errors import OptionError, TemplateError

_BUILTINS = frozenset(dir(builtins))
# Names every template can use without declaring them.
TEMPLATE_GLOBALS = frozenset(
    {"history", "loop", "range", "dict", "lipsum", "cycler", "joiner", "namespace"}
)


@lru_cache(maxsize=1)
def _env():
    from jinja2 import StrictUndefined

    from ._sandbox import Sandbox, _checked_filter, _json_guard

    env = Sandbox(undefined=StrictUndefined, keep_trailing_newline=False)
    env.filters["json"] = _checked_filter(
        lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False, default=str),
        _json_guard,
    )
    env.finalize = _finalize
    return env


# Tags that pull in other templates: a step's prompt is self-contained (there is no loader).
_LOADING_TAGS = {
    "Include": "include",
    "Import": "import",
    "FromImport": "from … import",
    "Extends": "extends",
}


def _parse(source: str, step: str):
    from jinja2 import TemplateSyntaxError, nodes

    try:
        tree = _env().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"step `{step}`: template syntax error on line {exc.lineno}: {exc.message}"
        ) from None
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        tag = _LOADING_TAGS[type(node).__name__]
        raise TemplateError(
            f"step `{step}`: {{% {tag} %}} on line {node.lineno} is not supported: a prompt is self-contained; "
            "put shared text in a %%context block or a notebook variable and refer to it"
        )
    return tree


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

    env = _env()
    try:
        code = env.compile(_parse(source, step))
    except TemplateSyntaxError as exc:  # found while compiling: an unknown filter or test
        raise TemplateError(
            f"step `{step}`: template error on line {exc.lineno}: {exc.message}"
        ) from None
    return env.template_class.from_code(env, code, env.make_globals(None), None)


@lru_cache(maxsize=4096)
def template_names(source: str, step: str = "?") -> frozenset[str]:
    """The free names a template refers to (`{{ x }}`, `{% for a in xs %}`…)."""
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_parse(source, step))) - TEMPLATE_GLOBALS


def render(
    source: str,
    values: dict[str, Any],
    step: str = "?",
    *,
    outputs: Collection[str] = (),
    limits: Any = None,
) -> str:
    """Render a template with the data in ``values``; raises `TemplateError` on failure.

    Only the names the template refers to are handed over, and each must be data (see
    `template_scope`); ``outputs`` are upstream step names, whose outputs pass whatever their
    type. ``limits`` (``[templates]`` of the config) bounds the output size and the time.
    """
    from jinja2.sandbox import SecurityError

    from ._sandbox import MAX_OUTPUT, TIMEOUT, LimitExceeded, RenderTimeout, render_limited

    template = compile_template(source, step)
    scope = template_scope(source, values, step, outputs)
    max_output = getattr(limits, "max_output", MAX_OUTPUT)
    timeout = getattr(limits, "timeout", TIMEOUT)
    try:
        return render_limited(template, scope, max_output, timeout).strip()
    except RenderTimeout:
        raise TemplateError(
            f"step `{step}`: the template ran past its time limit of {timeout:g} s (a loop too large?); "
            "if it is meant to take longer, raise `timeout` under [templates] in nbconductor.toml"
        ) from None
    except LimitExceeded as exc:
        where = (
            "; the limit is `max_output` under [templates] in nbconductor.toml"
            if exc.configurable
            else ""
        )
        raise TemplateError(f"step `{step}`: {exc}{where}") from None
    except SecurityError as exc:
        raise TemplateError(f"step `{step}`: {exc}; {_DATA_ONLY}{_OPT_IN}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a template does wrong is one line
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TemplateError(f"step `{step}`: template failed to render: {detail}") from None


_DATA_ONLY = (
    "templates see data only (text, numbers, lists, dicts, pydantic models, step outputs): "
    "compute what you need in a cell or a --python step and refer to that variable"
)
_OPT_IN = ", or let templates call a notebook function with @nbconductor.template_function"


def template_scope(
    source: str, values: dict[str, Any], step: str = "?", outputs: Collection[str] = ()
) -> dict:
    """The values a template may see: the names it refers to, each checked to be data.

    Raises `TemplateError` for a module, a function that was not opted in, a built-in or any
    other object (an IPython shell, ``__builtins__``), naming it and how to pass data instead.
    """
    from ._sandbox import not_data, opted_in, template_function

    scope: dict[str, Any] = {}
    for name in sorted(template_names(source, step)):
        if name not in values:
            if name == "__builtins__" or hasattr(builtins, name):
                raise TemplateError(
                    f"step `{step}`: the template refers to `{name}`, a Python built-in; "
                    f"{_DATA_ONLY} (filters do the usual things: {{{{ x|length }}}})"
                )
            continue  # undefined: the run's name check (or StrictUndefined) says so
        value = values[name]
        if name in outputs or opted_in(value):
            scope[name] = value
            continue
        bad = not_data(value)
        if bad is not None:
            raise TemplateError(
                f"step `{step}`: the template refers to `{name}`, {_describe(value, bad)}; "
                f"{_DATA_ONLY}{_OPT_IN if callable(bad) else ''}"
            )
        scope[name] = value
    if "history" in values:
        scope["history"] = template_function(values["history"])
    return scope


def _describe(value: Any, bad: Any) -> str:
    import types

    def what(v: Any) -> str:
        if isinstance(v, types.ModuleType):
            return f"a module ({v.__name__})"
        if isinstance(v, type):
            return f"a class ({v.__name__})"
        if callable(v):
            return "a function"
        return f"a {type(v).__name__} object"

    return f"{what(value)}, not data" if bad is value else f"which holds {what(bad)}, not data"


@lru_cache(maxsize=4096)
def python_names(source: str, step: str = "?", mode: str = "exec") -> frozenset[str]:
    """Free names read by Python code (a `--python` body or a `--when` expression)."""
    try:
        tree = ast.parse(source, mode=mode)
    except SyntaxError as exc:
        what = "expression" if mode == "eval" else "code"
        raise OptionError(
            f"step `{step}`: Python {what} has a syntax error on line {exc.lineno}: {exc.msg}"
        ) from None
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
