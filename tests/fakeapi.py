"""Loopback fake of the Anthropic Messages, OpenAI Chat Completions and OpenAI
Images HTTP APIs, for the test suite.

The official ``anthropic`` / ``openai`` SDKs talk to it over real HTTP (no SDK
internals are patched)::

    with fake_api() as api:
        api.script(Text("hi", input_tokens=12, output_tokens=3), endpoint="anthropic")
        client = anthropic.AsyncAnthropic(base_url=api.anthropic_base_url,
                                          api_key="k", max_retries=0)
        ...
        api.requests[-1].json["model"]

Server side is stdlib only (``http.server.ThreadingHTTPServer`` on 127.0.0.1,
port 0, in a background thread, HTTP/1.1 keep-alive, chunked SSE streams).

Endpoints (``endpoint`` names in brackets):

* ``POST /v1/messages``                         [anthropic]
* ``POST /v1/messages/count_tokens``            (always ``{"input_tokens": N}``)
* ``POST /v1/chat/completions``                 [openai]
* ``POST /v1/responses``                        [openai] (the Responses API: `fakeresponses`)
* ``POST /v1/images/generations``, ``/v1/images/edits``   [images]

Replies are taken, per request, from the endpoint's script queue, then from the
shared queue (``script(..., endpoint=None)``), then the endpoint's default.
A reply is one of the dataclasses below or a callable ``f(request_json) ->
reply`` (``None`` means "use the default").
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    from . import fakebatch, fakeresponses
except ImportError:  # imported as a top-level module (tests/ on sys.path)
    import fakebatch
    import fakeresponses

__all__ = [
    "FakeAPI",
    "fake_api",
    "Recorded",
    "Text",
    "JSONText",
    "ToolCall",
    "Error",
    "StreamError",
    "Cut",
    "Stall",
    "Malformed",
    "Slow",
    "Image",
    "Raw",
    "tiny_png",
    "ENDPOINTS",
]

ENDPOINTS = ("anthropic", "openai", "images")


# --------------------------------------------------------------------------- replies


@dataclass
class Text:
    """A normal completion.  JSON normally; SSE (text split into ~3 deltas) when
    the request has ``"stream": true``.

    Usage numbers are passed through verbatim:
      Anthropic: usage.input_tokens / output_tokens / cache_read_input_tokens /
                 cache_creation_input_tokens  (Anthropic's input_tokens excludes
                 cached tokens; the fake just echoes what you give).
      OpenAI:    prompt_tokens=input_tokens, completion_tokens=output_tokens,
                 total_tokens=sum, prompt_tokens_details.cached_tokens=cache_read
                 (+ cache_write_tokens when cache_write is non-zero).
    ``stop`` is the Anthropic stop_reason ("end_turn", "max_tokens", ...);
    mapped to OpenAI finish_reason ("stop", "length", ...).
    """

    text: str = "ok"
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read: int = 0
    cache_write: int = 0
    stop: str = "end_turn"
    chunks: int = 3  # number of text deltas when streamed


@dataclass
class JSONText:
    """Structured output.  The text is ``json.dumps(obj)``.

    Anthropic: if the request forces a tool (``tool_choice: {"type": "tool",
    "name": N}``) the reply is a ``tool_use`` block named N with ``input=obj``
    (stop_reason "tool_use"); otherwise a text block with the JSON.
    OpenAI: if the request forces a function (``tool_choice: {"type":
    "function", "function": {"name": N}}``) the reply is a tool call with
    ``arguments=json.dumps(obj)``; otherwise (e.g. ``response_format``
    json_schema / json_object) plain message content with the JSON.
    """

    obj: Any = None
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read: int = 0
    cache_write: int = 0


@dataclass
class ToolCall:
    """A tool_use block (Anthropic) / ``tool_calls`` entry (OpenAI), optionally
    preceded by some ``text``.  stop_reason "tool_use" / finish_reason
    "tool_calls".  Streams use input_json_delta / tool_call argument deltas."""

    name: str
    arguments: dict = field(default_factory=dict)
    id: str | None = None
    text: str | None = None
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read: int = 0
    cache_write: int = 0


_ANTHROPIC_ERR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERR = {  # status -> (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
    529: ("server_error", "overloaded"),
}


@dataclass
class Error:
    """HTTP error in the provider's body format.

    Anthropic: ``{"type":"error","error":{"type":err_type,"message":...},"request_id":...}``
    OpenAI/images: ``{"error":{"message":...,"type":err_type,"param":null,"code":code}}``
    ``err_type``/``code`` default from the status.  ``retry_after`` (seconds,
    int/float/str) and ``retry_after_ms`` become the ``retry-after`` /
    ``retry-after-ms`` response headers.  ``headers`` adds arbitrary headers.
    """

    status: int = 500
    message: str = "fake error"
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    err_type: str | None = None
    code: str | None = None
    headers: dict = field(default_factory=dict)


@dataclass
class StreamError:
    """HTTP 200 stream that sends ``text`` (over ``after_chunks`` deltas) and then
    an in-stream error event (Anthropic: ``event: error`` with an
    overloaded_error body; OpenAI: ``data: {"error": {...}}``) and ends.
    Non-stream requests get ``Error(status, message, err_type=err_type)``."""

    message: str = "Overloaded"
    err_type: str = "overloaded_error"
    text: str = ""
    after_chunks: int = 1
    status: int = 529


@dataclass
class Cut:
    """Connection dropped mid-response.

    Stream: message_start (Anthropic) / role chunk (OpenAI), then exactly
    ``text`` split over ``after_chunks`` deltas, then the socket is closed
    without the terminating chunk, message_stop or ``[DONE]``.
    Non-stream: headers with the full Content-Length, half of the JSON body,
    then the socket is closed."""

    text: str = "partial"
    after_chunks: int = 1


@dataclass
class Stall:
    """Stream: send the start and the first text delta, then sleep ``seconds``
    before sending the rest (so a client read timeout fires).  Non-stream:
    sleep ``seconds`` before sending anything.  Wakes immediately on stop()."""

    seconds: float = 5.0
    text: str = "stalled reply"
    input_tokens: int = 10
    output_tokens: int = 5


@dataclass
class Malformed:
    """Stream: a valid start, then an event whose ``data:`` is not valid JSON,
    then the stream ends normally.  Non-stream: HTTP 200,
    ``Content-Type: application/json``, body ``body`` (not JSON)."""

    body: str = "this is {not json"


@dataclass
class Slow:
    """Wait ``seconds`` (before any byte is sent), then answer with ``reply``."""

    seconds: float
    reply: Any = None


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def tiny_png(width: int = 8, height: int = 8, rgb: tuple = (200, 30, 30)) -> bytes:
    """A valid truecolour PNG of a solid colour (stdlib only)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


