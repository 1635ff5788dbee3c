"""The batch endpoints of the loopback fake (`tests.fakeapi`), in the providers' wire formats.

Anthropic Message Batches::

    POST /v1/messages/batches                 {"requests": [{"custom_id", "params"}]}
    GET  /v1/messages/batches/{id}            processing_status in_progress -> ended
    GET  /v1/messages/batches/{id}/results    JSONL {"custom_id", "result": {"type": ...}}

OpenAI Batch::

    POST /v1/files                            multipart, purpose=batch, a JSONL file
    POST /v1/batches                          {"input_file_id", "endpoint", "completion_window"}
    GET  /v1/batches/{id}                     status in_progress -> completed
    GET  /v1/files/{id}/content               output / error file JSONL

An OpenAI batch's lines may be Chat Completions or Responses requests (``url``
``/v1/responses``: answered in the Responses form, `tests.fakeresponses`).

A batch ends ``api.batch_delay`` seconds after it was created. Every request's reply is
drawn when the batch is created, from the same script queues and defaults as a direct call
of that endpoint (``"anthropic"`` / ``"openai"``): a `Text`/`JSONText`/`ToolCall` succeeds,
an `Error` is an errored request, `Expired()` / `Canceled()` expire or cancel it. Every
request ever submitted is listed in ``api.batch_log`` (`BatchRequest`).
"""

from __future__ import annotations

import datetime as _dt
import email.parser
import json
import time
from dataclasses import dataclass, field
from typing import Any

try:
    from . import fakeresponses
except ImportError:  # imported as a top-level module (tests/ on sys.path)
    import fakeresponses

__all__ = ["BatchRequest", "Canceled", "Expired", "FakeBatch"]


@dataclass
class Expired:
    """The request was not processed before the batch expired."""


@dataclass
class Canceled:
    """The batch was cancelled before this request ran."""


@dataclass
class BatchRequest:
    """One request inside a submitted batch."""

    provider: str  # anthropic | openai
    batch_id: str
    custom_id: str
    body: dict
    time: float = field(default_factory=time.monotonic)


@dataclass
class FakeBatch:
    id: str
    provider: str
    created: float
    delay: float
    results: list  # (custom_id, kind, payload): kind succeeded | errored | expired | canceled
    endpoint: str = "/v1/chat/completions"
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None

    def ended(self) -> bool:
        return time.time() >= self.created + self.delay


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


def route(path: str, method: str) -> str | None:
    """The batch route a request path is for, or None."""
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/messages/batches") and method == "POST":
        return "anthropic_create"
    if "/messages/batches/" in p:
        return "anthropic_results" if p.endswith("/results") else "anthropic_get"
    if p.endswith("/v1/files") and method == "POST":
        return "openai_file"
    if "/v1/files/" in p and p.endswith("/content"):
        return "openai_content"
    if p.endswith("/v1/batches") and method == "POST":
        return "openai_create"
    if "/v1/batches/" in p and method == "GET":
        return "openai_get"
    return None


