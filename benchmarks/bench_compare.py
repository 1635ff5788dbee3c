"""A compare of 50 rows × 3 variants against the loopback fake Anthropic API at 200 ms a request.

The pipeline: ``research`` (upstream, once per row) → ``draft`` (compared, with a rubric judge).
Requests: 50 upstream + 150 drafts + 150 judge verdicts = 350. With ``C`` requests in flight at
once (the provider's concurrency limit), the ideal wall time is ``350 / C × latency``; the goal is
within 1.2× of it. The orchestration overhead per cell is measured apart: the same compare on a
provider that answers at once (no HTTP, no sleep), its wall time divided by the 150 cells
(goal < 2 ms; it includes the upstream run, the cache lookups, three runs recorded in the store
per row and the experiment's cell records).

The fake API runs in its own process, as a remote API would (``--in-process`` puts it in this
one, where its HTTP threads share the GIL with the engine and the SDK: on a 2-core machine that
alone costs the SDK floor ~1.5× the ideal).

    python benchmarks/bench_compare.py [--rows 50] [--latency 0.2] [--concurrency 16] [--repeats 3]
                                       [--in-process]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import header, median, table, tmp_store  # noqa: E402

GOAL_WALL = 1.2
GOAL_OVERHEAD_MS = 2.0
JUDGE = "anthropic:claude-opus-4-8"


def reply(latency: float):
    from fakeapi import JSONText, Slow, Text

    def answer(body):
        text = json.dumps(body["messages"])
        if "<rubric>" in text:
            return Slow(latency, JSONText({"score": 0.9, "feedback": "", "suggested_edit": ""}))
        return Slow(latency, Text("draft " + body["messages"][0]["content"][:40]))

    return answer


def build(model: str, judge: str, concurrency: int):
    from nbconductor import Pipeline
    from nbconductor._config import Config

    config = Config(concurrency={"anthropic": concurrency, "instant": concurrency})
    p = Pipeline(store=tmp_store("compare"), config=config)
    _ = p.store
    p.step("research", "Notes on {{ topic }}.", model=model, retries=0)
    p.step("draft", "Draft on {{ topic }} from {{ research }}", model=model, retries=0)
    p.rubric("draft", "- good", judge=judge, threshold=0.5)
    p.variant("draft", "concise", "Concise draft on {{ topic }} from {{ research }}")
    p.variant("draft", "warm", "Warm draft on {{ topic }} from {{ research }}")
    return p


def instant_provider():
    from nbconductor._types import Response, Usage
    from nbconductor.providers._base import Provider

    class Instant(Provider):
        name = "instant"

        async def complete(self, request):
            if request.schema:
                data = {"score": 0.9, "feedback": "", "suggested_edit": ""}
                return Response(json.dumps(data), Usage(10, 5), "instant:m", data=data, cost=0.0)
            return Response("draft " + request.prompt[:40], Usage(10, 5), "instant:m", cost=0.0)

    return Instant


SERVE = """
import sys
sys.path[:0] = {paths!r}
import fakeapi
import bench_compare
fakeapi._Server.request_queue_size = 128  # 16 connections at once: the default backlog is 5
api = fakeapi.FakeAPI().start()
api.set_default(bench_compare.reply({latency!r}), endpoint="anthropic")
print(api.port, flush=True)
for line in sys.stdin:
    print(len(api.requests), flush=True)
