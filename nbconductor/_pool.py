"""Provider instances, per-provider concurrency limits and cooldowns, shared by a pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref

from ._config import Config, ModelRef, resolve_model
from .providers import registry
from .providers._base import Provider


class ProviderPool:
    """Hands out adapter instances and concurrency slots; remembers which providers misbehave.

    A provider that fails ``retry.cooldown_after`` times in a row with retryable errors cools
    down for ``retry.cooldown`` seconds: steps with a fallback go straight to it meanwhile.
    """

    def __init__(self, config: Config, aliases: dict[str, str] | None = None):
        self.config = config
        self.aliases = aliases if aliases is not None else {}
        self._instances: dict[ModelRef, Provider] = {}
        # Per event loop (a semaphore binds to the loop that first uses it), weakly keyed so a
        # finished loop's semaphores go with it and a new loop never inherits them.
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._failures: dict[str, int] = {}
        self._cool_until: dict[str, float] = {}

    def resolve(self, spec: str | None) -> ModelRef:
        return resolve_model(spec, self.config, self.aliases, registry.names())

    def provider(self, ref: ModelRef) -> Provider:
        inst = self._instances.get(ref)
        if inst is None:
            cls = registry.get(ref.provider)
            inst = cls(ref, timeout=self.config.timeout, read_timeout=self.config.read_timeout)
            self._instances[ref] = inst
        return inst

    @contextlib.asynccontextmanager
    async def slot(self, provider: str):
        # One semaphore per event loop: a pipeline may be run from several loops over time.
        per_loop = self._semaphores.setdefault(asyncio.get_running_loop(), {})
        sem = per_loop.get(provider)
        if sem is None:
            sem = per_loop[provider] = asyncio.Semaphore(self.config.limit(provider))
        async with sem:
            yield

    def cooling(self, provider: str) -> bool:
        return self._cool_until.get(provider, 0.0) > time.monotonic()

    def failed(self, provider: str) -> None:
        n = self._failures.get(provider, 0) + 1
        self._failures[provider] = n
        if n >= self.config.retry.cooldown_after:
            self._cool_until[provider] = time.monotonic() + self.config.retry.cooldown

    def succeeded(self, provider: str) -> None:
        self._failures[provider] = 0
        self._cool_until.pop(provider, None)

    async def aclose(self) -> None:
        for inst in self._instances.values():
            await inst.aclose()
        self._instances.clear()
