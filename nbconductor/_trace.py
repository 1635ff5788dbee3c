"""Tracing: runs, steps and model calls as OpenTelemetry spans (the ``otel`` extra).

The only module that imports OpenTelemetry, and only once tracing is on: with
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, ``[otel] endpoint``
in the config, ``%conductor trace on``, or an application's own SDK ``TracerProvider`` already
installed (its spans then join it). Off, every hook is one context-variable read and returns
what it was given.

A run is one trace: ``nbconductor.run`` → ``step <name>`` → ``chat <model>`` (each attempt, judge
call and tool-use turn, with the GenAI semantic conventions' ``gen_ai.*`` attributes), gate results
as ``gate.result`` events. The hooks take the coroutine they trace and return it unchanged when
tracing is off, so a call site stays one line. Export is the SDK's batch processor (its own
thread; over OTLP/HTTP our own encoder, `_trace_otlp`); a collector that is down costs one
warning line per run (`Guard`), never the run: once an export failed, runs build no spans at
all while it cannot be reached (and for 30 s after an error answer).
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._states import FAILED, INTERRUPTED
from ._trace_attrs import (
    CONTENT_ENV,
    _cost,
    _input_messages,
    _json_text,
    _redact,
    _turn_message,
    _usage,
    _usage_attrs,
    capture_content,
)

T = TypeVar("T")

#: ``%conductor trace on|off`` (None: the environment and the config decide).
_switch: bool | None = None
_tracing: Any = None  # the `_trace_setup.Tracing` once set up; False when the extra is missing
#: The innermost nbconductor span of this task (run, step or call): the parent of the next one.
_parent: contextvars.ContextVar[Any] = contextvars.ContextVar("nbconductor_span", default=None)
#: Whether this run's spans carry prompts and outputs (`capture_content`, read once per run).
_content: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nbconductor_content", default=False
)
_step: contextvars.ContextVar[_StepState | None] = contextvars.ContextVar(
    "nbconductor_step", default=None
)
_done: contextvars.ContextVar[Any] = contextvars.ContextVar("nbconductor_done", default=None)
LINK_ENV = "NBCONDUCTOR_TRACE_LINK"  # a W3C traceparent: the batch span a row's run links to
BATCH_ENV = "NBCONDUCTOR_BATCH_ID"


@dataclass
class _StepState:
    span: Any
    waited: float = 0.0  # retry-after seconds waited since the last model call
    finish: list[str] = field(default_factory=list)
    call: dict = field(default_factory=dict)  # the model call in progress (for its tool turns)
    #: with content on, the conversation of the call in progress so far (GenAI message JSON)
    history: list = field(default_factory=list)


def switch(on: bool | None) -> None:
    """``%conductor trace on`` (True), ``off`` (False) or back to the environment (None)."""
    global _switch
    _switch = on


def wanted(config: Any = None) -> bool:
    """Whether runs are traced now (reads the environment; imports nothing)."""
    if _switch is not None:
        return _switch
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return True
    otel = getattr(config, "otel", None)
    if otel is not None and otel.endpoint:
        return True
    return app_provider() is not None


def describe(config: Any = None) -> str:
    """One line: whether runs are traced, where they go, whether content goes with them."""
    if not wanted(config):
        return (
            "tracing off: set OTEL_EXPORTER_OTLP_ENDPOINT, [otel] endpoint in the config, "
            "or %conductor trace on"
        )
    if app_provider() is not None:
        where = "the application's TracerProvider"
    else:
        env, otel = os.environ, getattr(config, "otel", None)
        where = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or (otel.endpoint if otel is not None and otel.endpoint else None)
            or "http://localhost:4318 (the OTLP default)"
        )
    content = "with" if capture_content() else "without"
    return f"tracing on: runs go to {where}, {content} prompts and outputs ({CONTENT_ENV})"


def app_provider() -> Any:
    """The application's own SDK TracerProvider, if it installed one (never imports one)."""
    if "opentelemetry.sdk.trace" not in sys.modules:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def available() -> bool:
    """Whether the ``otel`` extra is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("opentelemetry.sdk") is not None


def _setup(config: Any) -> Any:
    global _tracing
    if _tracing is None:
        if not available():
            _tracing = False
            print(
                "nbconductor: tracing is on but OpenTelemetry is not installed: "
                "pip install 'nbconductor[otel]'",
                file=sys.stderr,
            )
        else:
            from ._trace_setup import Tracing

            _tracing = Tracing(getattr(config, "otel", None))
    return _tracing or None


def drain(seconds: float = 5.0) -> None:
    """Export what is still queued, waiting at most ``seconds``: for a worker process about to
    leave with ``os._exit``, which runs no atexit hook (a background flush would be cut off)."""
    if _tracing:
        _tracing.drain(seconds)


def reset() -> None:
    """Forget the set-up provider (tests; a changed endpoint). Flushes what is pending."""
    global _tracing
    if _tracing:
        _tracing.close()
    _tracing = None


# runs --------------------------------------------------------------------------------------


@dataclass
class RunTrace:
    span: Any
    token: Any
    tracing: Any
    content: Any = None


def run_started(run_id: str, notebook: str | None, params: dict | None, config: Any) -> Any:
    """Open a run's root span (None when tracing is off)."""
    if not wanted(config):
        return None
    tracing = _setup(config)
    if tracing is None or tracing.guard.down(run_id):  # known down: its spans would be dropped
        return None
    attrs = {
        "nbconductor.run.id": run_id,
        "nbconductor.notebook": notebook or "",
        "nbconductor.parameters": sorted(params or ()),
    }
    if os.environ.get(BATCH_ENV):
        attrs["nbconductor.batch.id"] = os.environ[BATCH_ENV]
    span = tracing.start(
        "nbconductor.run", None, attrs, links=tracing.links(os.environ.get(LINK_ENV))
    )
    tracing.guard.expect(span, run_id)
    return RunTrace(span, _parent.set(span), tracing, _content.set(capture_content()))


