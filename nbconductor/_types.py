"""Plain data shared by every layer: step declarations, model requests and step results."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

StepKind = Literal["llm", "python", "image", "function"]
State = Literal["pending", "running", "cached", "passed", "flagged", "failed", "skipped"]
ON_FAIL = ("retry", "fallback", "review", "fail")


@dataclass
class Rubric:
    """An LLM-judge gate attached to a step."""

    text: str
    judge: str | None = None
    threshold: float = 0.8
    retries: int | None = None
    on_fail: str | None = None
    max_tokens: int | None = None  # the judge's token limit (None: JUDGE_MAX_TOKENS)


@dataclass
class Step:
    """One declared step. ``body`` is a Jinja2 template (llm/image) or Python code."""

    name: str
    body: str = ""
    kind: StepKind = "llm"
    model: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    system: str | None = None
    after: list[str] = field(default_factory=list)
    json: bool = False
    schema: str | None = None
    map: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    retries: int = 2
    checks: list[str] = field(default_factory=list)
    on_fail: str = "review"
    when: str | None = None
    tools: list[str] = field(default_factory=list)
    max_turns: int = 8
    lazy: bool = False
    no_cache: bool = False
    audit: float | None = None  # the share of passed outputs sent to review as audits
    rubric: Rubric | None = None
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def replace(self, **changes: Any) -> Step:
        return dataclasses.replace(self, **changes)


@dataclass
class Usage:
    """Token counts of one model call. ``None`` means the provider did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    #: the server sent no usage: the counts were estimated from the text (about 4 characters a token)
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        counts = [f.name for f in dataclasses.fields(self) if f.name != "estimated"]
        return Usage(
            *(add(getattr(self, n), getattr(other, n)) for n in counts),
            estimated=self.estimated or other.estimated,
        )

    @property
    def total(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass
class Request:
    """What a provider adapter turns into one SDK call."""

    model: str
    prompt: str
    system: str | None = None
    contexts: list[tuple[str, str]] = field(default_factory=list)
    json: bool = False
    schema: dict | None = None
    schema_name: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tools: list[dict] = field(default_factory=list)
    max_turns: int = 8
    feedback: str | None = None
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def messages(self) -> list[dict]:
        """The user turn, with gate feedback from a previous attempt appended."""
        content = self.prompt
        if self.feedback:
            content += (
                "\n\nA previous attempt was rejected by a quality check:\n"
                f"{self.feedback}\nRevise your answer to address it."
            )
        return [{"role": "user", "content": content}]

    def system_text(self) -> str | None:
        parts = [self.system] if self.system else []
        parts += [text for _, text in self.contexts]
        return "\n\n".join(parts) or None


@dataclass
class Response:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    data: Any = None  # parsed JSON, or PNG bytes for an image step
    cost: float | None = None


@dataclass
class GateResult:
    name: str
    passed: bool
    score: float | None = None
    feedback: str = ""
    suggestion: str | None = None
    usage: Usage | None = None  # a model-backed gate (the rubric judge): its tokens and cost
    cost: float | None = None


@dataclass
class Attempt:
    model: str
    started: float
    ended: float
    outcome: str  # "passed", "gate", "error", "skipped"
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None

    @property
    def quality_failure(self) -> bool:
        return quality_failure(self.outcome, self.error)


def quality_failure(outcome: str, error: str | None) -> bool:
    """Whether an attempt counts against first-pass yield: the model finished an answer that a
    gate rejected or that was unusable (invalid JSON, schema, refusal, truncated). A transport
    fault (connection, timeout, cut, stalled or malformed stream, 429/5xx) is reliability, not
    quality: it is retried without feedback and does not count."""
    return outcome == "gate" or (outcome == "error" and (error or "").startswith("OutputError"))


@dataclass
class StepResult:
    """The outcome of one step in one run."""

    step: str
    state: State
    output: Any = None
    prompt: str | None = None
    model: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    cache_key: str | None = None
    cached: bool = False
    items: int | None = None
    result_id: int | None = None

    @property
    def latency(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class PNG(bytes):
    """An image step's output: PNG bytes that display as an image in a notebook."""

    def _repr_png_(self) -> bytes:
        return bytes(self)

    def __repr__(self) -> str:
        return f"<PNG image, {len(self)} bytes>"
