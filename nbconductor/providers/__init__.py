"""Model providers behind one registry.

A provider is a thin adapter: it turns a `Request` into one SDK call, maps the SDK's errors to
nbconductor's (`ProviderError` subclasses) and reports usage. Retries, fallbacks, caching and
gates live once, in the executor. Third parties add providers through the
``nbconductor.providers`` entry-point group.
"""

from ._base import Provider
from ._registry import ProviderRegistry, registry

__all__ = ["Provider", "ProviderRegistry", "registry"]
