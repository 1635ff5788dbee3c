"""The provider interface."""

from __future__ import annotations

from .._config import ModelRef
from .._types import Request, Response


class Provider:
    """Base class of provider adapters. One instance serves every model of its provider.

    Subclasses implement `complete` (and `image` if they can make images). They raise
    `ProviderError` subclasses from ``nbconductor._errors`` and never retry themselves.
    """

    name = "base"
    #: whether calls can go through the provider's batch API (``--provider-batch``)
    supports_batch = False
    #: set by the pool in a ``--provider-batch`` row: calls go to the broker, not the network
    batch = None

    def __init__(self, ref: ModelRef, *, timeout: float = 600.0, read_timeout: float = 120.0):
        self.ref = ref
        self.timeout = timeout
        self.read_timeout = read_timeout

    async def complete(self, request: Request) -> Response:
        raise NotImplementedError

    async def image(self, request: Request) -> Response:
        from .._errors import RequestError

        raise RequestError(f"provider `{self.name}` cannot generate images", provider=self.name)

    @classmethod
    def warm(cls) -> None:
        """Import now what this adapter's first call would (its SDK); a warm batch worker's
        forkserver calls it once so that no row pays the import. Never raises."""

    async def aclose(self) -> None:
        """Release clients; called when a pipeline is closed."""
