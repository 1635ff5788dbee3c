"""Concurrency slots for one server shared by every process of a machine.

A local server (llama.cpp, llama-cpp-python, Ollama) often serves one request at a time well and
cuts or slows the others. ``nbconductor batch`` runs rows in several worker processes, so an
in-process semaphore is not enough: `MachineSlots` takes one of N lock files (``flock``) under the
runtime directory, named after the server's base URL, so at most N calls are in flight on the
machine at once. A crashed process's locks go with it (the kernel releases them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

#: calls in flight at once to an openai-compatible server on this machine, unless configured
LOCAL_CONCURRENCY = 1
_POLL = 0.02  # seconds between tries for a free slot


def is_loopback(base_url: str | None) -> bool:
    """Whether ``base_url`` names a server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if not base_url:
        return False
    host = (urlsplit(base_url).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_dir() -> Path:
    """Where the slot files live: ``NBCONDUCTOR_RUNTIME_DIR``, else a per-user folder."""
    explicit = os.environ.get("NBCONDUCTOR_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "nbconductor"
    else:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        path = Path(tempfile.gettempdir()) / f"nbconductor-{uid}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class MachineSlots:
    """At most ``limit`` holders at once across the processes of this machine, per ``key``."""

    def __init__(self, key: str, limit: int):
        self.limit = max(1, limit)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.stem = f"slot-{digest}"

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[int]:
        """Wait for a free slot and hold it; yields the slot's number."""
        try:
            import fcntl  # POSIX only
        except ImportError:  # pragma: no cover - Windows: the in-process limit only
            yield 0
            return
        folder = runtime_dir()
        while True:
            for i in range(self.limit):
                fd = os.open(folder / f"{self.stem}.{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                try:
                    yield i
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                return
            await asyncio.sleep(_POLL)
