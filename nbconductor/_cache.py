"""The step cache: a step's key is a hash of everything that determines its result, and a
finished result is served again by key, from this process's memory or from the store.

`cache_key` hashes the parts of a step (model, rendered messages, options, code, upstream
outputs); `stable_hash` hashes a value so that it is equal across processes when the value is,
without pickling it (a Python step's inputs, a tool's code). `cache_lookup` returns a reused
result (``cached``, or still ``flagged`` until a reviewer decides) or None.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from ._errors import UnknownNameError
from ._states import CACHED, FLAGGED
from ._types import PNG, Step, StepResult

if TYPE_CHECKING:
    from ._executor import RunOptions, Session


def cache_key(parts: dict) -> str:
    """The hex SHA-256 of ``parts`` as sorted JSON (values JSON cannot hold by their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stable_hash(value: Any) -> str:
    """A hash of a value that is equal across processes when the value is (never pickles)."""
    from .store._codec import canonical_bytes

    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def cache_lookup(session: Session, key: str, step: Step, options: RunOptions) -> StepResult | None:
    """The result stored under ``key`` as this step's reuse of it, or None (a miss, ``--no-cache``
    or ``--force``)."""
    force = options.force
    if step.no_cache or force is True or (isinstance(force, set) and step.name in force):
        return None
    hit = session.memory.get(key) or session.store.lookup(key)
    if hit is None:
        return None
    output = hit.output
    if step.schema and isinstance(output, dict):
        output = schema_class(step, session.namespace).model_validate(output)
    if step.kind == "image" and isinstance(output, bytes):
        output = PNG(output)
    now = time.time()
    # A flagged output stays flagged until a reviewer decides it, however often it is reused.
    state = FLAGGED if hit.state == FLAGGED else CACHED
    return StepResult(
        step.name,
        state,
        output,
        prompt=hit.prompt,
        model=hit.model,
        attempts=hit.attempts,
        gates=hit.gates,
        usage=hit.usage,
        cost=hit.cost,
        started=now,
        ended=now,
        cache_key=key,
        cached=True,
        items=hit.items,
    )


def schema_class(step: Step, values: dict):
    """The pydantic model a ``--schema NAME`` step names; `UnknownNameError` when there is none."""
    cls = values.get(step.schema)
    if cls is None or not hasattr(cls, "model_validate"):
        raise UnknownNameError(
            step.name,
            step.schema or "",
            [k for k, v in values.items() if hasattr(v, "model_validate")],
        )
    return cls
