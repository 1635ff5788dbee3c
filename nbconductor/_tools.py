"""``--tools f,g``: notebook functions offered to a model, and the tool-use loop.

`tool_spec` describes a function as a JSON-schema tool (from its signature and docstring);
`run_tool_loop` drives the conversation: the adapter sends a turn, the model asks for tool
calls, the functions run, their results go back, until the model answers or ``--max-turns``
model calls have been made (the last turn is sent with tools disabled, so it must answer).
The loop is provider-neutral; each adapter supplies how to send a turn and how to append
tool results to its own message format.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import _trace
from ._errors import OptionError, OutputError, UnknownNameError
from ._types import Usage

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:?\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.+)$")


def tool_spec(name: str, namespace: dict, step: str) -> dict:
    """The tool description of notebook function ``name``: name, description, JSON-schema
    ``parameters``, a hash of its code (for the cache key) and the callable under ``fn``.

    Raises `UnknownNameError` if no such name exists and `OptionError` if it is not a function
    or its signature cannot be described.
    """
    fn = namespace.get(name)
    if fn is None:
        known = [k for k, v in namespace.items() if callable(v) and not k.startswith("_")]
        raise UnknownNameError(step, name, known)
    if not callable(fn) or inspect.isclass(fn):
        raise OptionError(
            f"step `{step}`: --tools {name}: `{name}` is not a function ({type(fn).__name__}); "
            "define it with def in a cell"
        )
    from pydantic import TypeAdapter

    try:
        schema = TypeAdapter(fn).json_schema()
    except Exception as exc:  # noqa: BLE001 - pydantic raises several kinds here
        raise OptionError(
            f"step `{step}`: --tools {name}: cannot describe its parameters ({exc}); "
            "give them simple type hints (str, int, float, bool, list, dict, pydantic models)"
        ) from None
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    for arg, text in arg_docs.items():
        prop = schema.get("properties", {}).get(arg)
        if isinstance(prop, dict):
            prop.setdefault("description", text)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    schema.pop("title", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return {
        "name": name,
        "description": summary or f"The notebook function {name}.",
        "parameters": schema,
        "code": code_hash(fn),
        "fn": fn,
    }


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description without the Args section, {argument: description}) of a Google-style docstring."""
    lines = doc.splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    in_args = False
    current = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if in_args:
            if not line.strip():
                current = None
                continue
            if re.match(r"^\S", line) and line.rstrip().endswith(":"):  # the next section
                in_args = False
                summary.append(line)
                continue
            m = _ARG_LINE.match(line)
            if m:
                current = m.group(1).lstrip("*")
                args[current] = m.group(3).strip()
            elif current:
                args[current] += " " + line.strip()
            continue
        summary.append(line)
    return "\n".join(summary).strip(), args


def code_hash(fn: Callable) -> str:
    """A hash of everything in a function's code that decides what it returns.

    Covers the bytecode, constants (nested functions and comprehensions recursively), the
    names it reads, its defaults and keyword defaults, and the values its closure captured;
    equal across processes for the same source. The one code hash for function steps and
    ``--tools``: a cache key built from less serves stale results.
    """
    return _fn_hash(fn, frozenset())


def _fn_hash(fn: Any, seen: frozenset[int]) -> str:
    if id(fn) in seen:  # a recursive closure refers to itself
        return "<self>"
    seen = seen | {id(fn)}
    if isinstance(fn, functools.partial):
        inner = "|".join(
            [_fn_hash(fn.func, seen), _value_part(fn.args, seen), _value_part(fn.keywords, seen)]
        )
        return hashlib.sha256(inner.encode()).hexdigest()[:16]
    code = getattr(fn, "__code__", None)
    if code is None:  # a builtin, or a callable object: its __call__ and its attributes
        call = vars(type(fn)).get("__call__")
        inner = _fn_hash(call, seen) if hasattr(call, "__code__") else ""
        state = _value_part(vars(fn), seen) if hasattr(fn, "__dict__") and inner else ""
        return hashlib.sha256(f"{_qualname(fn)}|{inner}|{state}".encode()).hexdigest()[:16]
    parts = [
        _code_part(code),
        _value_part(getattr(fn, "__defaults__", None), seen),
        _value_part(getattr(fn, "__kwdefaults__", None), seen),
    ]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            parts.append(_value_part(cell.cell_contents, seen))
        except ValueError:  # an empty cell (a name assigned after the closure was made)
            parts.append("<empty>")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


