"""What the adapters share for provider batches: results in, the errors a direct call would raise.

A request that errored inside a batch carries the error body a direct call would have got,
but no HTTP status of its own (Anthropic) or a per-request ``status_code`` (OpenAI). Its
status is recovered from the error type, so `error_for_status` classes it exactly as it
classes a direct call's error: an overloaded or rate-limited request is retryable, an invalid
one is not. A request that expired or was cancelled with its batch never ran: a retryable
`ServerError`, like a call the server dropped.
"""

from __future__ import annotations

from typing import Any

from .. import _errors
from .._errors import ProviderError, ServerError
from ._common import error_for_status

#: Anthropic error types (also OpenAI's) and the HTTP status a direct call gets with them
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def batch_body(result: dict, *, provider: str, model: str, key_env: str) -> dict:
    """The response body of a succeeded batch request; raises the `ProviderError` otherwise."""
    kind = result.get("type")
    if kind == "succeeded":
        return result["body"]
    where = f"{provider}:{model}"
    if kind in ("expired", "canceled"):
        return _raise(
            ServerError(
                f"{where} batch request {kind} before it ran (the batch ended first)",
                provider=provider,
                model=model,
            )
        )
    if kind == "errored":
        error = result.get("error") or {}
        if isinstance(
            error.get("error"), dict
        ):  # Anthropic wraps it: {"type": "error", "error": {...}}
            error = error["error"]
        etype = error.get("type") or error.get("code")
        status = result.get("status") or ERROR_STATUS.get(str(etype), 500)
        return _raise(
            error_for_status(
                status,
                str(error.get("message") or etype or "errored in the batch"),
                provider=provider,
                model=model,
                key_env=key_env,
                kind=str(etype) if etype else None,
            )
        )
    # The broker could not submit or collect the batch: the error it got, by class.
    error = result.get("error") or {}
    cls = getattr(_errors, str(error.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, ProviderError)):
        cls = ServerError
    return _raise(
        cls(
            str(error.get("message") or "the provider batch failed"),
            provider=provider,
            model=model,
            status=error.get("status"),
        )
    )


def _raise(exc: ProviderError) -> Any:
    raise exc


def error_result(exc: ProviderError) -> dict:
    """The broker's result line for calls whose batch could not be submitted or collected."""
    return {
        "type": "failed",
        "error": {"kind": type(exc).__name__, "message": str(exc), "status": exc.status},
    }