@dataclass
class Image:
    """OpenAI images response: ``{"created":..,"data":[{"b64_json":..}] * n}``
    where n is the request's ``n`` (default 1).  Default image: 8x8 PNG."""

    png_bytes: bytes | None = None
    revised_prompt: str | None = None


@dataclass
class Raw:
    """Anything else: exact status, body (str/bytes/JSON-able) and headers."""

    status: int = 200
    body: Any = b""
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"


Reply = (
    Text
    | JSONText
    | ToolCall
    | Error
    | StreamError
    | Cut
    | Stall
    | Malformed
    | Slow
    | Image
    | Raw
    | Callable[[Any], Any]
)


# --------------------------------------------------------------------------- records


@dataclass
class Recorded:
    """One received request."""

    method: str
    path: str
    headers: dict  # lower-cased names
    body: bytes
    json: Any  # parsed body, or None if not JSON (e.g. multipart images/edits)
    time: float  # time.monotonic() when the request head was received
    wall_time: float  # time.time()
    endpoint: str | None  # "anthropic" | "openai" | "images" | None
    reply: Any = None  # the reply object used (after resolving callables)

    @property
    def stream(self) -> bool:
        return bool(isinstance(self.json, dict) and self.json.get("stream"))

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None


class _Stopped(Exception):
    pass


class _Dropped(Exception):
    """Close the connection without finishing the response."""