def handle(handler: Any, kind: str, rec: Any) -> None:
    """Answer one batch request on ``handler`` (a `fakeapi._Handler`)."""
    fake = handler.fake
    parts = rec.path.split("?", 1)[0].rstrip("/").split("/")
    if kind == "anthropic_create":
        handler._endpoint = "anthropic"
        reqs = (rec.json or {}).get("requests") or []
        bid = f"msgbatch_fake{next(fake._counter):06d}"
        results = [
            _draw(handler, "anthropic", bid, r["custom_id"], r.get("params") or {}) for r in reqs
        ]
        batch = FakeBatch(bid, "anthropic", time.time(), fake.batch_delay, results)
        with fake._lock:
            fake.batches[bid] = batch
        return handler._send_json(200, _anthropic_batch(handler, batch))
    if kind in ("anthropic_get", "anthropic_results"):
        handler._endpoint = "anthropic"
        bid = parts[-2] if kind == "anthropic_results" else parts[-1]
        batch = fake.batches.get(bid)
        if batch is None:
            return _not_found(handler, bid)
        if kind == "anthropic_get":
            return handler._send_json(200, _anthropic_batch(handler, batch))
        lines = []
        for cid, what, payload in batch.results:
            result: dict = {"type": what}
            if what == "succeeded":
                result["message"] = payload
            elif what == "errored":
                result["error"] = payload
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        return _send_jsonl(handler, lines)
    handler._endpoint = "openai"
    if kind == "openai_file":
        content = _multipart_file(rec)
        fid = f"file-fake{next(fake._counter):06d}"
        with fake._lock:
            fake.files[fid] = content
        return handler._send_json(
            200,
            {
                "id": fid,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": "batch.jsonl",
                "purpose": "batch",
                "status": "processed",
            },
        )
    if kind == "openai_create":
        body = rec.json or {}
        fid = body.get("input_file_id")
        data = fake.files.get(fid)
        if data is None:
            return _not_found(handler, str(fid))
        bid = f"batch_fake{next(fake._counter):06d}"
        results = []
        for line in data.decode().splitlines():
            if line.strip():
                item = json.loads(line)
                if item.get("url") != body.get("endpoint"):  # as OpenAI refuses a mixed file
                    return handler._send_json(
                        400,
                        {
                            "error": {
                                "message": f"line url {item.get('url')!r} is not the batch's "
                                f"endpoint {body.get('endpoint')!r}",
                                "type": "invalid_request_error",
                                "param": "input_file_id",
                                "code": None,
                            }
                        },
                    )
                results.append(
                    _draw(
                        handler,
                        "openai",
                        bid,
                        item["custom_id"],
                        item.get("body") or {},
                        item.get("url") or body.get("endpoint"),
                    )
                )
        batch = FakeBatch(
            bid, "openai", time.time(), fake.batch_delay, results, body.get("endpoint"), fid
        )
        with fake._lock:
            fake.batches[bid] = batch
        return handler._send_json(200, _openai_batch(batch))
    if kind == "openai_get":
        batch = fake.batches.get(parts[-1])
        if batch is None:
            return _not_found(handler, parts[-1])
        if batch.ended() and batch.output_file_id is None:
            _openai_files(handler, batch)
        return handler._send_json(200, _openai_batch(batch))
    if kind == "openai_content":
        data = fake.files.get(parts[-2])
        if data is None:
            return _not_found(handler, parts[-2])
        return _send_jsonl(handler, data.decode().splitlines())
    return _not_found(handler, rec.path)


def _draw(
    handler: Any, provider: str, bid: str, cid: str, body: dict, url: str | None = None
) -> tuple:
    """The result of one request, drawn from the endpoint's script like a direct call's reply.

    ``url``: an OpenAI batch line's endpoint (``/v1/responses`` answers in the Responses form).
    """
    from fakeapi import Error, Recorded

    fake = handler.fake
    rec = Recorded(
        "POST", "", {}, json.dumps(body).encode(), body, time.monotonic(), time.time(), provider
    )
    with fake._lock:
        fake.batch_log.append(BatchRequest(provider, bid, cid, body))
    reply = handler._resolve(fake._next_reply(provider, rec), rec)
    rec.reply = reply
    if isinstance(reply, Expired):
        return cid, "expired", None
    if isinstance(reply, Canceled):
        return cid, "canceled", None
    if isinstance(reply, Error):
        return cid, "errored", _error_body(provider, reply)
    if url == fakeresponses.URL:
        return cid, "succeeded", fakeresponses.response_body(handler, rec, reply)
    blocks, u, stop = handler._blocks(reply, rec)
    if provider == "anthropic":
        content = []
        for b in blocks:
            if b[0] == "text":
                content.append({"type": "text", "text": b[1], "citations": None})
            else:
                content.append({"type": "tool_use", "id": b[1], "name": b[2], "input": b[3]})
        return (
            cid,
            "succeeded",
            handler._anthropic_message(rec, content, stop, handler._anthropic_usage(u)),
        )
    from fakeapi import _FINISH

    text = "".join(b[1] for b in blocks if b[0] == "text") or None
    calls = [
        {"id": b[1], "type": "function", "function": {"name": b[2], "arguments": json.dumps(b[3])}}
        for b in blocks
        if b[0] == "tool"
    ]
    return (
        cid,
        "succeeded",
        handler._openai_completion(rec, text, calls or None, _FINISH.get(stop, "stop"), u),
    )


