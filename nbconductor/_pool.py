"""Provider instances, per-provider concurrency limits and cooldowns, shared by a pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref

from ._batchcall import BatchTransport
from ._config import Config, ModelRef, resolve_model
from ._limiter import MachineSlots, is_loopback
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
        # In a `nbconductor batch --provider-batch` row: calls go to the coordinator's broker.
        self.batch = BatchTransport.from_env()

    def resolve(self, spec: str | None) -> ModelRef:
        return resolve_model(spec, self.config, self.aliases, registry.names())

    def provider(self, ref: ModelRef) -> Provider:
        inst = self._instances.get(ref)
        if inst is None:
            cls = registry.get(ref.provider)
            inst = cls(ref, timeout=self.config.timeout, read_timeout=self.config.read_timeout)
            inst.concurrency = self.config.limit_for(ref)  # what a cut stream's error may suggest
            if self.batch is not None and getattr(cls, "supports_batch", False):
                inst.batch = self.batch
            self._instances[ref] = inst
        return inst

    def batched(self, ref: ModelRef) -> bool:
        """Whether calls to ``ref`` go through its provider's batch API (priced at batch prices)."""
        return self.batch is not None and bool(getattr(self.provider(ref), "batch", None))

    @contextlib.asynccontextmanager
    async def slot(self, target: str | ModelRef):
        """Hold one of the concurrency slots of ``target``'s server (a provider name, or a
        `ModelRef`: per base URL, its alias's ``concurrency``). A server on this machine is
        limited across processes too (`MachineSlots`), so batch workers share its limit."""
        ref = target if isinstance(target, ModelRef) else None
        key = (ref.base_url or ref.provider) if ref is not None else target
        limit = self.config.limit_for(ref) if ref is not None else self.config.limit(target)
        # One semaphore per event loop: a pipeline may be run from several loops over time.
        per_loop = self._semaphores.setdefault(asyncio.get_running_loop(), {})
        sem = per_loop.get((key, limit))
        if sem is None:
            sem = per_loop[(key, limit)] = asyncio.Semaphore(limit)
        async with sem:
            if ref is not None and ref.base_url and is_loopback(ref.base_url):
                async with MachineSlots(ref.base_url, limit).hold():
                    yield
            else:
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
