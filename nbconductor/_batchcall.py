"""The row side of ``nbconductor batch --provider-batch``: model calls handed to the broker.

When ``NBCONDUCTOR_BATCH_BROKER`` names the coordinator's broker socket, the provider pool
gives every adapter that supports provider batches a `BatchTransport`: instead of sending a
request, the adapter hands its request body to the broker (one JSON line over a local Unix
socket, which only this user can open) and waits for the result line. The broker
(`nbconductor.handoff._broker`) collects the calls of all rows, submits them as one provider
batch and answers each call with its request's result, in the provider-neutral form below;
the adapter turns a success into its usual `Response` and anything else into the same
`ProviderError` a direct call would raise, so the ladder retries it the same way.

A result line is one of::

    {"type": "succeeded", "body": {...}}         # the provider's response body
    {"type": "errored", "status": 529, "error": {"type": ..., "message": ...}}
    {"type": "expired"} | {"type": "canceled"}   # the batch ended before the request ran
    {"type": "failed", "error": {"kind": "ServerError", "message": ..., "status": ...}}
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from ._errors import TransportError

BROKER_ENV = "NBCONDUCTOR_BATCH_BROKER"
SEND_PATIENCE = 10.0  # seconds a call keeps trying to reach a busy broker
ROW_ENV = "JPY_SESSION_NAME"  # which row a call belongs to (set by the batch row runner)


class BatchTransport:
    """Sends a request body to the broker and waits (as long as the batch takes) for its result."""

    def __init__(self, address: str):
        self.address = address

    @classmethod
    def from_env(cls) -> BatchTransport | None:
        address = os.environ.get(BROKER_ENV)
        return cls(address) if address else None

    async def call(self, provider: str, group: dict[str, Any], body: dict) -> dict:
        """The result (see the module docstring) of ``body`` sent in a ``provider`` batch.

        ``group`` says how to reach the provider (``base_url``, ``key_env``, ``model``); the
        broker reads the key from its own environment. Raises `TransportError` when the
        broker cannot be reached or hangs up.
        """
        line = json.dumps(
            {"provider": provider, "group": group, "body": body, "row": os.environ.get(ROW_ENV)}
        )
        reader, writer = await self._send(provider, line.encode() + b"\n")
        try:
            answer = await reader.readline()
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise TransportError(
                f"{provider}: the batch broker hung up ({exc})", provider=provider
            ) from None
        finally:
            writer.close()
        if not answer:
            raise TransportError(f"{provider}: the batch broker hung up", provider=provider)
        result = json.loads(answer)
        if not isinstance(result, dict) or "type" not in result:
            raise TransportError(f"{provider}: the batch broker sent no result", provider=provider)
        return result

    async def _send(self, provider: str, data: bytes) -> tuple:
        """Connect and send ``data``. A burst of rows can find the broker's listen queue full
        (the connection is refused or reset before a byte arrives): try again, up to ~10 s.
        A failed send delivered nothing, so trying again never makes a call twice."""
        delay, waited = 0.02, 0.0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.address, limit=2**26)
            except (FileNotFoundError, PermissionError) as exc:
                raise TransportError(
                    f"{provider}: the batch broker is not reachable ({exc.strerror or exc})",
                    provider=provider,
                ) from None
            except OSError as exc:
                error = exc
            else:
                try:
                    writer.write(data)
                    await writer.drain()
                    return reader, writer
                except OSError as exc:
                    writer.close()
                    error = exc
            if waited >= SEND_PATIENCE:
                raise TransportError(
                    f"{provider}: the batch broker is not reachable ({error.strerror or error})",
                    provider=provider,
                ) from None
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)
