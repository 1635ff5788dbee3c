"""Soak: a pipeline with a rubric, run many times against the loopback fake API with injected
transport faults, next to the same runs with none. The counts must agree.

The pipeline (the real SDKs over HTTP to ``tests/fakeapi.py``):

- ``research --json`` (Anthropic), ``draft`` (Anthropic) with a ``%%rubric`` judged by an
  OpenAI model, ``--retries 4``, ``--on-fail review``, and a ``--python`` ``stats`` step.
- The fake answers deterministically from the prompt: the judge scores every fifth brief's
  first draft 0.5 (a real gate failure, retried with feedback) and everything else 0.9. So the
  true first-pass yield is known in advance: 80% of runs, 100% of ``research``.
- With faults on, a share ``--rate`` of all chat replies (steps and judge) is replaced by a
  transport fault: a cut stream, a malformed SSE event, a stalled stream (longer than the read
  timeout), an in-stream overload, a 503 or a 429.

Transport faults are reliability, not quality: with them the pipeline must fail no more runs
and report the same first-pass yield as without them; only the request count grows.

    python benchmarks/soak.py [--runs 30] [--rate 0.2] [--retries 4] [--seed 1]

Exits 1 if the faulted figures do not agree with the clean ones or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from fakeapi import FakeAPI, JSONText, Text  # noqa: E402

WRITER = "anthropic:claude-haiku-4-5"
JUDGE = "openai:gpt-4.1-mini"
RUBRIC = "- Is it specific to the brief?\n- Does it end with one concrete next step?"


def reply(body: dict):
    """The fake's deterministic answer to a step or judge request."""
    text = json.dumps(body)
    if "<rubric>" in text:  # the judge: every fifth brief's first draft falls short
        weak = "first draft" in text and int(re.search(r"brief (\d+)\.", text).group(1)) % 5 == 0
        score = 0.5 if weak else 0.9
        return JSONText(
            {
                "score": score,
                "feedback": "no concrete next step" if weak else "good",
                "suggested_edit": "",
            },
            input_tokens=120,
            output_tokens=20,
        )
    if "List three angles" in text:
        return Text('["price", "speed", "support"]', input_tokens=40, output_tokens=10)
    kind = "revised draft" if "rejected by a quality check" in text else "first draft"
    brief = re.search(r"brief (\d+)\.", text).group(1)
    return Text(
        f"A {kind} for brief {brief}. Next step: reply to book a call.",
        input_tokens=80,
        output_tokens=30,
    )


def build(store: Path, retries: int):
    from nbconductor import Pipeline
    from nbconductor._config import Config, RetryPolicy

    config = Config(
        retry=RetryPolicy(
            base_delay=0.01, max_delay=0.05, max_retry_after=5.0, cooldown=60.0, cooldown_after=1000
        ),
        timeout=20.0,
        read_timeout=0.3,
    )
    p = Pipeline(store=store, config=config, root=store.parent)
    p.step(
        "research",
        "List three angles for brief {{ n }}. as JSON",
        model=WRITER,
        json=True,
        retries=retries,
    )
    p.step("draft", "Write a short post for brief {{ n }}. Angles: {{ research }}", model=WRITER)
    p.rubric("draft", RUBRIC, judge=JUDGE, threshold=0.8, retries=retries, on_fail="review")
    p.step("stats", "{'words': len(draft.split()), 'angles': len(research)}", python=True)
    return p


def soak(api: FakeAPI, runs: int, rate: float, retries: int, seed: int, workdir: Path) -> dict:
    from nbconductor.store._report import report

    api.reset()
    api.set_default(reply, endpoint="anthropic")
    api.set_default(reply, endpoint="openai")
    if rate:
        api.inject_faults(rate, seed=seed)
    store = workdir / f"store-{rate:g}.sqlite"
    p = build(store, retries)
    started = time.perf_counter()
    statuses = [p.run({"n": i}).status for i in range(runs)]
    wall = time.perf_counter() - started
    rep = report(p.store)
    p.close()
    t = rep["totals"]
    judge_calls = sum(1 for r in api.requests if r.endpoint == "openai")
    return {
        "runs": runs,
        "requests": len([r for r in api.requests if r.endpoint in ("anthropic", "openai")]),
        "judge_requests": judge_calls,
        "injected": len(api.injected),
        "injected_kinds": _kinds(api.injected),
        "failed_runs": statuses.count("failed"),
        "flagged_runs": statuses.count("flagged"),
        "first_pass_runs": f"{t['first_pass_runs']}/{t['runs_with_output']}",
        "first_pass_yield": t["first_pass_yield"],
        "step_first_pass": {
            name: f"{s['first_pass']}/{s['runs']}" for name, s in rep["steps"].items()
        },
        "mean_attempts": {name: s["mean_attempts"] for name, s in rep["steps"].items()},
        "wall_s": round(wall, 1),
    }


def _kinds(injected: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, fault in injected:
        name = type(fault).__name__ + (
            f" {fault.status}"
            if hasattr(fault, "status") and type(fault).__name__ == "Error"
            else ""
        )
        out[name] = out.get(name, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--retries", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    api = FakeAPI().start()
    os.environ.update(
        ANTHROPIC_BASE_URL=api.anthropic_base_url,
        OPENAI_BASE_URL=api.openai_base_url,
        ANTHROPIC_API_KEY="-".join(["sk", "ant", "soak", "0" * 16]),  # no key-shaped literal
        OPENAI_API_KEY="-".join(["sk", "soak", "0" * 14]),
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clean = soak(api, args.runs, 0.0, args.retries, args.seed, Path(tmp))
            faulted = soak(api, args.runs, args.rate, args.retries, args.seed, Path(tmp))
    finally:
        api.stop()
    print(machine())
    print(
        f"{args.runs} runs of research → draft (+ rubric, --retries {args.retries}) → stats; "
        f"faults at {args.rate:.0%} of chat replies"
    )
    keys = [
        "runs",
        "requests",
        "judge_requests",
        "injected",
        "failed_runs",
        "flagged_runs",
        "first_pass_runs",
        "first_pass_yield",
        "step_first_pass",
        "mean_attempts",
        "wall_s",
    ]
    width = max(len(k) for k in keys)
    print(f"{'':<{width}}  {'clean':<34}  faulted")
    for k in keys:
        print(f"{k:<{width}}  {str(clean[k]):<34}  {faulted[k]}")
    print(f"injected faults by kind: {faulted['injected_kinds']}")
    agree = (
        clean["first_pass_runs"] == faulted["first_pass_runs"]
        and clean["step_first_pass"] == faulted["step_first_pass"]
        and clean["failed_runs"] == faulted["failed_runs"] == 0
    )
    print(
        "agree: first-pass yield and failed runs are the same with and without faults"
        if agree
        else "DISAGREE: transport faults changed a quality count or failed a run"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
