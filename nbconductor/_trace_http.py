"""OTLP/HTTP requests on one kept-open `http.client` connection: our exporter's plain-HTTP path.

The SDK's client sends through ``requests``, which costs about 1 ms of CPU a request more than
`http.client` (it reads the proxy variables, cookies and hooks each time): on a 65-span run,
where one request carries all its spans, that is 15 µs a span. This sender is used only where
``requests`` would do nothing more — an ``http://`` endpoint, no proxy variable, no netrc file,
no credential provider (`usable`) — with the exporter's own headers, compression and timeout.
Anything else goes to the SDK's client (`_trace_setup`): an answer other than 2xx/3xx (its
retry policy and backoff apply), a connection that fails on a fresh socket. Nothing here
imports OpenTelemetry.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit


def usable(endpoint: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether requests to ``endpoint`` can skip ``requests``: plain HTTP, nothing in the
    environment that ``requests`` would apply (proxies, netrc, a credential provider)."""
    env = os.environ if env is None else env
    if urlsplit(endpoint).scheme != "http":
        return False
    for key in env:
        low = key.lower()
        if low in ("http_proxy", "all_proxy", "netrc") or "CREDENTIAL_PROVIDER" in key:
            return False
    home = os.path.expanduser("~")
    return not any(os.path.exists(os.path.join(home, n)) for n in (".netrc", "_netrc"))


class Sender:
    """POSTs request bodies to one endpoint on a connection kept open between requests."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        compress: Callable[[bytes], bytes] | None = None,
    ):
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "localhost", parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers, self.timeout = dict(headers), timeout
        self.compress = compress
        self.conn: http.client.HTTPConnection | None = None
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def send(self, data: bytes) -> bool:
        """True when the collector took ``data`` (2xx or 3xx, as the SDK counts it); False for
        any other answer or a connection that failed (the caller hands the batch on)."""
        if self.compress is not None:
            data = self.compress(data)
        with self.lock:
            if self.pid != os.getpid():  # a forked child: the socket is the parent's
                self.conn, self.pid = None, os.getpid()
            for _ in range(2):
                kept = self.conn is not None
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(
                        self.host, self.port, timeout=self.timeout
                    )
                try:
                    self.conn.request("POST", self.path, body=data, headers=self.headers)
                    response = self.conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    self._close()
                    if kept:  # the collector closed the kept connection: once on a new one
                        continue
                    return False
                if response.will_close:
                    self._close()
                return 200 <= response.status < 400
            return False

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        with self.lock:
            self._close()