def _split(text: str, n: int) -> list:
    if n <= 0:
        return []
    if not text:
        return [""] if n > 0 else []
    size = max(1, -(-len(text) // n))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    return parts


_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, fake: FakeAPI):
        self.fake = fake
        self.conns: set = set()
        self.conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address):
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, _Stopped, _Dropped, OSError)):
            return
        self.fake.errors.append(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # ---------------------------------------------------------------- plumbing
    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)
        if self.server.fake._stop.is_set():  # accepted while stopping
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def log_message(self, format, *args):  # silence
        pass

    @property
    def fake(self) -> FakeAPI:
        return self.server.fake

    def _wait(self, seconds: float) -> None:
        if seconds and seconds > 0 and self.fake._stop.wait(seconds):
            raise _Stopped()
        if self.fake._stop.is_set():
            raise _Stopped()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped()

    def _read_body(self) -> bytes:
        """The request's body; a client that went away before sending all of it (a process
        killed mid-request) is a dropped connection (`ConnectionResetError`), as for a server."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                line = self.rfile.readline()
                try:
                    size = int(line.strip().split(b";")[0], 16)
                except ValueError:
                    raise ConnectionResetError("the client went away mid-body") from None
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise ConnectionResetError("the client went away mid-body")
                out += chunk
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if len(body) < n:
            raise ConnectionResetError("the client went away mid-body")
        return body

    def _send_json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._std_headers(headers)
        self.end_headers()
        self.wfile.write(data)

    def _std_headers(self, extra: dict | None = None) -> None:
        rid = self._request_id
        if self._endpoint == "anthropic":
            self.send_header("request-id", rid)
        else:
            self.send_header("x-request-id", rid)
        for k, v in (extra or {}).items():
            self.send_header(k, str(v))

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._std_headers()
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if not data:
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _sse(self, event: str | None, data: Any) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {event}\n" if event else ""
        self._chunk(f"{head}data: {payload}\n\n".encode())

    # ---------------------------------------------------------------- routing
    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self):
        t_mono, t_wall = time.monotonic(), time.time()
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        endpoint: str | None = None
        batch_route = fakebatch.route(path, self.command)
        if batch_route:
            endpoint = "batches"
        elif path.endswith("/messages/count_tokens"):
            endpoint = "count_tokens"
        elif path.endswith("/messages"):
            endpoint = "anthropic"
        elif path.endswith("/chat/completions") or fakeresponses.is_responses(path):
            endpoint = "openai"
        elif (
            path.endswith("/images/generations")
            or path.endswith("/images/edits")
            or path.endswith("/images/variations")
        ):
            endpoint = "images"
        parsed = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        rec = Recorded(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
            time=t_mono,
            wall_time=t_wall,
            endpoint=endpoint if endpoint in (*ENDPOINTS, "batches") else None,
        )
        fake = self.fake
        self._endpoint = endpoint
        self._request_id = f"req_fake_{next(fake._ids):06d}"
        with fake._lock:
            fake.requests.append(rec)
        try:
            if fake._stop.is_set():
                raise _Stopped()
            if batch_route:
                if fake.require_key is not None and not self._key_ok(rec):
                    return self._error(Error(401, "invalid key"))
                return fakebatch.handle(self, batch_route, rec)
            if endpoint == "count_tokens":
                n = max(1, len(body) // 4)
                self._send_json(200, {"input_tokens": n})
                return
            if endpoint is None:
                self._send_json(
                    404,
                    {
                        "error": {
                            "message": f"fakeapi: no route for {self.command} {path}",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "not_found",
                        }
                    },
                )
                return
            if fake.require_key is not None and not self._key_ok(rec):
                self._render(
                    Error(
                        401,
                        "invalid x-api-key"
                        if endpoint == "anthropic"
                        else "Incorrect API key provided",
                    ),
                    rec,
                )
                return
            if fake.mimic == "llama-cpp-python" and endpoint == "openai":
                with fake._lock:
                    fake._chat_gen += 1
                    self._gen = fake._chat_gen
                if self._llama_cpp_python_refuses(rec):
                    return
            reply = fake._next_reply(endpoint, rec)
            reply = fake._maybe_fault(endpoint, reply)
            self._render(reply, rec)
        except (_Stopped, _Dropped):
            self.close_connection = True
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug in the fake or a bad script: report it
            fake.errors.append(exc)
            with contextlib.suppress(Exception):
                self._send_json(
                    500,
                    {
                        "error": {
                            "message": f"fakeapi internal error: {exc!r}",
                            "type": "fakeapi_error",
                        }
                    },
                )
            self.close_connection = True

    def _llama_cpp_python_refuses(self, rec: Recorded) -> bool:
        """llama-cpp-python's server: ``response_format`` must be text or json_object; anything
        else is FastAPI's validation error, which its error handler turns into an HTTP 500."""
        fmt = rec.json.get("response_format") if isinstance(rec.json, dict) else None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind in (None, "text", "json_object"):
            return False
        detail = {
            "type": "literal_error",
            "loc": ("body", "response_format", "type"),
            "msg": "Input should be 'text' or 'json_object'",
            "input": kind,
            "ctx": {"expected": "'text' or 'json_object'"},
        }
        message = f"1 validation error:\n  {detail!r}"
        body = {
            "error": {
                "message": message,
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
        }
        self._send_json(500, body)
        return True

    def _key_ok(self, rec: Recorded) -> bool:
        want = self.fake.require_key
        if self._endpoint == "anthropic":
            return (
                rec.headers.get("x-api-key") == want
                or rec.headers.get("authorization") == f"Bearer {want}"
            )
        return rec.headers.get("authorization") == f"Bearer {want}"

    def _resolve(self, reply: Any, rec: Recorded) -> Any:
        for _ in range(10):
            if reply is None:
                reply = self.fake._default_for(self._endpoint)
            elif isinstance(reply, type) and issubclass(reply, _REPLY_TYPES):
                reply = reply()  # e.g. script(Malformed, Cut)
            elif callable(reply) and not _is_reply(reply):
                reply = reply(rec.json)
            else:
                break
        return reply

    def _render(self, reply: Any, rec: Recorded) -> None:
        reply = self._resolve(reply, rec)
        rec.reply = reply
        stream = rec.stream and self._endpoint in ("anthropic", "openai")
        if isinstance(reply, Slow):
            self._wait(reply.seconds)
            return self._render(reply.reply, rec)
        if isinstance(reply, Error):
            return self._error(reply)
        if isinstance(reply, Raw):
            data = reply.body
            if not isinstance(data, (bytes, str)):
                data = json.dumps(data)
            if isinstance(data, str):
                data = data.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            self._std_headers(reply.headers)
            self.end_headers()
            self.wfile.write(data)
            return
        if self._endpoint == "images":
            if isinstance(reply, Image):
                return self._image(reply, rec)
            if isinstance(reply, Stall):
                self._wait(reply.seconds)
                return self._image(Image(), rec)
            if isinstance(reply, Malformed):
                return self._send_json(200, reply.body.encode())
            if isinstance(reply, Cut):
                return self._cut_json(
                    {
                        "created": int(time.time()),
                        "data": [{"b64_json": base64.b64encode(tiny_png()).decode()}],
                    }
                )
            raise TypeError(
                f"fakeapi: {type(reply).__name__} is not a valid reply for the images endpoint"
            )
        if isinstance(reply, Image):
            raise TypeError(
                f"fakeapi: Image is only valid for the images endpoint, not {self._endpoint}"
            )
        if isinstance(reply, StreamError) and not stream:
            return self._error(Error(reply.status, reply.message, err_type=reply.err_type))
        if isinstance(reply, Stall) and not stream:
            self._wait(reply.seconds)
            reply = Text(
                reply.text, input_tokens=reply.input_tokens, output_tokens=reply.output_tokens
            )
        if isinstance(reply, Malformed) and not stream:
            return self._send_json(200, reply.body.encode())
        if self._endpoint == "anthropic":
            (self._anthropic_stream if stream else self._anthropic_json)(reply, rec)
        elif fakeresponses.is_responses(rec.path):
            fakeresponses.render(self, reply, rec)
        else:
            (self._openai_stream if stream else self._openai_json)(reply, rec)

    # ---------------------------------------------------------------- errors
    def _error(self, e: Error) -> None:
        headers = dict(e.headers)
        if e.retry_after is not None:
            headers["retry-after"] = str(e.retry_after)
        if e.retry_after_ms is not None:
            headers["retry-after-ms"] = str(e.retry_after_ms)
        if self._endpoint == "anthropic":
            et = e.err_type or _ANTHROPIC_ERR_TYPES.get(e.status, "api_error")
            body = {
                "type": "error",
                "error": {"type": et, "message": e.message},
                "request_id": self._request_id,
            }
            if e.status == 429:
                headers.setdefault("anthropic-ratelimit-requests-remaining", "0")
        else:
            t, c = _OPENAI_ERR.get(
                e.status, ("server_error" if e.status >= 500 else "invalid_request_error", None)
            )
            body = {
                "error": {
                    "message": e.message,
                    "type": e.err_type or t,
                    "param": None,
                    "code": e.code if e.code is not None else c,
                }
            }
            if e.status == 429:
                headers.setdefault("x-ratelimit-remaining-requests", "0")
        self._send_json(e.status, body, headers)

    def _cut_json(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._std_headers()
        self.end_headers()
        self.wfile.write(data[: max(1, len(data) // 2)])
        self._drop()

    # ---------------------------------------------------------------- shapes
    def _blocks(self, reply: Any, rec: Recorded) -> tuple:
        """Normalise to (blocks, usage, stop) where blocks are
        ("text", str) | ("tool", id, name, dict)."""
        fake = self.fake
        if isinstance(reply, Text):
            return [("text", reply.text)], reply, reply.stop
        if isinstance(reply, JSONText):
            forced = _forced_tool(rec.json, self._endpoint)
            if forced:
                return (
                    [("tool", fake._tool_id(self._endpoint), forced, reply.obj)],
                    reply,
                    "tool_use",
                )
            return [("text", json.dumps(reply.obj))], reply, "end_turn"
        if isinstance(reply, ToolCall):
            blocks: list = []
            if reply.text:
                blocks.append(("text", reply.text))
            blocks.append(
                ("tool", reply.id or fake._tool_id(self._endpoint), reply.name, reply.arguments)
            )
            return blocks, reply, "tool_use"
        raise TypeError(f"fakeapi: cannot render {reply!r}")

    def _anthropic_usage(self, u: Any) -> dict:
        return {
            "input_tokens": u.input_tokens,
            "cache_creation_input_tokens": getattr(u, "cache_write", 0),
            "cache_read_input_tokens": getattr(u, "cache_read", 0),
            "output_tokens": u.output_tokens,
        }

    def _openai_usage(self, u: Any) -> dict:
        details = {"cached_tokens": getattr(u, "cache_read", 0), "audio_tokens": 0}
        if getattr(u, "cache_write", 0):
            details["cache_write_tokens"] = u.cache_write
        return {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
            "prompt_tokens_details": details,
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _model(self, rec: Recorded) -> str:
        return rec.model or "fake-model"

    # ---- Anthropic
    def _anthropic_message(
        self, rec: Recorded, content: list, stop: str | None, usage: dict
    ) -> dict:
        return {
            "id": self.fake._msg_id("anthropic"),
            "type": "message",
            "role": "assistant",
            "model": self._model(rec),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def _anthropic_json(self, reply: Any, rec: Recorded) -> None:
        if isinstance(reply, Cut):
            msg = self._anthropic_message(
                rec,
                [{"type": "text", "text": reply.text}],
                "end_turn",
                self._anthropic_usage(Text()),
            )
            return self._cut_json(msg)
        blocks, u, stop = self._blocks(reply, rec)
        content = []
        for b in blocks:
            if b[0] == "text":
                content.append({"type": "text", "text": b[1]})
            else:
                content.append({"type": "tool_use", "id": b[1], "name": b[2], "input": b[3]})
        self._send_json(200, self._anthropic_message(rec, content, stop, self._anthropic_usage(u)))

    def _anthropic_stream(self, reply: Any, rec: Recorded) -> None:
        usage_src = reply if isinstance(reply, (Text, JSONText, ToolCall, Stall)) else Text()
        start_usage = self._anthropic_usage(usage_src)
        start_usage["output_tokens"] = min(1, usage_src.output_tokens)
        msg = self._anthropic_message(rec, [], None, start_usage)
        self._start_stream()
        self._sse("message_start", {"type": "message_start", "message": msg})

        def text_block(index: int, pieces: list) -> Iterator[None]:
            self._sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            if index == 0:
                self._sse("ping", {"type": "ping"})
            for p in pieces:
                self._sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": p},
                    },
                )
                yield None

        def finish(stop: str, u: Any) -> None:
            self._sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": self._anthropic_usage(u),
                },
            )
            self._sse("message_stop", {"type": "message_stop"})
            self._end_stream()

        if isinstance(reply, Cut):
            for _ in text_block(0, _split(reply.text, reply.after_chunks)):
                pass
            self._drop()
        if isinstance(reply, StreamError):
            if reply.text or reply.after_chunks:
                for _ in text_block(0, _split(reply.text, reply.after_chunks)):
                    pass
            self._sse(
                "error",
                {
                    "type": "error",
                    "error": {"type": reply.err_type, "message": reply.message},
                    "request_id": self._request_id,
                },
            )
            self._end_stream()
            return
        if isinstance(reply, Malformed):
            self._sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            self._sse("content_block_delta", reply.body)
            self._sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            finish("end_turn", Text())
            return
        if isinstance(reply, Stall):
            pieces = _split(reply.text, 3)
            for i, _ in enumerate(text_block(0, pieces)):
                if i == 0:
                    self._wait(reply.seconds)
            self._sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            finish("end_turn", reply)
            return
        blocks, u, stop = self._blocks(reply, rec)
        n = reply.chunks if isinstance(reply, Text) else 3
        for index, b in enumerate(blocks):
            if b[0] == "text":
                for _ in text_block(index, _split(b[1], n)):
                    pass
            else:
                self._sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": b[1],
                            "name": b[2],
                            "input": {},
                        },
                    },
                )
                self._sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": ""},
                    },
                )
                for p in _split(json.dumps(b[3]), 3):
                    self._sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": p},
                        },
                    )
            self._sse("content_block_stop", {"type": "content_block_stop", "index": index})
        finish(stop, u)

    # ---- OpenAI chat
    def _openai_json(self, reply: Any, rec: Recorded) -> None:
        if isinstance(reply, Cut):
            return self._cut_json(self._openai_completion(rec, reply.text, None, "stop", Text()))
        blocks, u, stop = self._blocks(reply, rec)
        text = "".join(b[1] for b in blocks if b[0] == "text") or None
        calls = [
            {
                "id": b[1],
                "type": "function",
                "function": {"name": b[2], "arguments": json.dumps(b[3])},
            }
            for b in blocks
            if b[0] == "tool"
        ]
        self._send_json(
            200, self._openai_completion(rec, text, calls or None, _FINISH.get(stop, "stop"), u)
        )

    def _openai_completion(
        self, rec: Recorded, text: str | None, calls: list | None, finish: str, u: Any
    ) -> dict:
        message: dict = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.fake._msg_id("openai"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model(rec),
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self._openai_usage(u),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _openai_stream(self, reply: Any, rec: Recorded) -> None:
        cid = self.fake._msg_id("openai")
        created = int(time.time())
        model = self._model(rec)
        opts = rec.json.get("stream_options") if isinstance(rec.json, dict) else None
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        mimic = self.fake.mimic == "llama-cpp-python"
        include_usage = include_usage and not mimic  # llama-cpp-python sends no usage in streams

        def chunk(
            delta: dict, finish: str | None = None, choices: bool = True, usage: dict | None = None
        ) -> None:
            if mimic:  # generating takes time; a newer request cuts this stream
                self._wait(self.fake.mimic_delay)
                if self.fake._chat_gen != self._gen:
                    self._drop()
            obj: dict = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                if choices
                else [],
            }
            if include_usage:
                obj["usage"] = usage
            self._sse(None, obj)

        def finish(reason: str, u: Any) -> None:
            chunk({}, reason)
            if include_usage:
                chunk({}, choices=False, usage=self._openai_usage(u))
            self._sse(None, "[DONE]")
            self._end_stream()

        self._start_stream()
        chunk({"role": "assistant", "content": "", "refusal": None})
        if isinstance(reply, Cut):
            for p in _split(reply.text, reply.after_chunks):
                chunk({"content": p})
            self._drop()
        if isinstance(reply, StreamError):
            for p in _split(reply.text, reply.after_chunks) if reply.text else []:
                chunk({"content": p})
            self._sse(
                None,
                {
                    "error": {
                        "message": reply.message,
                        "type": "server_error",
                        "param": None,
                        "code": reply.err_type,
                    }
                },
            )
            self._end_stream()
            return
        if isinstance(reply, Malformed):
            self._sse(None, reply.body)
            finish("stop", Text())
            return
        if isinstance(reply, Stall):
            for i, p in enumerate(_split(reply.text, 3)):
                chunk({"content": p})
                if i == 0:
                    self._wait(reply.seconds)
            finish("stop", reply)
            return
        blocks, u, stop = self._blocks(reply, rec)
        n = reply.chunks if isinstance(reply, Text) else 3
        tool_index = 0
        for b in blocks:
            if b[0] == "text":
                for p in _split(b[1], n):
                    chunk({"content": p})
            else:
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": tool_index,
                                "id": b[1],
                                "type": "function",
                                "function": {"name": b[2], "arguments": ""},
                            }
                        ]
                    }
                )
                for p in _split(json.dumps(b[3]), 3):
                    chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": p}}]})
                tool_index += 1
        finish(_FINISH.get(stop, "stop"), u)

    # ---- images
    def _image(self, reply: Image, rec: Recorded) -> None:
        png = reply.png_bytes or tiny_png()
        n = 1
        if isinstance(rec.json, dict) and isinstance(rec.json.get("n"), int):
            n = max(1, rec.json["n"])
        item: dict = {"b64_json": base64.b64encode(png).decode()}
        if reply.revised_prompt is not None:
            item["revised_prompt"] = reply.revised_prompt
        self._send_json(200, {"created": int(time.time()), "data": [dict(item) for _ in range(n)]})


