"""Running coroutines to completion from synchronous code, in or out of a running event loop.

A Jupyter kernel already runs an event loop in the main thread, so a pipeline run there goes
to a private loop in a background thread; the main thread waits and turns a kernel interrupt
(KeyboardInterrupt) into a clean cancellation of the run. A loop thread stuck in synchronous
code (a runaway ``--check`` function) cannot see the cancellation: it gets a `CancelledError`
raised in it, and a loop that still does not answer is abandoned, so the next run gets a
fresh loop instead of queueing behind the stuck one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()
CANCEL_GRACE = 1.0  # seconds a cancelled run gets to unwind before its loop thread is interrupted


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(
                target=_loop.run_forever, name="nbconductor-loop", daemon=True
            )
            _thread.start()
        return _loop


def _unstick(loop: asyncio.AbstractEventLoop) -> None:
    """After an interrupt: make sure ``loop`` is free for the next run, or stop using it.

    Another Ctrl-C while this waits (people press it twice) skips to the next, firmer step
    instead of abandoning the clean-up half-way, which left the next run queued behind the
    stuck one.
    """
    global _loop
    if _waited(loop, CANCEL_GRACE):
        return
    thread = _thread
    if thread is not None and thread.ident is not None and loop is _loop:
        # Busy in synchronous code: raise CancelledError there, which cancels the step's task.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(asyncio.CancelledError)
        )
    if not _waited(loop, 2 * CANCEL_GRACE):
        with _lock:  # stuck in a C call: leave it behind; the next run starts a new loop
            if _loop is loop:
                _loop = None


def _waited(loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
    """`_answers`, where a further Ctrl-C during the wait means "stop waiting": False."""
    try:
        return _answers(loop, timeout)
    except KeyboardInterrupt:
        return False


def _answers(loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
    """Whether ``loop`` runs a callback within ``timeout`` seconds (is not stuck)."""
    done = threading.Event()
    try:
        loop.call_soon_threadsafe(done.set)
    except RuntimeError:  # closed
        return True
    return done.wait(timeout)


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
    loop = _background_loop()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        future.cancel()
        _unstick(loop)
        raise
