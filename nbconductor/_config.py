"""Configuration from ``nbconductor.toml`` or ``[tool.nbconductor]`` in ``pyproject.toml``.

Example::

    default_model = "anthropic:claude-sonnet-4-6"
    [aliases]
    fast = "anthropic:claude-haiku-4-5"
    local = { model = "openai-compatible:llama3.1", base_url = "http://localhost:11434/v1",
              structured = "json_object", concurrency = 1 }
    [concurrency]
    anthropic = 4
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._env import offline_forced
from ._errors import ConfigError, OptionError
from ._limiter import LOCAL_CONCURRENCY, is_loopback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}

# Used for `fast`, `writer` and `judge` when the config does not define them.
_BUILTIN_ALIASES = {
    "anthropic": {
        "fast": "anthropic:claude-haiku-4-5",
        "writer": "anthropic:claude-sonnet-4-6",
        "judge": "anthropic:claude-sonnet-4-6",
        "default": "anthropic:claude-sonnet-4-6",
    },
    "openai": {
        "fast": "openai:gpt-4.1-mini",
        "writer": "openai:gpt-4.1",
        "judge": "openai:gpt-4.1",
        "default": "openai:gpt-4.1",
        "image": "openai:gpt-image-1",
    },
}


class AliasSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    #: how structured output is asked for (None: probe json_schema, then fall back)
    structured: Literal["json_schema", "json_object", "prompt"] | None = None
    #: calls in flight at once to this alias's server, across the batch workers of a machine
    concurrency: int | None = Field(None, gt=0)
    #: which OpenAI API its calls use: Chat Completions (the default) or the Responses API
    api: Literal["chat", "responses"] | None = None


class Price(BaseModel):
    """US dollars per million tokens (or per image)."""

    model_config = ConfigDict(extra="forbid")
    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None
    image: float | None = None
    #: batch price as a share of the above (``--provider-batch``); None: the default, 0.5
    batch: float | None = None


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    cooldown: float = 60.0
    cooldown_after: int = 3


class RedactConfig(BaseModel):
    """``[redact]``: more to redact than provider keys and secret-named variables (`nbconductor._redact`)."""

    model_config = ConfigDict(extra="forbid")
    patterns: list[str] = Field(default_factory=list)  # regular expressions
    variables: list[str] = Field(
        default_factory=list
    )  # environment variables whose values are secrets

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"`{pattern}` is not a regular expression: {exc}") from None
        return patterns

    def model_post_init(self, context: Any) -> None:
        from ._redact import add_config

        add_config(self.patterns, self.variables)  # process-wide, and it only ever grows


class TemplateLimits(BaseModel):
    """``[templates]``: how large a rendered prompt may get and how long rendering may take."""

    model_config = ConfigDict(extra="forbid")
    max_output: int = Field(1_000_000, gt=0)  # characters
    timeout: float = Field(5.0, gt=0, allow_inf_nan=False)  # seconds


class OtelConfig(BaseModel):
    """``[otel]``: where traces go when the ``OTEL_EXPORTER_OTLP_*`` variables do not say (`_trace`)."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str | None = None  # the OTLP base URL, e.g. http://localhost:6006
    protocol: Literal["http/protobuf", "grpc"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_model: str | None = None
    aliases: dict[str, str | AliasSpec] = Field(default_factory=dict)
    concurrency: dict[str, int] = Field(default_factory=dict)
    default_concurrency: int = 8
    store: str | None = None
    prices: dict[str, Price] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    templates: TemplateLimits = Field(default_factory=TemplateLimits)
    redact: RedactConfig = Field(default_factory=RedactConfig)
    otel: OtelConfig = Field(default_factory=OtelConfig)
    timeout: float = 600.0
    read_timeout: float = 120.0
    source: str | None = None  # the file this came from

    def limit(self, provider: str) -> int:
        return self.concurrency.get(
            provider, 16 if provider == "offline" else self.default_concurrency
        )

    def limit_for(self, ref: ModelRef) -> int:
        """Calls in flight at once for ``ref``: its alias's ``concurrency``, else ``[concurrency]``
        by alias, base URL or provider, else 1 for an openai-compatible server on this machine."""
        if ref.concurrency:
            return ref.concurrency
        for key in (ref.alias, ref.base_url, ref.provider):
            if key and key in self.concurrency:
                return self.concurrency[key]
        if ref.provider == "openai-compatible" and is_loopback(ref.base_url):
            return LOCAL_CONCURRENCY
        return self.limit(ref.provider)


def find_config(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest ``nbconductor.toml``, or ``pyproject.toml`` with a [tool.nbconductor] table."""
    here = Path(start or os.getcwd()).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "nbconductor.toml"
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.nbconductor" in pyproject.read_text(errors="replace"):
            return pyproject
    return None


def load_config(
    path: str | os.PathLike | None = None, start: str | os.PathLike | None = None
) -> Config:
    """Read the configuration; an absent file gives defaults. Raises `ConfigError`."""
    file = Path(path) if path else find_config(start)
    if file is None:
        return Config()
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{file} is not valid TOML: {str(exc).splitlines()[0]}: fix the syntax there"
        ) from None
    if file.name == "pyproject.toml":
        data = data.get("tool", {}).get("nbconductor", {})
    try:
        return Config(**data, source=str(file))
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_explain(exc)}") from None


_UNION_TAGS = {
    "str",
    "AliasSpec",
}  # pydantic names the member of `str | AliasSpec` an error is about


def _explain(exc: ValidationError) -> str:
    """One config error as ``key: what is wrong and how to fix it`` (pydantic lists many)."""
    errors = exc.errors()
    # Of the two members of an alias's union, the error about the one the user meant: a table
    # is an AliasSpec, so "Input should be a valid string" about a table is noise.
    useful = [
        e for e in errors if not (e["type"] == "string_type" and isinstance(e.get("input"), dict))
    ]
    first = next(
        (e for e in useful if e["type"] in ("extra_forbidden", "missing")), (useful or errors)[0]
    )
    loc = [str(p) for p in first["loc"] if str(p) not in _UNION_TAGS]
    where = ".".join(loc)
    if first["type"] == "extra_forbidden":
        known = _fields_at(first["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else "remove it"
        return f"`{where}` is not a setting: {hint} (known here: {', '.join(known)})"
    if first["type"] == "missing":
        return f"`{where}` is required: add `{loc[-1]} = …` there"
    if loc[:1] == ["aliases"] and len(loc) == 2:
        return (
            f'`{where}` = {first.get("input")!r}: an alias is "provider:model" or a table '
            '{ model = "provider:model", base_url = "…", api_key_env = "…" }'
        )
    msg = first["msg"].removeprefix("Value error, ")
    return f"`{where}` = {first.get('input')!r}: {msg}"


def _fields_at(loc: tuple) -> list[str]:
    """The keys allowed in the table at ``loc`` (a pydantic error location)."""
    import typing

    model: Any = Config
    expect_key = False
    for part in loc:
        if expect_key:  # a dict's key, e.g. the alias name
            expect_key = False
            continue
        if part in _UNION_TAGS:
            model = AliasSpec if part == "AliasSpec" else model
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            annotation, expect_key = typing.get_args(annotation)[1], True
        members = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type)]
        model = next((a for a in members if issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return [n for n in getattr(model, "model_fields", {}) if n != "source"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: which provider adapter, which model, and how to reach it."""

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    alias: str | None = None
    structured: str | None = None  # forced structured-output mode (`providers._structured`)
    concurrency: int | None = None  # the alias's own limit (`ProviderPool.slot`)
    api: str | None = None  # ``responses``: an openai: alias on the Responses API

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.model}"


def alias_text(target: str | AliasSpec) -> str:
    """An alias's target as ``%conductor alias`` words: ``SPEC [--base-url URL] [...]``."""
    if isinstance(target, str):
        return target
    words = [target.model]
    for option, value in (
        ("--base-url", target.base_url),
        ("--api-key-env", target.api_key_env),
        ("--structured", target.structured),
        ("--concurrency", target.concurrency),
        ("--api", target.api),
    ):
        if value is not None:
            words += [option, str(value)]
    return " ".join(words)


def keys_available(environ: os._Environ | dict | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [p for p, var in KEY_ENV.items() if env.get(var)]


def resolve_model(
    spec: str | None,
    config: Config,
    session_aliases: dict[str, str] | None = None,
    providers: set[str] | None = None,
) -> ModelRef:
    """Turn ``--model`` (an alias, ``provider:model`` or nothing) into a `ModelRef`.

    With no spec and no default model, the first provider with a key is used, else the
    offline provider. Under `offline_forced`, the resolved model is replaced by
    ``offline:<alias or model>``. Raises `OptionError` for unknown aliases or providers.
    """
    ref = _resolve(spec, config, session_aliases, providers)
    if offline_forced() and ref.provider != "offline":
        return ModelRef("offline", ref.alias or ref.model, alias=ref.alias)
    return ref


def _resolve(
    spec: str | None,
    config: Config,
    session_aliases: dict[str, str] | None,
    providers: set[str] | None,
) -> ModelRef:
    aliases: dict[str, str | AliasSpec] = {**config.aliases, **(session_aliases or {})}
    seen: list[str] = []
    alias_name = None
    if spec is None:
        spec = config.default_model or "default"
    while ":" not in spec:
        if spec in seen:
            raise OptionError(f"model alias `{spec}` refers to itself: {' → '.join(seen + [spec])}")
        seen.append(spec)
        alias_name = alias_name or spec
        target = aliases.get(spec)
        if target is None:
            keyed = keys_available()
            builtin = next(
                (_BUILTIN_ALIASES[p][spec] for p in keyed if spec in _BUILTIN_ALIASES[p]), None
            )
            if builtin:
                target = builtin
            elif not keyed and spec in {"fast", "writer", "judge", "default", "image"}:
                target = f"offline:{spec}"
            else:
                known = sorted(set(aliases) | {"fast", "writer", "judge"})
                if spec == "image":
                    raise OptionError(
                        "image steps need OPENAI_API_KEY (OpenAI Images) or an `image` alias: "
                        "%conductor alias image openai:gpt-image-1"
                    )
                close = difflib.get_close_matches(spec, known, n=1)
                hint = f"did you mean `{close[0]}`? " if close else ""
                raise OptionError(
                    f"unknown model `{spec}`: {hint}use provider:model (e.g. anthropic:claude-sonnet-4-6) "
                    f"or an alias ({', '.join(known)}); define one with `%conductor alias {spec} provider:model`"
                )
        if isinstance(target, AliasSpec):
            provider, _, model = target.model.partition(":")
            ref = ModelRef(
                provider,
                model,
                target.base_url,
                target.api_key_env,
                alias_name,
                target.structured,
                target.concurrency,
                target.api,
            )
            if ref.api == "responses" and provider != "openai":
                raise OptionError(
                    f'alias {alias_name}: api = "responses" is OpenAI\'s Responses API: it needs '
                    f"an openai: model, not {target.model}"
                )
            _check_provider(ref, providers)
            return ref
        spec = target
    provider, _, model = spec.partition(":")
    if not provider or not model:
        raise OptionError(f"model `{spec}` must look like provider:model, e.g. openai:gpt-4.1-mini")
    ref = ModelRef(provider, model, alias=alias_name)
    _check_provider(ref, providers)
    return ref


def _check_provider(ref: ModelRef, providers: set[str] | None) -> None:
    if providers is not None and ref.provider not in providers:
        raise OptionError(
            f"unknown provider `{ref.provider}` in model `{ref.spec}`: known providers are "
            f"{', '.join(sorted(providers))}"
        )
