"""Configuration from ``nbconductor.toml`` or ``[tool.nbconductor]`` in ``pyproject.toml``.

Example::

    default_model = "anthropic:claude-sonnet-4-6"
    [aliases]
    fast = "anthropic:claude-haiku-4-5"
    local = { model = "openai-compatible:llama3.1", base_url = "http://localhost:11434/v1" }
    [concurrency]
    anthropic = 4
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._env import offline_forced
from ._errors import ConfigError, OptionError

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


class Price(BaseModel):
    """US dollars per million tokens (or per image)."""

    model_config = ConfigDict(extra="forbid")
    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None
    image: float | None = None


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    cooldown: float = 60.0
    cooldown_after: int = 3


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_model: str | None = None
    aliases: dict[str, str | AliasSpec] = Field(default_factory=dict)
    concurrency: dict[str, int] = Field(default_factory=dict)
    default_concurrency: int = 8
    store: str | None = None
    prices: dict[str, Price] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: float = 600.0
    read_timeout: float = 120.0
    source: str | None = None  # the file this came from

    def limit(self, provider: str) -> int:
        return self.concurrency.get(provider, 16 if provider == "offline" else self.default_concurrency)


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


def load_config(path: str | os.PathLike | None = None, start: str | os.PathLike | None = None) -> Config:
    """Read the configuration; an absent file gives defaults. Raises `ConfigError`."""
    file = Path(path) if path else find_config(start)
    if file is None:
        return Config()
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from None
    if file.name == "pyproject.toml":
        data = data.get("tool", {}).get("nbconductor", {})
    try:
        return Config(**data, source=str(file))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{file}: `{where}`: {first['msg']}") from None


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: which provider adapter, which model, and how to reach it."""

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    alias: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.model}"


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
            builtin = next((_BUILTIN_ALIASES[p][spec] for p in keyed if spec in _BUILTIN_ALIASES[p]), None)
            if builtin:
                target = builtin
            elif not keyed and spec in {"fast", "writer", "judge", "default", "image"}:
                target = f"offline:{spec}"
            else:
                known = sorted(set(aliases) | {"fast", "writer", "judge"})
                if spec == "image":
                    raise OptionError("image steps need OPENAI_API_KEY (OpenAI Images) or an `image` alias: "
                                      "%conductor alias image openai:gpt-image-1")
                raise OptionError(
                    f"unknown model `{spec}`: use provider:model (e.g. anthropic:claude-sonnet-4-6) "
                    f"or an alias ({', '.join(known)}); define one with `%conductor alias {spec} provider:model`"
                )
        if isinstance(target, AliasSpec):
            provider, _, model = target.model.partition(":")
            ref = ModelRef(provider, model, target.base_url, target.api_key_env, alias_name)
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