@functools.lru_cache(maxsize=4096)
def _code_part(code: types.CodeType) -> str:
    consts = [
        _code_part(c) if isinstance(c, types.CodeType) else _value_part(c) for c in code.co_consts
    ]
    fields = (
        code.co_code.hex(),
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_kwonlyargcount,
        code.co_posonlyargcount,
        code.co_flags,
    )
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def _value_part(value: Any, seen: frozenset[int] = frozenset()) -> str:
    """A process-independent text for a constant, default or captured value."""
    if isinstance(value, types.CodeType):
        return _code_part(value)
    if isinstance(value, (types.FunctionType, types.MethodType)):
        return _fn_hash(value, seen)
    if isinstance(value, (frozenset, set)):  # string hashing differs per process: sort
        return "{" + ",".join(sorted(_value_part(v, seen) for v in value)) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_value_part(v, seen) for v in value) + ")"
    if isinstance(value, dict):
        items = (f"{_value_part(k, seen)}:{_value_part(v, seen)}" for k, v in value.items())
        return "{" + ",".join(sorted(items)) + "}"
    if value is None or isinstance(value, (str, bytes, int, float, complex, bool, type(...))):
        return repr(value)
    if isinstance(value, (type, types.ModuleType)):
        return f"<{type(value).__name__} {getattr(value, '__module__', '')}.{_qualname(value)}>"
    from ._cache import stable_hash

    return f"{type(value).__qualname__}:{stable_hash(value)}"


def public_spec(tool: dict) -> dict:
    """``tool`` without the callable: what may go into a cache key or a log."""
    return {k: v for k, v in tool.items() if k != "fn"}


@dataclass
class ToolCall:
    """A model's request to call a tool. ``arguments`` is a dict, or the raw JSON text."""

    id: str
    name: str
    arguments: Any


@dataclass
class Turn:
    """One model call of a conversation, as an adapter reports it."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    raw: Any = None  # whatever the adapter needs to replay this turn in the history
    stop: str | None = None  # the provider's stop / finish reason

    def __post_init__(self) -> None:
        _trace.finish_reason(self.stop)  # every adapter reports each model call as a Turn


async def call_tool(tools: dict[str, dict], call: ToolCall) -> tuple[str, bool]:
    """Run one tool call; returns (result text, is_error). Failures go back to the model."""
    spec = tools.get(call.name)
    if spec is None:
        return f"there is no tool named {call.name!r}; available: {', '.join(sorted(tools))}", True
    args = call.arguments
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as exc:
            return f"the arguments are not valid JSON: {exc}", True
    if not isinstance(args, dict):
        return "the arguments must be a JSON object", True
    from pydantic import ValidationError, validate_call

    try:
        result = validate_call(spec["fn"])(**args)
        if inspect.isawaitable(result):
            result = await result
    except ValidationError as exc:
        return f"invalid arguments for {call.name}: {exc}", True
    except Exception as exc:  # noqa: BLE001 - the model sees the error and may try again
        return f"{call.name} raised {type(exc).__name__}: {exc}", True
    return _to_text(result), False


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


async def run_tool_loop(
    send: Callable[[bool], Awaitable[Turn]],
    add_results: Callable[[Turn, list[tuple[ToolCall, str, bool]]], None],
    tools: list[dict],
    max_turns: int,
) -> tuple[Turn, Usage]:
    """Drive a tool-use conversation; returns (the final turn, the usage of all turns).

    ``send(final)`` makes one model call over the conversation so far (``final``: tools
    disabled, the model must answer); ``add_results(turn, results)`` appends the model's
    turn and the tool results to the conversation.
    """
    by_name = {t["name"]: t for t in tools}
    usage = Usage()
    turns = max(1, max_turns)
    for n in range(turns):
        turn = await _trace.turn(send(n == turns - 1), n)
        usage = usage + turn.usage
        if not turn.calls:
            return turn, usage
        if n == turns - 1:
            err = OutputError(
                f"the model still asked for tools after {turns} turns; raise --max-turns "
                "or make the task smaller",
                usage=usage,
            )
            raise err
        results = [
            (call, *(await _trace.tool(call_tool(by_name, call), call))) for call in turn.calls
        ]
        add_results(turn, results)
    raise AssertionError("unreachable")  # pragma: no cover