api.stop()
"""


class FakeProcess:
    """The fake API in a child process: ``anthropic_base_url``, ``sent()`` (requests so far),
    ``stop()``."""

    def __init__(self, latency: float) -> None:
        paths = [str(HERE), str(HERE.parent / "tests")]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE.format(paths=paths, latency=latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.anthropic_base_url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def sent(self) -> int:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


class FakeHere:
    """The fake API in this process (``--in-process``), with the same face as `FakeProcess`."""

    def __init__(self, latency: float) -> None:
        import fakeapi

        fakeapi._Server.request_queue_size = 128  # as in `SERVE`
        self.api = fakeapi.FakeAPI().start()
        self.api.set_default(reply(latency), endpoint="anthropic")
        self.anthropic_base_url = self.api.anthropic_base_url

    def sent(self) -> int:
        return len(self.api.requests)

    def stop(self) -> None:
        self.api.stop()


def sdk_floor(n: int, concurrency: int) -> float:
    """The same number of requests through the Anthropic SDK to the fake, ``concurrency`` at a
    time, streamed, with no engine: what the SDK, the HTTP server and this machine cost by
    themselves."""
    import asyncio

    import anthropic

    async def go() -> float:
        client = anthropic.AsyncAnthropic(max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(i):
            async with sem:  # streamed, as the engine's adapter streams every call
                async with client.messages.stream(
                    model="claude-haiku-4-5",
                    max_tokens=64,
                    messages=[{"role": "user", "content": f"Notes on topic {i}."}],
                ) as stream:
                    await stream.get_final_message()

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
        await client.close()
        return wall

    return asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="the fake API in this process")
    a = ap.parse_args()
    from nbconductor.providers import registry

    where = "in this process" if a.in_process else "in its own process"
    header(f"compare: rows × 3 variants (the fake API {where})")
    rows = [{"topic": f"topic {i}"} for i in range(a.rows)]
    cells = a.rows * 3
    api = (FakeHere if a.in_process else FakeProcess)(a.latency)
    os.environ.update(
        ANTHROPIC_BASE_URL=api.anthropic_base_url,
        ANTHROPIC_API_KEY="-".join(["sk", "ant", "bench", "0" * 16]),  # no key-shaped literal
    )
    registry.register("instant", instant_provider())
    walls, overheads, cpus, floors, sent = [], [], [], [], 0
    try:
        # warm-up, untimed: importing the SDK and opening its client cost seconds, once
        for model, judge in (("anthropic:claude-haiku-4-5", JUDGE), ("instant:m", "instant:j")):
            w = build(model, judge, a.concurrency)
            w.compare("draft", rows[:3], workers=3)
            w.close()
        sdk_floor(a.concurrency, a.concurrency)
        for _ in range(a.repeats):
            p = build("anthropic:claude-haiku-4-5", JUDGE, a.concurrency)
            before = api.sent()
            start = time.perf_counter()
            p.compare("draft", rows, workers=a.rows)
            walls.append(time.perf_counter() - start)
            sent = api.sent() - before
            p.close()
            q = build("instant:m", "instant:j", a.concurrency)
            start, cpu = time.perf_counter(), time.process_time()
            q.compare("draft", rows, workers=a.rows)
            overheads.append((time.perf_counter() - start) / cells * 1000)
            cpus.append((time.process_time() - cpu) / cells * 1000)
            q.close()
            floors.append(sdk_floor(sent, a.concurrency))
    finally:
        api.stop()
    ideal = sent / a.concurrency * a.latency
    wall, overhead, floor = median(walls), median(overheads), median(floors)
    print(
        table(
            ["figure", "value", "goal", ""],
            [
                ["requests sent", sent, f"{a.rows} + 2 × {cells}", ""],
                ["ideal wall (requests / C × latency)", f"{ideal:.2f} s", "", ""],
                [
                    "SDK + fake floor, same requests, no engine",
                    f"{floor:.2f} s ({floor / ideal:.3f}×)",
                    "",
                    "info",
                ],
                [
                    "wall time",
                    f"{wall:.2f} s ({wall / ideal:.3f}×; {min(walls):.2f}-{max(walls):.2f} s)",
                    f"≤ {GOAL_WALL}×",
                    "met" if wall / ideal <= GOAL_WALL else "missed",
                ],
                ["  the compare over the floor", f"{wall / floor:.3f}×", "", "info"],
                [
                    "orchestration per cell",
                    f"{overhead:.2f} ms ({min(overheads):.2f}-{max(overheads):.2f})",
                    f"< {GOAL_OVERHEAD_MS} ms",
                    "met" if overhead < GOAL_OVERHEAD_MS else "missed",
                ],
                ["  of which CPU time of this process", f"{median(cpus):.2f} ms", "", "info"],
            ],
        )
    )
    print("load average at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0 if wall / ideal <= GOAL_WALL and overhead < GOAL_OVERHEAD_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
