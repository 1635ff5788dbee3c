"""What a model step sends and how its answer is read: the rendered `Request` with its models in
order and cache key (`build_request`, also used by ``--dry-run`` plans), and the parser that
turns a `Response` into the step's output (text, JSON, a schema instance, an image).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._cache import cache_key, schema_class
from ._errors import OutputError
from ._format import strip_fence
from ._template import parse_map, render
from ._types import PNG, Request, Response, Step

if TYPE_CHECKING:
    from ._executor import Session


def build_request(session: Session, step: Step, values: dict) -> tuple[Request, list, str]:
    """The request an LLM/image step would send, its models in order, and its cache key."""
    # A template sees data only; its upstream steps' outputs pass whatever their type.
    limits, outputs = session.pool.config.templates, set(session.graph.deps.get(step.name, ()))
    if step.map:  # a --map item comes from the step's own (trusted) --map expression
        outputs.add(parse_map(step.map, step.name)[0])
    prompt = render(
        step.body, _template_values(session, values), step.name, outputs=outputs, limits=limits
    )
    contexts = [(c, session.contexts[c]) for c in step.contexts]
    system = (
        render(step.system, values, step.name, outputs=outputs, limits=limits)
        if step.system and "{" in step.system
        else step.system
    )
    schema_cls = schema_class(step, values) if step.schema else None
    default = "image" if step.kind == "image" and step.model is None else step.model
    models = [session.pool.resolve(default)] + [session.pool.resolve(f) for f in step.fallbacks]
    tools = _tool_specs(step, values)
    request = Request(
        model=models[0].model,
        prompt=prompt,
        system=system,
        contexts=contexts,
        json=step.json or schema_cls is not None,
        schema=schema_cls.model_json_schema() if schema_cls else None,
        schema_name=schema_cls.__name__ if schema_cls else None,
        temperature=step.temperature,
        max_tokens=step.max_tokens,
        tools=tools,
        max_turns=step.max_turns,
    )
    key = cache_key(
        {
            "kind": step.kind,
            "model": models[0].spec,
            "fallbacks": [m.spec for m in models[1:]],
            "base_url": models[0].base_url,
            "system": request.system_text(),
            "prompt": prompt,
            "json": request.json,
            "schema": request.schema,
            "temperature": step.temperature,
            "max_tokens": step.max_tokens,
            "tools": _tools_key(tools, step),
            "checks": step.checks,
            "rubric": step.rubric and vars(step.rubric),
            "on_fail": step.on_fail,
            "retries": step.retries,
        }
    )
    return request, models, key


def _template_values(session: Session, values: dict) -> dict:
    from .store._history import history_function

    return {
        **values,
        "history": history_function(
            session.store, before=session.started, params=session.params, run_id=session.run_id
        ),
    }


def parser(step: Step, schema_cls) -> Callable[[Response], Any]:
    """How an answer becomes the step's output (image, schema instance, JSON or text); raises
    `OutputError` for an answer that does not fit, so the ladder retries it."""

    def parse(response: Response) -> Any:
        if step.kind == "image":
            return PNG(response.data)
        if schema_cls is not None:
            from pydantic import ValidationError

            data = response.data if response.data is not None else _loads(response.text)
            try:
                return schema_cls.model_validate(data)
            except ValidationError as exc:
                raise OutputError(
                    f"output does not match schema {schema_cls.__name__}: {exc}"
                ) from None
        if step.json:
            return response.data if response.data is not None else _loads(response.text)
        return response.text

    return parse


def _loads(text: str) -> Any:
    try:
        return json.loads(strip_fence(text))
    except ValueError as exc:
        raise OutputError(f"output is not valid JSON: {exc}") from None


def _tool_specs(step: Step, values: dict) -> list[dict]:
    if not step.tools:
        return []
    from ._tools import tool_spec

    return [tool_spec(name, values, step.name) for name in step.tools]


def _tools_key(tools: list[dict], step: Step) -> object:
    # The callables stay out of the key (their repr differs per process); their code hash is in.
    if not tools:
        return []
    from ._tools import public_spec

    return {"specs": [public_spec(t) for t in tools], "max_turns": step.max_turns}
