"""The Jinja2 sandbox prompt templates render in: data only, bounded size, bounded time.

A template sees data values, the documented globals and the notebook functions a user opted
in (`template_function`); it may call methods of data values (``topic.upper()``) and Jinja's
own helpers (macros, ``loop.cycle``), nothing else. Operators and filters that could build a
huge value in one C call (``'x' * n``, ``9 ** n``, ``'%09999d' % 1``, ``center(n)``) are
checked before they run; the rendered text is counted as it is produced; a watchdog stops a
render that passes its time limit even inside a loop that calls nothing.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import math
import numbers
import re
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

MAX_OUTPUT = 1_000_000  # characters, unless `[templates] max_output` says otherwise
TIMEOUT = 5.0  # seconds, unless `[templates] timeout` says otherwise
MAX_DIGITS = 10_000  # Python prints at most 4,300 digits of an int anyway
_MARK = "__nbconductor_template__"
_OPTED: dict[int, Any] = {}  # opted-in callables that cannot carry the mark (built-ins)
_limits = threading.local()  # .max_output, .deadline of the render running in this thread


class LimitExceeded(SecurityError):
    """A render went past its size limit, or an operation would have; ``configurable`` says
    whether ``[templates] max_output`` sets the limit (a number's digits and a JSON indent have
    fixed limits)."""

    def __init__(self, message: str, configurable: bool = True):
        super().__init__(message)
        self.configurable = configurable


class RenderTimeout(BaseException):  # a BaseException, so user code cannot swallow it
    """Raised inside a render that passed its time limit."""


def template_function(fn: Callable) -> Callable:
    """Let templates call ``fn`` (``{{ shorten(draft) }}``); returns ``fn`` unchanged.

    Use as a decorator on a notebook function, or call it on any callable (a built-in too).
    """
    if not callable(fn) or isinstance(fn, types.ModuleType):
        raise TypeError(f"template_function needs a function, got {type(fn).__name__}")
    try:
        setattr(fn, _MARK, True)
    except (AttributeError, TypeError):
        _OPTED[id(fn)] = fn
    return fn


def opted_in(obj: Any) -> bool:
    """Whether ``obj`` was opted in with `template_function`."""
    if id(obj) in _OPTED:
        return True
    try:
        return getattr(obj, _MARK, False) is True
    except Exception:  # noqa: BLE001 - an object whose __getattr__ misbehaves is not opted in
        return False


_DATA_TYPES = (str, bytes, int, float, complex, bool, type(None))
# Other plain values a template may show (numpy scalars are Numbers); their methods stay uncallable.
_VALUE_TYPES = (
    numbers.Number,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    PurePath,
)


def _safe_method(owner: Any, name: str) -> bool:
    """Whether a template may call method ``name`` of ``owner``: any method of a data value or
    of Jinja's own objects; of a pydantic model, pydantic's methods (``model_dump``), not the
    model's own (notebook code, which `template_function` can opt in)."""
    if isinstance(owner, (*_DATA_TYPES, list, tuple, dict, set, frozenset)):
        return True
    if _is_model(owner) and not isinstance(owner, type):
        from pydantic import BaseModel

        return hasattr(BaseModel, name)
    return type(owner).__module__.startswith("jinja2.")


def _is_model(obj: Any) -> bool:
    return hasattr(type(obj), "model_fields") and hasattr(obj, "model_dump")


def not_data(value: Any, budget: int = 100_000) -> Any:
    """The first value inside ``value`` that is not data, else ``None`` (a sentinel-free answer:
    ``None`` itself is data). Stops looking after ``budget`` items."""
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        v = stack.pop()
        if isinstance(v, _DATA_TYPES):
            continue
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif _is_model(v):
            stack.extend(vars(v).values())
        elif isinstance(v, _VALUE_TYPES):
            continue
        else:
            return v
    return None


def _limit() -> int:
    return getattr(_limits, "max_output", MAX_OUTPUT)