_REPLY_TYPES = (
    Text,
    JSONText,
    ToolCall,
    Error,
    StreamError,
    Cut,
    Stall,
    Malformed,
    Slow,
    Image,
    Raw,
)


def _is_reply(obj: Any) -> bool:
    return isinstance(obj, _REPLY_TYPES)


def _forced_tool(body: Any, endpoint: str | None) -> str | None:
    if not isinstance(body, dict):
        return None
    tc = body.get("tool_choice")
    if not isinstance(tc, dict):
        return None
    if endpoint == "anthropic" and tc.get("type") == "tool":
        return tc.get("name")
    if endpoint == "openai" and tc.get("type") == "function":
        fn = tc.get("function") or {}
        return fn.get("name")
    return None


# --------------------------------------------------------------------------- facade


class FakeAPI:
    """The fake server.  ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, require_key: str | None = None):
        self.require_key = require_key  # if set, other keys get a 401
        self.requests: list = []
        self.errors: list = []  # exceptions raised inside the fake (script bugs)
        self._lock = threading.Lock()
        self._queues: dict = {e: deque() for e in (*ENDPOINTS, None)}
        self._defaults: dict = {}
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._counter = itertools.count(1)
        self._fault_rate = 0.0
        self._faults: tuple = ()
        self._rng = None
        self.injected: list = []  # (endpoint, fault) of every injected fault, in order
        # mimic = "llama-cpp-python": answer as its server does (json_schema refused with a 500,
        # no usage in streams, a running stream cut when another chat request arrives).
        self.mimic: str | None = None
        self.mimic_delay = 0.05  # seconds per streamed chunk under mimic
        self._chat_gen = 0
        # Batch endpoints (tests/fakebatch.py): a batch ends batch_delay seconds after creation.
        self.batch_delay = 0.0
        self.batches: dict = {}
        self.files: dict = {}
        self.batch_log: list = []  # every request ever submitted in a batch (fakebatch.BatchRequest)

    # -- lifecycle
    def start(self) -> FakeAPI:
        if self._server is not None:
            return self
        self._stop.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fakeapi-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        srv = self._server
        if srv is None:
            return
        self._stop.set()  # wakes Stall/Slow sleepers
        srv.shutdown()  # stops serve_forever
        if self._thread is not None:
            self._thread.join(5)
        with srv.conns_lock:
            conns = list(srv.conns)
        for c in conns:  # unblock handlers waiting on keep-alive connections
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        srv.server_close()  # joins handler threads
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses
    @property
    def port(self) -> int:
        assert self._server is not None, "FakeAPI not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    # -- scripting
    def script(self, *replies: Reply, endpoint: str | None = None) -> FakeAPI:
        """Queue replies, consumed in order.  ``endpoint`` in ("anthropic",
        "openai", "images") or None for a shared queue any endpoint draws from
        once its own queue is empty."""
        if endpoint not in self._queues:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        with self._lock:
            self._queues[endpoint].extend(replies)
        return self

    def set_default(self, reply: Reply, endpoint: str | None = None) -> FakeAPI:
        """Reply used when the queues are empty (None: for every endpoint)."""
        with self._lock:
            if endpoint is None:
                for e in ENDPOINTS:
                    self._defaults[e] = reply
            else:
                self._defaults[endpoint] = reply
        return self

    def inject_faults(self, rate: float, faults: tuple | None = None, seed: int = 0) -> FakeAPI:
        """Replace a share ``rate`` of chat replies (anthropic, openai) with a transport fault
        drawn from ``faults`` (default: a cut stream, a malformed event, a 1 s stall, an
        in-stream overload, 503, 429), chosen with a seeded RNG; each is listed in ``injected``.
        ``rate=0`` turns injection off."""
        import random

        with self._lock:
            self._fault_rate = rate
            self._faults = faults or (
                Cut("partial answ", after_chunks=2),
                Malformed(),
                Stall(1.0),
                StreamError("Overloaded", text="half"),
                Error(503, "unavailable"),
                Error(429, "slow down", retry_after=0),
            )
            self._rng = random.Random(seed)
        return self

    def pending(self, endpoint: str | None = None) -> int:
        with self._lock:
            return len(self._queues[endpoint])

    def reset(self) -> None:
        """Forget requests, queued replies, defaults and recorded errors."""
        with self._lock:
            self.requests.clear()
            self.errors.clear()
            for q in self._queues.values():
                q.clear()
            self._defaults.clear()
            self.injected.clear()
            self._fault_rate = 0.0
            self.batches.clear()
            self.files.clear()
            self.batch_log.clear()

    # -- inspection
    def requests_for(self, endpoint: str) -> list:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    @property
    def last(self) -> Recorded:
        with self._lock:
            return self.requests[-1]

    def wait_for(self, n: int, endpoint: str | None = None, timeout: float = 5.0) -> list:
        """Block until at least ``n`` requests (for ``endpoint``) were received;
        returns them.  Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            rs = self.requests_for(endpoint) if endpoint else list(self.requests)
            if len(rs) >= n:
                return rs
            if time.monotonic() > deadline:
                raise TimeoutError(f"fakeapi: got {len(rs)} of {n} requests")
            time.sleep(0.01)

    def gaps(self, endpoint: str | None = None) -> list:
        """Seconds between consecutive requests (optionally for one endpoint)."""
        rs = self.requests_for(endpoint) if endpoint else list(self.requests)
        return [b.time - a.time for a, b in zip(rs, rs[1:], strict=False)]

    # -- internals
    def _next_reply(self, endpoint: str, rec: Recorded) -> Any:
        with self._lock:
            for q in (self._queues[endpoint], self._queues[None]):
                if q:
                    return q.popleft()
        return None  # -> default after resolution

    def _maybe_fault(self, endpoint: str, reply: Any) -> Any:
        if endpoint not in ("anthropic", "openai"):
            return reply
        with self._lock:
            if not self._fault_rate or self._rng.random() >= self._fault_rate:
                return reply
            fault = self._rng.choice(self._faults)
            self.injected.append((endpoint, fault))
            if reply is not None:  # a scripted reply is not lost: it answers the retry
                self._queues[endpoint].appendleft(reply)
        return fault

    def _default_for(self, endpoint: str | None) -> Any:
        with self._lock:
            d = self._defaults.get(endpoint)
        if d is not None:
            return d
        if endpoint == "images":
            return Image()
        return _default_text

    def _msg_id(self, endpoint: str) -> str:
        n = next(self._counter)
        return f"msg_fake{n:06d}" if endpoint == "anthropic" else f"chatcmpl-fake{n:06d}"

    def _tool_id(self, endpoint: str | None) -> str:
        n = next(self._counter)
        return f"toolu_fake{n:06d}" if endpoint == "anthropic" else f"call_fake{n:06d}"


def _default_text(body: Any) -> Text:
    model = body.get("model") if isinstance(body, dict) else None
    return Text(f"fake reply from {model or 'fake-model'}")


@contextlib.contextmanager
def fake_api(require_key: str | None = None) -> Iterator[FakeAPI]:
    """``with fake_api() as api: ...`` -- started server, stopped on exit."""
    api = FakeAPI(require_key=require_key)
    api.start()
    try:
        yield api
    finally:
        api.stop()
