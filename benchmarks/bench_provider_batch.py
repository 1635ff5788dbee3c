"""``nbconductor batch --provider-batch`` vs direct calls: cost, batches submitted, overhead.

A quickstart-shaped job (research → draft with a rubric judged by another provider → title:
three DAG levels, Anthropic and OpenAI) runs over ``--rows`` parameter rows on the loopback
fake (tests/fakeapi.py), twice per processing delay D:

- **direct**: ``nbconductor batch`` as usual, every call sent at once (the fake answers at once);
- **provider batch**: ``--provider-batch``, every call in an Anthropic Message Batch or an
  OpenAI Batch that the fake finishes D seconds after it was created.

Every third row's first draft fails its rubric and is retried with feedback (a retry wave).
Reported: the total cost of each (same usage, priced by nbconductor), the ratio batch/direct
(goal ≈ 0.5 with the default prices), the provider batches submitted per provider (goal: one
per DAG level per provider, plus the retry wave), and the coordinator's overhead: the batch
run's wall time minus the direct run's (the same rows, notebooks and store, without waiting
on a provider) minus D × the batch waves the rows waited through (goal: under 10% of
D × levels).

    python benchmarks/bench_provider_batch.py [--rows 200] [--delays 10 30] [--workers N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def start_fake():
    """The loopback fake answering with `reply`, the SDKs pointed at it (fake keys)."""
    from fakeapi import FakeAPI

    api = FakeAPI().start()
    os.environ.update(
        ANTHROPIC_BASE_URL=api.anthropic_base_url,
        OPENAI_BASE_URL=api.openai_base_url,
        ANTHROPIC_API_KEY="sk-ant-" + "fake",
        OPENAI_API_KEY="sk-" + "fake",
    )
    api.set_default(reply)
    return api


def write_job(folder: Path, rows: int) -> None:
    """The job and its ``rows.csv`` of ``rows`` topics in ``folder``."""
    make_job(folder)
    (folder / "rows.csv").write_text("topic\n" + "".join(f"topic-{i:03d}\n" for i in range(rows)))


def make_job(folder: Path) -> None:
    from nbconductor import Pipeline
    from nbconductor.handoff._export import export_pipeline

    p = Pipeline(store=":memory:", namespace={"topic": "topic-000"})
    p.step("research", "List three angles on {{ topic }}", model="anthropic:claude-haiku-4-5")
    p.step(
        "draft",
        "Write a short issue about {{ topic }}. Angles:\n{{ research }}",
        model="anthropic:claude-haiku-4-5",
        retries=2,
    )
    p.rubric("draft", "- Does it say it was revised?", judge="openai:gpt-4.1-mini", threshold=0.5)
    p.step("title", "Title for {{ draft }}", model="openai:gpt-4.1-mini")
    export_pipeline(p, folder / "job.ipynb")
    (folder / "nbconductor.toml").write_text("[retry]\nbase_delay = 0.01\nmax_delay = 0.05\n")


def reply(body: dict):
    from fakeapi import JSONText, Text

    text = json.dumps(body)
    i = text.index("topic-")
    topic = text[i : i + 9]
    if "<rubric>" in text:
        weak = int(topic[6:]) % 3 == 0 and "(revised)" not in text
        verdict = {"score": 0.2 if weak else 0.9, "feedback": "say revised" if weak else "ok"}
        return JSONText({**verdict, "suggested_edit": ""}, input_tokens=400, output_tokens=60)
    if "Title for" in text:
        return Text(f"Title: {topic}", input_tokens=60, output_tokens=10)
    if "List three angles" in text:
        return Text(f"1. price 2. speed 3. trust ({topic})", input_tokens=40, output_tokens=60)
    revised = " (revised)" if "say revised" in text else ""
    return Text(f"Issue on {topic}{revised}", input_tokens=900, output_tokens=400)


class Sampler:
    """Peak memory in use on the machine above the run's start (psutil; every 0.5 s) and the
    peak 1-minute load average while the run lasts."""

    def __init__(self):
        import threading

        import psutil

        self.psutil, self.stop = psutil, threading.Event()
        self.base = psutil.virtual_memory().used
        self.peak_mem, self.peak_load = 0, os.getloadavg()[0]
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self.peak_mem = max(self.peak_mem, self.psutil.virtual_memory().used - self.base)
            self.peak_load = max(self.peak_load, os.getloadavg()[0])

    def close(self) -> str:
        self.stop.set()
        self.thread.join()
        return f"peak memory +{self.peak_mem / 2**30:.1f} GiB, peak load {self.peak_load:.0f}"


def run(folder: Path, out: str, extra: list[str], workers: int | None) -> tuple[float, dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "NBCONDUCTOR_STORE"}
    args = [sys.executable, "-m", "nbconductor", "batch", "job.ipynb", "--params", "rows.csv"]
    args += ["--out", out, "--store", f"{out}.sqlite", *extra]
    if workers:
        args += ["--workers", str(workers)]
    started = time.perf_counter()
    load = os.getloadavg()[0]
    sampler = Sampler()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    print(
        f"  ({out}: load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"1-minute; {sampler.close()})",
        flush=True,
    )
    if done.returncode != 0:
        failed = [line for line in done.stderr.splitlines() if " failed" in line or "rror" in line]
        sys.exit(
            f"{out} failed ({done.returncode}):\n" + "\n".join(failed[:40] or [done.stderr[-3000:]])
        )
    manifest = json.loads((folder / out / "manifest.json").read_text())
    return seconds, manifest, done.stderr


def broker_overhead(api, manifest: dict) -> tuple[float, float]:
    """Mean seconds per batch: the window's wait (last call in -> submitted) and the poll's
    overshoot (the provider finished -> the results were collected)."""
    waits, overshoots = [], []
    for bid, entry in (manifest.get("provider_batches") or {}).items():
        batch = api.batches.get(bid)
        if batch is None or "collected" not in entry:
            continue
        waits.append(max(0.0, batch.created - entry["last_call"]))
        overshoots.append(max(0.0, entry["collected"] - (batch.created + batch.delay)))
    n = max(1, len(waits))
    return sum(waits) / n, sum(overshoots) / n


def waves(api) -> int:
    """Sequential batch waves: batches whose processing overlapped count once."""
    spans = sorted((b.created, b.created + b.delay) for b in api.batches.values())
    n, end = 0, -1.0
    for start, stop in spans:
        if start >= end:
            n, end = n + 1, stop
        else:
            end = max(end, stop)
    return n


def main() -> None:

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--delays", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="default: one per row (direct), the default (batch)",
    )
    ap.add_argument("--window", type=float, default=5.0)
    a = ap.parse_args()
    workers = a.workers or a.rows
    api = start_fake()
    print(f"# provider batch vs direct: {a.rows} rows, {workers} workers, window {a.window:g}s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_job(folder, a.rows)
            direct_s, direct, _ = run(folder, "direct", [], workers)
            direct_calls = len([r for r in api.requests if r.endpoint in ("anthropic", "openai")])
            direct_cost = sum(r["cost"] for r in direct["rows"].values())
            print(f"direct: {direct_calls} calls, ${direct_cost:.4f}, {direct_s:.1f}s wall")
            print()
            print(
                "| D (s) | calls | cost direct | cost batch | ratio | batches (anthropic/openai) "
                "| waves | wall | D × waves | overhead | overhead / (D × waves) | window wait "
                "| poll overshoot | (wait + overshoot) / D |"
            )
            print("|" + "---|" * 14)
            for d in a.delays:
                api.reset()
                api.set_default(reply)
                api.batch_delay = d
                out = f"batch-{d:g}"
                extra = ["--provider-batch", "--batch-window", str(a.window)]
                seconds, batched, _ = run(folder, out, extra, a.workers)
                cost = sum(r["cost"] for r in batched["rows"].values())
                kinds = collections.Counter(b.provider for b in api.batches.values())
                w = waves(api)
                overhead = seconds - direct_s - d * w
                wait, over = broker_overhead(api, batched)
                print(
                    f"| {d:g} | {len(api.batch_log)} | ${direct_cost:.4f} | ${cost:.4f} | "
                    f"{cost / direct_cost:.3f} | {len(api.batches)} ({kinds['anthropic']}/{kinds['openai']}) "
                    f"| {w} | {seconds:.1f}s | {d * w:.0f}s | {overhead:.1f}s | "
                    f"{overhead / (d * w):.1%} | {wait:.2f}s | {over:.2f}s | {(wait + over) / d:.1%} |",
                    flush=True,
                )
    finally:
        api.stop()


if __name__ == "__main__":
    main()