def run_ended(handle: RunTrace | None, run: Any) -> None:
    """Close a run's root span with its status, cost and tokens; export starts at once."""
    if handle is None:
        return
    _parent.reset(handle.token)
    _content.reset(handle.content)
    span = handle.span
    fresh = [r.usage for r in run.results.values() if not r.cached]
    # Not gen_ai.usage.*: viewers sum those over spans, and the model calls already carry them.
    attrs = {
        "nbconductor.status": run.status,
        "nbconductor.usage.input_tokens": sum(u.input_tokens or 0 for u in fresh),
        "nbconductor.usage.output_tokens": sum(u.output_tokens or 0 for u in fresh),
    }
    if run.cost is not None:
        attrs["nbconductor.cost"] = run.cost
    span.set_attributes(attrs)
    if run.status in (FAILED, INTERRUPTED):
        handle.tracing.error(span, f"run {run.status}")
    span.end()
    handle.tracing.flush_soon()


# steps -------------------------------------------------------------------------------------


def step(step: Any, coro: Awaitable[T]) -> Awaitable[T]:
    """``coro`` (running ``step``) inside a ``step <name>`` span; unchanged when off."""
    if _parent.get() is None:
        return coro
    return _traced_step(step, coro)


async def _traced_step(step: Any, coro: Awaitable[Any]) -> Any:
    tracing = _tracing
    attrs = {"nbconductor.step": step.name, "nbconductor.step.kind": step.kind}
    if step.model:
        attrs["nbconductor.step.model"] = step.model
    span = tracing.start(f"step {step.name}", _parent.get(), attrs)
    token, state = _parent.set(span), _step.set(_StepState(span))
    try:
        res = await coro
    except BaseException as exc:
        tracing.error(span, type(exc).__name__)
        span.end()
        raise
    finally:
        _parent.reset(token)
        _step.reset(state)
        _done.set(span)  # this task's step, finished: its result is stored next (`stored`)
    attrs = {
        "nbconductor.state": res.state,
        "nbconductor.attempts": len(res.attempts),
        "nbconductor.cache_hit": bool(res.cached),
    }
    if res.cost is not None and not res.cached:
        attrs["nbconductor.cost"] = res.cost
    if res.items is not None:
        attrs["nbconductor.items"] = res.items
    if res.model:
        attrs["nbconductor.model"] = res.model
    span.set_attributes(attrs)
    if res.state == FAILED:
        tracing.error(span, _redact(res.error or FAILED))
    span.end()
    return res


def gates(results: list) -> None:
    """Gate results of one attempt (or of a Python step) as ``gate.result`` events of its step."""
    state = _step.get()
    if state is None:
        return
    for g in results:
        attrs = {"gate.name": g.name, "gate.passed": bool(g.passed)}
        if g.score is not None:
            attrs["gate.score"] = float(g.score)
        if g.feedback:
            attrs["gate.feedback"] = _redact(g.feedback)
        state.span.add_event("gate.result", attrs)


def waited(seconds: float) -> None:
    """The retry-after a server asked for was waited; the next model call carries it."""
    state = _step.get()
    if state is not None:
        state.waited += seconds
        state.span.add_event("retry.wait", {"nbconductor.retry_after": float(seconds)})


def finish_reason(reason: str | None) -> None:
    """A provider's stop/finish reason of the model call in progress (its adapter reports it)."""
    state = _step.get()
    if state is not None and reason:
        state.finish.append(str(reason))


# model calls -------------------------------------------------------------------------------


def call(
    coro: Awaitable[T],
    ref: Any,
    request: Any,
    pool: Any,
    *,
    attempt: int = 1,
    fallback: int = 0,
    image: bool = False,
    role: str = "step",
) -> Awaitable[T]:
    """``coro`` (one provider call) inside a ``chat <model>`` span; unchanged when off.

    ``attempt`` counts from 1 for each model, ``fallback`` is the model's place in the ladder
    (0: the step's own model), ``role`` says whose call it is (``step``, ``judge``, ``turn``).
    """
    if _parent.get() is None:
        return coro
    return _traced_call(coro, ref, request, pool, attempt, fallback, image, role)


