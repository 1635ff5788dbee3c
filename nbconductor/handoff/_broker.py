"""The coordinator's batch broker for ``nbconductor batch --provider-batch``.

Rows run in their worker processes as usual; their adapters hand every model call to this
broker (`nbconductor._batchcall`: one JSON line over a Unix socket in a private temporary
folder) instead of sending it. The broker collects the calls of all rows and submits them as
one provider batch per provider (and per model where the API needs it: OpenAI), when

* every row in flight is waiting for an answer (nothing more can come: submit now), or
* no call has joined the group for ``window`` seconds (rows still starting or computing keep
  adding theirs; a slow trickle is cut at ``MAX_WINDOWS`` windows after the group's first), or
* ``max_size`` calls are waiting.

It then polls each batch with a gentle backoff (×1.05 from 0.1 s, at most 60 s: the wait
overshoots the provider's processing time by at most ~5%, ~200 polls in an hour), and
answers every waiting call with its request's result, matched by ``custom_id``. Submitted batches are journaled (batch
id, each request's custom id and the hash of its body) *before* the broker waits, so after a
coordinator crash ``--resume`` hands a call whose body was already submitted the result of
that request instead of submitting it again.

The provider SDK calls themselves live in the adapters (``submit_batch``, ``batch_ended``,
``batch_results``); this module only groups, journals, polls and routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._config import ModelRef
from .._errors import ConductorError, ProviderError, ServerError
from .._redact import redact
from ..providers import registry
from ..providers._batch import error_result
from ..store._liveness import own_start, process_gone

STAGES = ("queued", "submitted", "in batch", "finished")
MAX_WINDOWS = 12  # a group waits at most this many windows from its first call
BACKLOG = 4096  # connections waiting to be accepted: every row's call can arrive at once
PREFIX = "nbc-broker-"  # + owner pid + its start ticks: ``nbc-broker-1234-5678-xxxx``


def body_key(provider: str, group: dict, body: dict) -> str:
    """The identity of a request: the same body to the same place is the same request."""
    text = json.dumps([provider, group, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class _Call:
    provider: str
    group: dict
    body: dict
    row: str | None
    key: str
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)


class Broker:
    """Collects model calls from batch rows, submits provider batches, routes the results.

    ``in_flight()`` says how many rows are running; ``journal(batch_id, entry)`` records a
    submitted batch (the manifest) before it is waited for; ``recorded`` is what an earlier
    coordinator journaled (``{batch_id: entry}``), collected instead of resubmitted.
    """

    def __init__(
        self,
        *,
        window: float = 5.0,
        max_size: int = 10_000,
        in_flight: Callable[[], int] = lambda: 0,
        journal: Callable[[str, dict], None] = lambda bid, entry: None,
        recorded: dict[str, dict] | None = None,
        on_event: Callable[[str], None] | None = None,
        poll: tuple[float, float, float] = (0.1, 60.0, 1.05),
        settle: float = 0.1,
    ):
        self.window, self.max_size, self.settle = window, max_size, settle
        self.in_flight, self.journal, self.on_event = in_flight, journal, on_event
        self.poll_min, self.poll_max, self.poll_factor = poll
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STAGES, 0))
        self.batches: list[
            dict
        ] = []  # every batch this broker submitted: id, provider, size, times
        self.reused = 0  # calls answered from a batch an earlier coordinator submitted
        self._pending: dict[str, list[_Call]] = {}
        self._recorded: dict[str, deque] = defaultdict(deque)
        self._entries: dict[str, dict] = dict(recorded or {})
        for bid, entry in self._entries.items():
            for cid, key in entry.get("requests", {}).items():
                self._recorded[key].append((bid, cid))
        seqs = [
            int(c[3:])
            for e in self._entries.values()
            for c in e.get("requests", {})
            if c[3:].isdigit()
        ]
        self._seq = itertools.count(max(seqs, default=0) + 1)
        self._waiters: dict[str, dict[str, list[_Call]]] = defaultdict(lambda: defaultdict(list))
        self._results: dict[str, dict[str, dict]] = {}
        self._collectors: dict[str, asyncio.Task] = {}
        self._waiting: dict[int, str | None] = {}  # id(call) -> row, for calls not yet answered
        self._adapters: dict[tuple, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        self._last_arrival = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._dir: str | None = None
        self.address = ""

    # -------------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Start the broker's thread and socket; returns the socket path for the rows."""
        clean_stale()
        # 0700: only this user connects; the name says whose it is, for `clean_stale`
        self._dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{own_start() or 0}-")
        self.address = os.path.join(self._dir, "broker.sock")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="nbconductor-broker", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise ConductorError("the batch broker did not start")
        return self.address

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _main(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_unix_server(self._serve, path=self.address, limit=2**26, backlog=BACKLOG)
        )
        os.chmod(self.address, 0o600)
        ticker = loop.create_task(self._tick())
        ready.set()
        try:
            loop.run_forever()
        finally:
            ticker.cancel()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            for adapter in self._adapters.values():
                with contextlib.suppress(Exception):
                    loop.run_until_complete(adapter.aclose())
            loop.close()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------------------- calls in
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            msg = json.loads(line)
            provider, group, body = str(msg["provider"]), dict(msg["group"]), dict(msg["body"])
        except (ValueError, KeyError, TypeError, OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        call = _Call(
            provider,
            group,
            body,
            msg.get("row"),
            body_key(provider, group, body),
            asyncio.get_running_loop().create_future(),
        )
        self._waiting[id(call)] = call.row
        self._last_arrival = time.monotonic()
        earlier = self._recorded.get(call.key)
        if earlier:
            bid, cid = earlier.popleft()
            self.reused += 1
            self.stats[provider]["in batch"] += 1
            self._wait_on(bid, cid, call)
        else:
            self._pending.setdefault(_group_key(provider, group), []).append(call)
            self.stats[provider]["queued"] += 1
        try:
            result = await call.future
            writer.write(json.dumps(result).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _answer(self, call: _Call, result: dict) -> None:
        self._waiting.pop(id(call), None)
        if not call.future.done():
            call.future.set_result(result)

    # -------------------------------------------------------------------- batches out
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if not self._pending:
                continue
            now = time.monotonic()
            waiting_rows = {r for r in self._waiting.values()}
            in_flight = self.in_flight()
            everyone = (
                in_flight > 0
                and len(waiting_rows) >= in_flight
                and now - self._last_arrival >= self.settle
            )
            for gk, calls in list(self._pending.items()):
                quiet = now - calls[-1].arrived >= self.window
                if (
                    everyone
                    or quiet
                    or len(calls) >= self.max_size
                    or now - calls[0].arrived >= self.window * MAX_WINDOWS
                ):
                    del self._pending[gk]
                    for i in range(0, len(calls), self.max_size):
                        self._spawn(self._submit(calls[i : i + self.max_size]))

    def _adapter(self, provider: str, group: dict) -> Any:
        key = (provider, group.get("base_url"), group.get("key_env"), group.get("api"))
        inst = self._adapters.get(key)
        if inst is None:
            ref = ModelRef(
                provider,
                group.get("model") or "batch",
                group.get("base_url"),
                group.get("key_env"),
                api=group.get("api"),  # the endpoint its batches go to (OpenAI Responses)
            )
            inst = self._adapters[key] = registry.get(provider)(ref)
        return inst

    async def _submit(self, calls: list[_Call]) -> None:
        provider, group = calls[0].provider, calls[0].group
        stats = self.stats[provider]
        stats["queued"] -= len(calls)
        stats["submitted"] += len(calls)
        ids = [f"nbc{next(self._seq):06d}" for _ in calls]
        started = time.time()
        try:
            bid = await self._adapter(provider, group).submit_batch(
                [(cid, c.body) for cid, c in zip(ids, calls, strict=True)]
            )
        except Exception as exc:  # noqa: BLE001 - every waiting row gets an answer, never a hang
            exc = _as_provider_error(exc, provider, "submit")
            stats["submitted"] -= len(calls)
            stats["finished"] += len(calls)
            for c in calls:
                self._answer(c, error_result(exc))
            self._event(f"{provider} batch of {len(calls)} not submitted: {exc}")
            return
        entry = {
            "provider": provider,
            "group": group,
            "requests": {cid: c.key for cid, c in zip(ids, calls, strict=True)},
            "submitted": started,
            "last_call": max(c.wall for c in calls),  # submitted - last_call: the window's wait
        }
        self._entries[bid] = entry
        self._journal(bid, entry)  # before waiting: a crash from here on is collected on --resume
        self.batches.append(
            {"id": bid, "provider": provider, "size": len(calls), "submitted": started}
        )
        stats["submitted"] -= len(calls)
        stats["in batch"] += len(calls)
        self._event(f"{provider} batch {bid}: {len(calls)} requests submitted")
        for cid, c in zip(ids, calls, strict=True):
            self._wait_on(bid, cid, c)

    def _journal(self, bid: str, entry: dict) -> None:
        try:
            self.journal(bid, entry)
        except Exception as exc:  # noqa: BLE001 - a submitted batch is paid for: see it through
            self._event(f"batch {bid} not journaled ({type(exc).__name__}: {exc})")

    def _wait_on(self, bid: str, cid: str, call: _Call) -> None:
        done = self._results.get(bid)
        if done is not None:
            self._deliver(call, done.get(cid) or done[None])
            return
        self._waiters[bid][cid].append(call)
        if bid not in self._collectors:
            entry = self._entries.get(bid) or {"provider": call.provider, "group": call.group}
            self._collectors[bid] = asyncio.get_running_loop().create_task(
                self._collect(bid, entry["provider"], entry["group"])
            )

    async def _collect(self, bid: str, provider: str, group: dict) -> None:
        adapter = self._adapter(provider, group)
        delay, failures = self.poll_min, 0
        while True:
            await asyncio.sleep(delay)
            delay = min(self.poll_max, delay * self.poll_factor)
            try:
                if not await adapter.batch_ended(bid):
                    continue
                results = await adapter.batch_results(bid)
                break
            except Exception as exc:  # noqa: BLE001 - its rows get an answer, never a hang
                exc = _as_provider_error(exc, provider, "collect")
                failures += 1
                if exc.retryable and failures < 8:
                    continue
                results = None
                error = exc
                break
        if results is None:
            results, fallback = {}, error_result(error)
        else:
            fallback = error_result(
                ServerError(
                    f"{provider} batch {bid} returned no result for this request", provider=provider
                )
            )
        self._results[bid] = {**results, None: fallback}
        if bid in self._entries:
            self._entries[bid] = {**self._entries[bid], "collected": time.time()}
            self._journal(bid, self._entries[bid])
        for batch in self.batches:
            if batch["id"] == bid:
                batch["ended"] = time.time()
        waiters = self._waiters.pop(bid, {})
        self._event(
            f"{provider} batch {bid} ended: {sum(len(v) for v in waiters.values())} results"
        )
        for cid, calls in waiters.items():
            for c in calls:
                self._deliver(c, results.get(cid) or fallback)

    def _deliver(self, call: _Call, result: dict) -> None:
        stats = self.stats[call.provider]
        stats["in batch"] -= 1
        stats["finished"] += 1
        self._answer(call, result)

    def _event(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    def line(self) -> str:
        """``anthropic 40 queued · 0 submitted · 20 in batch · 100 finished`` per provider."""
        parts = []
        for provider, s in sorted(self.stats.items()):
            parts.append(f"{provider} " + " · ".join(f"{s[k]} {k}" for k in STAGES))
        return "; ".join(parts)


def _as_provider_error(exc: Exception, provider: str, what: str) -> ProviderError:
    """A provider's own error as it is; anything else (a bug, a journal that cannot be
    written) as a server error, which the rows' ladders retry in a later batch."""
    if isinstance(exc, ProviderError):
        return exc
    return ServerError(
        redact(
            f"{provider}: the batch broker could not {what} a batch ({type(exc).__name__}: {exc})"
        ),
        provider=provider,
    )


def clean_stale(root: str | None = None) -> list[str]:
    """Remove the broker folders a killed coordinator left in ``root`` (the temp folder).

    Only this user's folders whose owner process is gone (by pid and start time); a folder
    from before owners were named is stale when nothing listens on its socket. Returns what
    was removed.
    """
    root = root or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if not os.path.isdir(path) or os.lstat(path).st_uid != os.getuid():
                continue
            if _stale(name[len(PREFIX) :].split("-"), os.path.join(path, "broker.sock")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _stale(parts: list[str], sock: str) -> bool:
    if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
        return process_gone(socket.gethostname(), int(parts[0]), int(parts[1]) or None)
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.settimeout(1)
        probe.connect(sock)
        return False  # a broker of an older nbconductor still listens
    except OSError:
        return True
    finally:
        probe.close()


def _group_key(provider: str, group: dict) -> str:
    return json.dumps([provider, group], sort_keys=True)