def _tick() -> None:
    deadline = getattr(_limits, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RenderTimeout


def _too_big(what: str, size: float) -> None:
    if size > _limit():
        raise LimitExceeded(
            f"{what} would be {size:,.0f} characters, over the limit of {_limit():,}"
        )


_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE = re.compile(r"\{[^{}]*\}")


def _check_widths(fmt: str, args: tuple = (), kwargs: dict | None = None) -> None:
    """Refuse ``%``/``format`` specs whose width or precision is over the output limit."""
    widths = [int(g) for m in _PERCENT.finditer(fmt) for g in m.groups() if g and g != "*"]
    widths += [
        int(d)
        for m in _BRACE.finditer(fmt)
        for d in re.findall(r"\d+", m.group().partition(":")[2])
    ]
    if widths and max(widths) > _arg_limit():
        raise LimitExceeded(
            f"a format width of {max(widths):,} is over the limit of {_arg_limit():,}"
        )
    _check_ints(args, kwargs)


def _arg_limit() -> int:
    # Widths and counts: a small output limit still lets range(100000) and friends be called.
    return max(_limit(), 100_000)


def _check_ints(args, kwargs=None) -> None:
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _arg_limit():
            raise LimitExceeded(
                f"the argument {a:,} is over the template size limit of {_arg_limit():,}"
            )


def _int_digits(n: int) -> float:
    return abs(n).bit_length() * 0.30103 + 1


def _too_many_digits(digits: float) -> None:
    if digits > MAX_DIGITS:
        raise LimitExceeded(
            f"the number would have {digits:,.0f} digits, over the limit of {MAX_DIGITS:,}",
            configurable=False,
        )


def _binop(op: Callable, operator: str, left: Any, right: Any) -> Any:
    _tick()
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        _too_many_digits(right * math.log10(abs(left)))
    elif operator == "*":
        if ints:
            _too_many_digits(_int_digits(left) + _int_digits(right))
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
                _too_big("the repeated value", len(seq) * max(n, 0))
    elif (
        operator == "+"
        and isinstance(left, (str, bytes, list, tuple))
        and hasattr(right, "__len__")
    ):
        _too_big("the joined value", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_widths(left, right if isinstance(right, tuple) else (right,))
    return op(left, right)


def _checked_filter(fn: Callable, guard: Callable | None = None) -> Callable:
    # The value filtered is data (a big number is fine); the arguments are widths and counts.
    # ``guard(value, *args, **kwargs)`` estimates the result's size before the filter runs.
    skip = 2 if hasattr(fn, "jinja_pass_arg") else 1

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        _tick()
        _check_args(args[skip:], kwargs)
        if guard is not None and len(args) >= skip:
            guard(*args[skip - 1 :], **kwargs)
        return fn(*args, **kwargs)

    return checked


def _lines(value: Any) -> int:
    return str(value).count("\n") + 1


def _indent_guard(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _too_big("the indented text", len(str(value)) + _lines(value) * pad)


def _wordwrap_guard(
    value: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    width = kwargs.get("width", width)
    wrap = kwargs.get("wrapstring", wrapstring) or "\n"
    if isinstance(width, int):
        _too_big("the wrapped text", len(str(value)) * (1 + len(str(wrap)) / max(width, 1)))


def _join_guard(value: Any, d: Any = "", *args: Any, **kwargs: Any) -> None:
    if isinstance(value, (list, tuple)):
        sep = len(str(kwargs.get("d", d)))
        _too_big(
            "the joined text",
            sum(len(v) if isinstance(v, str) else 8 for v in value) + sep * len(value),
        )


def _json_guard(value: Any, indent: Any = None, *args: Any, **kwargs: Any) -> None:
    indent = kwargs.get("indent", indent)
    if isinstance(indent, int) and indent > 64:
        raise LimitExceeded(
            f"a JSON indent of {indent:,} is over the limit of 64", configurable=False
        )


def _check_args(args, kwargs=None) -> None:
    """Widths and counts within the limit; no text argument longer than the output may be."""
    _check_ints(args, kwargs)
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, (str, bytes)) and len(a) > _limit():
            raise LimitExceeded(
                f"a {len(a):,}-character argument is over the output limit of {_limit():,}"
            )


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    """``'%s, %s'|format(a, b)`` with the width check of the ``%`` operator."""
    if args and kwargs:
        raise TypeError("format takes positional or keyword arguments, not both")
    _check_widths(str(value), args, kwargs)
    return str(value) % (kwargs or args)


def _replace_filter(value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    _check_ints((count,) if count is not None else ())
    _too_big(
        "the replaced text", len(text) + (text.count(old) if old else len(text) + 1) * len(new)
    )
    return text.replace(old, new) if count is None else text.replace(old, new, count)


def _str_method_guard(text: str, name: str, args: tuple) -> None:
    """Estimate the size of ``text.name(*args)`` for the methods that can grow it a lot."""
    if name == "replace" and len(args) >= 2:
        _replace_filter(text, *args[:3])
    elif name == "join" and args:
        _join_guard(list(args[0]) if isinstance(args[0], (list, tuple)) else [], text)
    elif name == "expandtabs" and args and isinstance(args[0], int):
        _too_big("the expanded text", len(text) + text.count("\t") * args[0])


class _Namespace(Namespace):
    """``namespace()`` whose ``{% set ns.x = … %}`` refuses text longer than the output may be
    (a loop doubling ``ns.s ~ ns.s`` would otherwise exhaust memory before any check runs)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _tick()
        if isinstance(value, (str, bytes, list, tuple)) and len(value) > _limit():
            raise LimitExceeded(
                f"`{name}` would hold {len(value):,} items, over the limit of {_limit():,}"
            )
        super().__setitem__(name, value)


class Sandbox(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` that calls only what templates may call, within limits."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **kwargs: Any):
        # optimized=False: no constant folding, so `{{ 9**9999999 }}` is not computed while
        # the template compiles (at declaration), outside every limit.
        super().__init__(optimized=False, **kwargs)
        guards = {
            "indent": _indent_guard,
            "wordwrap": _wordwrap_guard,
            "join": _join_guard,
            "tojson": _json_guard,
        }
        self.filters = {
            name: _checked_filter(f, guards.get(name)) for name, f in self.filters.items()
        }
        self.filters["format"] = _checked_filter(_format_filter)
        self.filters["replace"] = _checked_filter(_replace_filter)
        self.globals["namespace"] = _Namespace

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        return _binop(self.binop_table[operator], operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # Jinja's own signature
        _tick()
        if opted_in(__obj):
            return super().call(__context, __obj, *args, **kwargs)
        if not any(__obj is g for g in __self.globals.values()):
            owner = getattr(__obj, "__self__", None)
            if isinstance(__obj, types.ModuleType) or not (
                type(__obj).__module__.startswith("jinja2.")
                or (
                    owner is not None
                    and not isinstance(owner, types.ModuleType)
                    and _safe_method(owner, getattr(__obj, "__name__", ""))
                )
            ):
                raise SecurityError(f"calling `{_name(__obj)}` is not allowed in a template")
            if isinstance(owner, str):
                _str_method_guard(owner, getattr(__obj, "__name__", ""), args)
        _check_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return _visible(super().getattr(obj, attribute), attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return _visible(super().getitem(obj, argument), argument)

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args, **kwargs):
            _check_widths(fmt, args, kwargs)
            return wrapped(*args, **kwargs)

        return template_function(checked)


def _visible(value: Any, name: Any) -> Any:
    if isinstance(value, types.ModuleType):
        raise SecurityError(f"`{name}` is a module; templates see data only")
    return value


def _name(obj: Any) -> str:
    return (
        getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    )


def render_limited(template, values: dict, max_output: int, timeout: float) -> str:
    """Render ``template`` with ``values``; raises `LimitExceeded` or `RenderTimeout`."""
    _limits.max_output, _limits.deadline = max_output, time.monotonic() + timeout
    parts: list[str] = []
    size = 0
    try:
        with _watchdog.limit(timeout):
            for chunk in template.generate(values):
                size += len(chunk)
                if size > max_output:
                    raise LimitExceeded(
                        f"the rendered prompt passed the limit of {max_output:,} characters"
                    )
                parts.append(chunk)
                _tick()
    finally:
        _limits.deadline = None
    return "".join(parts)


_SLACK = 0.25  # seconds past its limit before the watchdog stops a render
_POLL = 0.2  # < _SLACK: how often an idle watchdog looks, for _LINGER seconds after a render
_LINGER = 5.0


class _Watchdog:
    """One thread that raises `RenderTimeout` in a thread whose render passed its deadline.

    The cooperative checks (`_tick`) catch most runaways; this catches a loop that calls,
    indexes and prints nothing. A single C call (a huge built-in operation the checks above
    did not foresee) still finishes before the exception arrives.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: dict[object, tuple[int, float]] = {}
        self._fired: set[object] = set()
        self._thread: threading.Thread | None = None
        self._wake_at: float | None = None  # when the thread wakes next; None: it waits for work
        self._last = 0.0  # when the latest render began

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        token, tid = object(), threading.get_ident()
        with self._cond:
            self._last = time.monotonic()
            deadline = self._last + seconds + _SLACK
            self._jobs[token] = (tid, deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="nbconductor-template-watchdog", daemon=True
                )
                self._thread.start()
            elif self._wake_at is None or deadline < self._wake_at:
                # Wake the thread only when it would otherwise look too late: a notify per
                # render handed the GIL to it and back, ~1 ms a render on a loaded machine.
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._jobs.pop(token, None)
                fired = token in self._fired
                self._fired.discard(token)
            if fired:  # the exception may still be pending: it must not hit the caller later
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (tid, deadline) in list(self._jobs.items()):
                    if deadline <= now:
                        del self._jobs[token]
                        self._fired.add(token)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(tid), ctypes.py_object(RenderTimeout)
                        )
                nearest = min((d for _, d in self._jobs.values()), default=None)
                if nearest is None and now - self._last < _LINGER:
                    # Renders come in bursts (a compare renders hundreds) and most end before
                    # this thread looks: waking every _POLL seconds for a while, sooner than
                    # any new deadline, spares each new render a notify.
                    nearest = now + _POLL
                self._wake_at = nearest
                self._cond.wait(None if nearest is None else max(nearest - now, 0.01))


_watchdog = _Watchdog()
