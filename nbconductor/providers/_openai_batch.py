"""The broker's side of OpenAI Batches for `providers.openai` (a mixin of its adapter): one
JSONL file per batch uploaded with ``purpose=batch``, the batch created for one model and one
endpoint (Chat Completions, or the Responses API for an alias with ``api = "responses"``),
polled, and its output and error files read back by ``custom_id``. The SDK client is the
adapter's own (``self._clients``); this module imports no SDK."""

from __future__ import annotations

import json

from . import _responses

BATCH_URL = "/v1/chat/completions"


class OpenAIBatches:
    """Submit, poll and collect OpenAI Batches with the adapter's client."""

    def batch_group(self, model: str) -> dict:
        """How the broker reaches this provider; an OpenAI Batch holds one model and one endpoint."""
        group = {"base_url": self.ref.base_url, "key_env": self.ref.api_key_env, "model": model}
        return {**group, "api": "responses"} if self.responses else group

    async def submit_batch(self, items: list[tuple[str, dict]]) -> str:
        """Upload ``(custom_id, body)`` requests as a batch file and create the batch; its id."""
        return await self._guard(self._submit(items), "batches")

    async def _submit(self, items: list[tuple[str, dict]]) -> str:
        client = await self._clients.get()
        url = _responses.URL if self.responses else BATCH_URL
        lines = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + "\n"
            for cid, body in items
        )
        file = await client.files.create(file=("batch.jsonl", lines.encode()), purpose="batch")
        batch = await client.batches.create(
            input_file_id=file.id, endpoint=url, completion_window="24h"
        )
        return batch.id

    async def batch_ended(self, batch_id: str) -> bool:
        """Whether the batch reached a final status (completed, failed, expired, cancelled)."""
        client = await self._clients.get()
        batch = await self._guard(client.batches.retrieve(batch_id), "batches")
        return batch.status in ("completed", "failed", "expired", "cancelled")

    async def batch_results(self, batch_id: str) -> dict[str, dict]:
        """custom_id -> result (`nbconductor._batchcall` form) from the output and error files."""
        return await self._guard(self._results(batch_id), "batches")

    async def _results(self, batch_id: str) -> dict[str, dict]:
        client = await self._clients.get()
        batch = await client.batches.retrieve(batch_id)
        out: dict[str, dict] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    cid, result = _batch_line(json.loads(line), batch.status)
                    out[cid] = result
        return out


def _batch_line(item: dict, status: str) -> tuple[str, dict]:
    """(custom_id, result) of one line of a batch's output or error file."""
    cid = item.get("custom_id")
    response = item.get("response") or None
    if response and response.get("status_code") == 200:
        return cid, {"type": "succeeded", "body": response.get("body")}
    if response:
        body = response.get("body") or {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        return cid, {"type": "errored", "status": response.get("status_code"), "error": error}
    code = str((item.get("error") or {}).get("code") or "")
    if "expired" in code or status == "expired":
        return cid, {"type": "expired"}
    if "cancel" in code or status == "cancelled":
        return cid, {"type": "canceled"}
    return cid, {"type": "errored", "error": item.get("error") or {}}