async def _traced_call(coro, ref, request, pool, attempt, fallback, image, role) -> Any:
    tracing = _tracing
    op = "generate_content" if image else "chat"
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": ref.provider,
        "gen_ai.request.model": ref.model,
        "nbconductor.attempt": attempt,
        "nbconductor.fallback": fallback,
        "nbconductor.call": role,
    }
    if ref.alias:
        attrs["nbconductor.alias"] = ref.alias
    if request.temperature is not None:
        attrs["gen_ai.request.temperature"] = float(request.temperature)
    if request.max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = int(request.max_tokens)
    state = _step.get()
    if state is not None:
        if state.waited:
            attrs["nbconductor.retry_after_waited"] = state.waited
        state.waited, state.finish = 0.0, []
        state.call = {k: attrs[k] for k in ("gen_ai.provider.name", "gen_ai.request.model")}
    content = _content.get()
    if content:
        system, messages = _input_messages(request)
        if system:
            attrs["gen_ai.system_instructions"] = json.dumps(system)
        attrs["gen_ai.input.messages"] = json.dumps(messages)
        if state is not None:
            state.history = messages
    span = tracing.start(f"{op} {ref.model}", _parent.get(), attrs, client=True)
    token = _parent.set(span)
    try:
        response = await coro
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        _usage(span, getattr(exc, "usage", None))
        tracing.error(span, _redact(f"{type(exc).__name__}: {exc}")[:500])
        span.end()
        raise
    finally:
        _parent.reset(token)
    done = _usage_attrs(response.usage)  # one set_attributes: each call takes the span's lock
    if response.model:
        done["gen_ai.response.model"] = response.model.split(":", 1)[-1]
    if state is not None and state.finish:
        done["gen_ai.response.finish_reasons"] = list(state.finish)
    cost = _cost(ref, response, pool, image)
    if cost is not None:
        done["nbconductor.cost"] = cost
    if content and not image:
        msg = {"role": "assistant", "parts": [{"type": "text", "content": _redact(response.text)}]}
        msg["finish_reason"] = state.finish[-1] if state is not None and state.finish else ""
        done["gen_ai.output.messages"] = json.dumps([msg])
    span.set_attributes(done)
    span.end()
    return response


def turn(coro: Awaitable[T], index: int) -> Awaitable[T]:
    """One model call of a tool-use conversation (a `Turn`), as a child of its attempt's span."""
    if _parent.get() is None:
        return coro
    return _traced_turn(coro, index)


async def _traced_turn(coro: Awaitable[Any], index: int) -> Any:
    tracing, state = _tracing, _step.get()
    attrs = {
        "gen_ai.operation.name": "chat",
        "nbconductor.call": "turn",
        "nbconductor.turn": index + 1,
    }
    if state is not None:
        attrs.update(state.call)
    content = state is not None and _content.get()
    if content:  # what this turn sends: the request and the tool conversation so far
        attrs["gen_ai.input.messages"] = json.dumps(state.history)
    span = tracing.start(
        f"chat {attrs.get('gen_ai.request.model', '')}".strip(), _parent.get(), attrs, client=True
    )
    try:
        result = await coro
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        tracing.error(span, _redact(f"{type(exc).__name__}: {exc}")[:500])
        span.end()
        raise
    done = _usage_attrs(result.usage) if result.usage is not None else {}
    if result.model:
        done["gen_ai.response.model"] = str(result.model).split(":", 1)[-1]
    if result.stop:
        done["gen_ai.response.finish_reasons"] = [str(result.stop)]
    if content:
        message = _turn_message(result)
        state.history = [*state.history, message]
        done["gen_ai.output.messages"] = json.dumps([message])
    span.set_attributes(done)
    span.end()
    return result


def tool(coro: Awaitable[T], call: Any) -> Awaitable[T]:
    """One tool call a model asked for (a `ToolCall`), as an ``execute_tool <name>`` span."""
    if _parent.get() is None:
        return coro
    return _traced_tool(coro, call)


async def _traced_tool(coro: Awaitable[Any], call: Any) -> Any:
    tracing, name = _tracing, call.name
    attrs = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.type": "function",
    }
    if call.id:
        attrs["gen_ai.tool.call.id"] = str(call.id)
    content = _content.get()
    if content:
        attrs["gen_ai.tool.call.arguments"] = _redact(_json_text(call.arguments))
    span = tracing.start(f"execute_tool {name}", _parent.get(), attrs)
    try:
        text, failed = await coro
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        span.end()
        raise
    if content:
        result = _redact(str(text))
        span.set_attribute("gen_ai.tool.call.result", result)
        state = _step.get()
        if state is not None:  # the next turn sends it back to the model
            part = {"type": "tool_call_response", "id": call.id, "response": result}
            state.history = [*state.history, {"role": "tool", "parts": [part]}]
    if failed:
        span.set_attribute("error.type", "tool_error")
        tracing.error(span, _redact(str(text))[:500])
    span.end()
    return text, failed


# batches, Dask tasks and later review decisions live in _trace_links (re-exported here)
from ._trace_links import batch_started, carried_env, decision, stored  # noqa: E402, F401
