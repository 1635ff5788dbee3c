"""Running coroutines to completion from synchronous code, in or out of a running event loop.

A Jupyter kernel already runs an event loop in the main thread, so a pipeline run there goes
to a private loop in a background thread; the main thread waits and turns a kernel interrupt
(KeyboardInterrupt) into a clean cancellation of the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="nbconductor-loop", daemon=True).start()
        return _loop


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` and return its result; KeyboardInterrupt cancels it and re-raises."""
    if not in_running_loop():
        return asyncio.run(coro)
    future = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        future.cancel()
        try:
            future.result(timeout=10)
        except BaseException:  # noqa: BLE001 - we are unwinding an interrupt
            pass
        raise