def _error_body(provider: str, e: Any) -> dict:
    from fakeapi import _ANTHROPIC_ERR_TYPES, _OPENAI_ERR

    if provider == "anthropic":
        et = e.err_type or _ANTHROPIC_ERR_TYPES.get(e.status, "api_error")
        if isinstance(et, tuple):
            et = et[0]
        return {"type": "error", "error": {"type": et, "message": e.message}, "request_id": None}
    t, c = _OPENAI_ERR.get(
        e.status, ("server_error" if e.status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {"message": e.message, "type": e.err_type or t, "param": None, "code": e.code or c}
    }


def _anthropic_batch(handler: Any, batch: FakeBatch) -> dict:
    ended = batch.ended()
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for _, what, _ in batch.results:
        counts[what if ended else "processing"] += 1
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": "ended" if ended else "in_progress",
        "request_counts": counts,
        "created_at": _iso(batch.created),
        "expires_at": _iso(batch.created + 86400),
        "ended_at": _iso(batch.created + batch.delay) if ended else None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": (
            f"{handler.fake.base_url}/v1/messages/batches/{batch.id}/results" if ended else None
        ),
    }


def _openai_files(handler: Any, batch: FakeBatch) -> None:
    fake = handler.fake
    out, err = [], []
    for cid, what, payload in batch.results:
        rid = f"batch_req_fake{next(fake._counter):06d}"
        if what == "succeeded":
            out.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": rid, "body": payload},
                    "error": None,
                }
            )
        elif what == "errored":
            status = 400 if payload["error"]["type"] == "invalid_request_error" else 500
            if (
                payload["error"].get("code") == "rate_limit_exceeded"
                or payload["error"]["type"] == "requests"
            ):
                status = 429
            err.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {"status_code": status, "request_id": rid, "body": payload},
                    "error": None,
                }
            )
        else:
            code = "batch_expired" if what == "expired" else "batch_cancelled"
            err.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": None,
                    "error": {"code": code, "message": f"This request was {what}."},
                }
            )
    with fake._lock:
        if out:
            batch.output_file_id = f"file-fake{next(fake._counter):06d}"
            fake.files[batch.output_file_id] = "".join(json.dumps(x) + "\n" for x in out).encode()
        else:
            batch.output_file_id = ""
        if err:
            batch.error_file_id = f"file-fake{next(fake._counter):06d}"
            fake.files[batch.error_file_id] = "".join(json.dumps(x) + "\n" for x in err).encode()


def _openai_batch(batch: FakeBatch) -> dict:
    ended = batch.ended() and batch.output_file_id is not None
    failed = sum(1 for _, what, _ in batch.results if what != "succeeded")
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": None,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": "completed" if ended else "in_progress",
        "output_file_id": batch.output_file_id or None if ended else None,
        "error_file_id": batch.error_file_id if ended else None,
        "created_at": int(batch.created),
        "in_progress_at": int(batch.created),
        "completed_at": int(batch.created + batch.delay) if ended else None,
        "expires_at": int(batch.created + 86400),
        "request_counts": {
            "total": len(batch.results),
            "completed": len(batch.results) - failed if ended else 0,
            "failed": failed if ended else 0,
        },
        "metadata": None,
    }


def _multipart_file(rec: Any) -> bytes:
    ctype = rec.headers.get("content-type", "")
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + rec.body
    )
    purpose = None
    content = b""
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        if name == "purpose":
            purpose = part.get_payload(decode=True).decode()
        elif name == "file":
            content = part.get_payload(decode=True)
    if purpose != "batch":
        raise ValueError(f"fakeapi: POST /v1/files with purpose {purpose!r}, expected 'batch'")
    return content


def _send_jsonl(handler: Any, lines: list) -> None:
    data = "".join(line + "\n" for line in lines if line.strip()).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/binary")
    handler.send_header("Content-Length", str(len(data)))
    handler._std_headers()
    handler.end_headers()
    handler.wfile.write(data)


def _not_found(handler: Any, what: str) -> None:
    handler._send_json(
        404,
        {
            "error": {
                "message": f"fakeapi: no batch or file {what}",
                "type": "not_found_error",
                "param": None,
                "code": None,
            }
        },
    )
