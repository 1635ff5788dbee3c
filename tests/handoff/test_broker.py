"""Every row's call at once: the broker's listen queue and the rows' patience hold a burst.

With one worker per row, hundreds of rows reach the same DAG level together and all connect
to the broker's Unix socket in the same moment. A listen queue that is full makes a
connection fail before a byte is sent (asyncio reports "Connection lost").
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time

from nbconductor._batchcall import BatchTransport
from nbconductor.handoff._broker import Broker


def test_the_broker_accepts_a_burst_of_300_connections_while_busy():
    broker = Broker()
    address = broker.start()
    socks = []
    try:
        broker._loop.call_soon_threadsafe(time.sleep, 1.0)  # the broker's loop is busy
        time.sleep(0.1)
        outcomes = collections.Counter()
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            try:
                s.connect(address)
                outcomes["connected"] += 1
            except BlockingIOError:  # EAGAIN: the listen queue is full
                outcomes["queue full"] += 1
        assert outcomes == {"connected": 300}
    finally:
        for s in socks:
            s.close()
        broker.stop()


def _slow_server(path: str, started: threading.Event, stop: threading.Event) -> None:
    """A broker stand-in with a listen queue of 8 that starts accepting only after 0.5 s."""

    async def answer(reader, writer):
        line = await reader.readline()
        body = json.loads(line)["body"]
        writer.write(json.dumps({"type": "succeeded", "body": body}).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(answer, path=path, backlog=8)
        started.set()
        time.sleep(0.5)  # busy: connections pile up behind the queue of 8
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(main())


def test_rows_keep_trying_a_full_listen_queue_and_every_call_is_answered_once(tmp_path):
    path = str(tmp_path / "broker.sock")
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_slow_server, args=(path, started, stop), daemon=True)
    thread.start()
    assert started.wait(5)
    transport = BatchTransport(path)

    async def burst():
        return await asyncio.gather(
            *(transport.call("anthropic", {}, {"n": n}) for n in range(200)),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(burst())
    finally:
        stop.set()
        thread.join(5)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sorted(r["body"]["n"] for r in results) == list(range(200))


def test_calls_that_trickle_in_faster_than_the_window_travel_in_one_batch(fake_api):
    """Rows reaching a level one after another (workers still starting, under load) keep the
    group open: it goes once no call has joined it for the window, not a window after the
    first call (which split the first level of 200 rows in two)."""
    from fakeapi import Text

    fake_api.set_default(lambda body: Text("ok", input_tokens=5, output_tokens=1))
    broker = Broker(window=0.4, in_flight=lambda: 1000, poll=(0.05, 0.2, 1.1))
    address = broker.start()
    transport = BatchTransport(address)
    body = {"model": "claude-haiku-4-5", "max_tokens": 16}

    async def trickle():
        calls = []
        for n in range(12):  # one call every 0.1 s for 1.2 s: three windows from the first
            msg = {**body, "messages": [{"role": "user", "content": f"call {n}"}]}
            calls.append(asyncio.create_task(transport.call("anthropic", {}, msg)))
            await asyncio.sleep(0.1)
        return await asyncio.gather(*calls)

    try:
        results = asyncio.run(trickle())
    finally:
        broker.stop()
    assert [r["type"] for r in results] == ["succeeded"] * 12
    assert [b["size"] for b in broker.batches] == [12]
    assert len(fake_api.batches) == 1


class _Broken:
    """A batch-capable provider whose batch API fails in a way no provider error describes."""

    supports_batch = True

    def __init__(self, ref, **kwargs):
        self.ref = ref

    async def submit_batch(self, items):
        raise RuntimeError("the SDK changed under us")

    async def aclose(self):
        pass


def test_a_broker_failure_answers_every_waiting_call_instead_of_hanging(monkeypatch):
    from nbconductor.providers import registry

    registry.register("broken-batch", _Broken)
    try:
        broker = Broker(window=0.1, in_flight=lambda: 3)
        transport = BatchTransport(broker.start())

        async def three():
            return await asyncio.wait_for(
                asyncio.gather(*(transport.call("broken-batch", {}, {"n": n}) for n in range(3))),
                timeout=10,
            )

        try:
            results = asyncio.run(three())
        finally:
            broker.stop()
    finally:
        registry.unregister("broken-batch")
    assert [r["type"] for r in results] == ["failed"] * 3
    assert {r["error"]["kind"] for r in results} == {"ServerError"}  # retried by the ladder
    assert "RuntimeError: the SDK changed under us" in results[0]["error"]["message"]


def test_a_journal_that_cannot_be_written_still_waits_for_the_submitted_batch(fake_api):
    from fakeapi import Text

    fake_api.set_default(lambda body: Text("ok", input_tokens=5, output_tokens=1))

    def journal(bid, entry):
        raise OSError(28, "No space left on device")

    events = []
    broker = Broker(window=0.1, in_flight=lambda: 1, journal=journal, on_event=events.append)
    transport = BatchTransport(broker.start())
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        result = asyncio.run(asyncio.wait_for(transport.call("anthropic", {}, body), timeout=20))
    finally:
        broker.stop()
    assert result["type"] == "succeeded"
    assert any("not journaled (OSError" in e for e in events)
