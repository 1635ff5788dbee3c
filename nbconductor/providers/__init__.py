"""Model providers behind one registry.

A provider is a thin adapter: it turns a `Request` into one SDK call, maps the SDK's errors to
nbconductor's (`ProviderError` subclasses) and reports `Usage` in its `Response`. Retries,
fallbacks, caching and gates live once, in the executor. Everything a provider author needs is
importable from here; third parties add providers through the ``nbconductor.providers``
entry-point group or `registry.register`.
"""

from .._config import ModelRef
from .._errors import (
    AuthError,
    OutputError,
    ProviderError,
    RateLimitError,
    RequestError,
    ServerError,
    TransportError,
)
from .._types import PNG, Request, Response, Usage
from ._base import Provider
from ._registry import ProviderRegistry, registry

__all__ = [
    "PNG",
    "AuthError",
    "ModelRef",
    "OutputError",
    "Provider",
    "ProviderError",
    "ProviderRegistry",
    "RateLimitError",
    "Request",
    "RequestError",
    "Response",
    "ServerError",
    "TransportError",
    "Usage",
    "registry",
]
