"""``nbconductor batch --provider-batch``: model calls through the providers' batch APIs.

The official SDKs' batch clients (Anthropic Message Batches, OpenAI Files + Batch) talk to
the loopback fake (tests/fakeapi.py, tests/fakebatch.py), which draws every batched
request's reply from the same deterministic reply function as a direct call, so the direct
path and the batch path can be compared row by row.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from fakeapi import Error, JSONText, Text, ToolCall
from fakebatch import Expired

from nbconductor import Pipeline
from nbconductor._config import Config, ModelRef, Price
from nbconductor._pricing import cost_of
from nbconductor._types import Usage
from nbconductor.handoff._broker import Broker, clean_stale
from nbconductor.handoff._export import export_pipeline
from nbconductor.store._liveness import own_start

DRAFT = "anthropic:claude-haiku-4-5"
JUDGE = "openai:gpt-4.1-mini"
FAST = "[retry]\nbase_delay = 0.01\nmax_delay = 0.05\n"


def _text(body: dict) -> str:
    return json.dumps(body)


def topic_of(body: dict) -> str:
    text = _text(body)
    i = text.index("topic-")
    return text[i : i + 8]


def replies(body: dict):
    """Deterministic answers: every third topic's first draft fails the rubric, the revision passes."""
    text = _text(body)
    topic = topic_of(body)
    if "<rubric>" in text:
        weak = int(topic[6:]) % 3 == 0 and "(revised)" not in text
        return JSONText(
            {
                "score": 0.2 if weak else 0.9,
                "feedback": "say it was revised" if weak else "fine",
                "suggested_edit": "",
            },
            input_tokens=300,
            output_tokens=40,
        )
    if "Title for" in text:
        return Text(f"Title: {topic}", input_tokens=50, output_tokens=8)
    revised = " (revised)" if "say it was revised" in text else ""
    return Text(f"Draft on {topic}{revised}", input_tokens=1000, output_tokens=200)


def make_job(folder: Path, *, rubric: bool = True) -> Path:
    p = Pipeline(store=":memory:", namespace={"topic": "topic-00"})
    p.step("draft", "Write about {{ topic }}", model=DRAFT, retries=2)
    if rubric:
        p.rubric("draft", "- Is it revised?", judge=JUDGE, threshold=0.5)
    p.step("title", "Title for {{ draft }}", model=JUDGE)
    job = export_pipeline(p, folder / "job.ipynb")
    (folder / "nbconductor.toml").write_text(FAST)
    return job


def write_rows(folder: Path, n: int) -> Path:
    path = folder / "rows.csv"
    path.write_text("topic\n" + "".join(f"topic-{i:02d}\n" for i in range(n)))
    return path


@pytest.fixture
def cli(monkeypatch, capsys, fake_api):
    from nbconductor.cli import main

    def run(folder: Path, *args: str):
        monkeypatch.chdir(folder)
        monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
        capsys.readouterr()
        code = main(["batch", "job.ipynb", "--params", "rows.csv", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def store_rows(path: Path) -> dict:
    """(row notebook, step) -> (state, output hash, attempts) of every step result."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT notebook, step, state, output_hash, attempts FROM results WHERE item IS NULL"
        ).fetchall()
    finally:
        db.close()
    return {(Path(nb).name, step): (state, h, n) for nb, step, state, h, n in rows}


def bodies(records) -> collections.Counter:
    """The request bodies as sent, without the streaming flags a direct call adds."""
    out = collections.Counter()
    for body in records:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        out[json.dumps(body, sort_keys=True)] += 1
    return out


def test_batch_path_gives_the_direct_outputs_at_half_price(tmp_path, cli, fake_api):
    make_job(tmp_path)
    write_rows(tmp_path, 20)
    fake_api.set_default(replies)
    fake_api.batch_delay = 0.3

    code, _, err = cli(tmp_path, "--out", "direct", "--store", "direct.sqlite", "--workers", "4")
    assert code == 0, err
    direct = [r.json for r in fake_api.requests if r.endpoint in ("anthropic", "openai")]
    fake_api.requests.clear()

    # A long window: a batch goes when every running row waits, however slowly the workers start.
    code, _, err = cli(
        tmp_path,
        *("--out", "batched", "--store", "batched.sqlite", "--provider-batch"),
        *("--batch-window", "120"),
    )
    assert code == 0, err
    # Nothing went direct: every call travelled in a provider batch, through the SDKs' batch clients.
    assert not [r for r in fake_api.requests if r.endpoint in ("anthropic", "openai")]
    paths = {(r.method, r.path.split("?")[0].rsplit("/", 1)[0]) for r in fake_api.requests}
    assert ("POST", "/v1/messages") in paths and ("POST", "/v1") in paths  # batches, files
    # The same requests, as many of each: per row, per attempt, judge calls included.
    sent = [b.body for b in fake_api.batch_log]
    assert bodies(sent) == bodies(direct)
    assert (
        len(sent) == 20 * 3 + 7 * 2
    )  # draft, judge, title per row; 7 drafts retried and re-judged
    per_row = collections.Counter(topic_of(b) for b in sent)
    assert all(per_row[f"topic-{i:02d}"] == (5 if i % 3 == 0 else 3) for i in range(20))
    # Same outputs, states and attempt counts in the store, row by row.
    a, b = store_rows(tmp_path / "direct.sqlite"), store_rows(tmp_path / "batched.sqlite")
    assert len(a) == 40 and a == b
    assert sum(1 for v in b.values() if v[2] == 2) == 7
    # One batch per DAG level per provider, plus the retry wave: drafts, then the 7 revisions
    # (Anthropic); verdicts, then the 13 passing rows' titles, the 7 re-verdicts, their titles.
    waves = collections.Counter((x.provider, len(x.results)) for x in fake_api.batches.values())
    assert waves == {
        ("anthropic", 20): 1,
        ("openai", 20): 1,
        ("anthropic", 7): 1,
        ("openai", 13): 1,
        ("openai", 7): 2,
    }, waves
    # Half the price, from the batch results' usage.
    cost = {
        d: sum(
            r["cost"]
            for r in json.loads((tmp_path / d / "manifest.json").read_text())["rows"].values()
        )
        for d in ("direct", "batched")
    }
    assert cost["direct"] > 0
    assert cost["batched"] == pytest.approx(cost["direct"] / 2, rel=1e-3)
    manifest = json.loads((tmp_path / "batched" / "manifest.json").read_text())
    journaled = manifest["provider_batches"]
    assert set(journaled) == set(fake_api.batches)
    assert sum(len(e["requests"]) for e in journaled.values()) == len(sent)
    assert "provider batches:" in err and "finished" in err


def test_errored_and_expired_requests_follow_the_ladder(tmp_path, cli, fake_api):
    make_job(tmp_path, rubric=False)
    write_rows(tmp_path, 3)
    seen: collections.Counter = collections.Counter()

    def flaky(body):
        if "Title for" in _text(body):
            return Text("a title")
        topic = topic_of(body)
        seen[topic] += 1
        if topic == "topic-00" and seen[topic] == 1:
            return Error(529, "Overloaded")  # retryable, as from a direct call
        if topic == "topic-01" and seen[topic] == 1:
            return Expired()  # the batch ended before it ran: retryable
        if topic == "topic-02":
            return Error(400, "prompt is too long")  # not retryable: the step fails at once
        return Text(f"Draft on {topic}")

    fake_api.set_default(flaky)
    code, out, err = cli(tmp_path, "--provider-batch", "--batch-window", "1")
    assert code == 1
    assert seen == {"topic-00": 2, "topic-01": 2, "topic-02": 1}
    rows = json.loads((tmp_path / "batch-out" / "manifest.json").read_text())["rows"]
    assert [rows[str(i)]["status"] for i in range(3)] == ["passed", "passed", "failed"]
    assert "refused the request (400)" in rows["2"]["error"]
    found = store_rows(tmp_path / ".nbconductor" / "store.sqlite")
    attempts = {k[0]: v[2] for k, v in found.items() if k[1] == "draft"}
    assert attempts == {"job-000.ipynb": 2, "job-001.ipynb": 2, "job-002.ipynb": 1}
    db = sqlite3.connect(tmp_path / ".nbconductor" / "store.sqlite")
    log = db.execute(
        "SELECT attempt_log FROM results WHERE step='draft' AND notebook LIKE '%job-000.ipynb'"
    ).fetchone()[0]
    db.close()
    assert "RateLimitError" in log and "overloaded" in log


@pytest.mark.parametrize("lost", [None, "manifest", "store"])
def test_kill_9_then_resume_sends_nothing_twice(tmp_path, fake_api, lost):
    """Submitted batches are journaled in the store and the manifest: either one is enough."""
    make_job(tmp_path, rubric=False)
    write_rows(tmp_path, 4)
    fake_api.set_default(replies)
    fake_api.batch_delay = 600  # the coordinator dies while the first batch is processing
    env = {k: v for k, v in os.environ.items() if k != "NBCONDUCTOR_STORE"}
    args = [sys.executable, "-m", "nbconductor", "batch", "job.ipynb", "--params", "rows.csv"]
    proc = subprocess.Popen(
        [*args, "--provider-batch", "--batch-window", "1"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    manifest = tmp_path / "batch-out" / "manifest.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            journaled = {}
            with contextlib.suppress(ValueError, OSError):
                journaled = json.loads(manifest.read_text()).get("provider_batches") or {}
            if sum(len(e["requests"]) for e in journaled.values()) == 4:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("no provider batch was journaled")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, mid-wait
        proc.wait(30)
        proc.stderr.close()
    assert len(fake_api.batch_log) == 4
    left = list(Path(tempfile.gettempdir()).glob(f"nbc-broker-{proc.pid}-*"))
    assert len(left) == 1  # the killed coordinator's broker folder, cleaned up by the next start
    store = tmp_path / ".nbconductor" / "store.sqlite"
    db = sqlite3.connect(store)
    stored = db.execute("SELECT id, job, requests FROM provider_batches").fetchall()
    db.close()
    assert {bid for bid, _, _ in stored} == set(fake_api.batches)
    assert {job for _, job, _ in stored} == {str(manifest.parent)}
    assert sum(len(json.loads(r)) for _, _, r in stored) == 4
    if lost == "manifest":
        manifest.unlink()
    elif lost == "store":
        for p in store.parent.glob("store.sqlite*"):
            p.unlink()
    fake_api.batch_delay = 0.3
    for b in fake_api.batches.values():
        b.delay = 0.0  # the provider finishes the batch while no coordinator is running

    done = subprocess.run(
        [*args, "--provider-batch", "--batch-window", "1", "--resume"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not left[0].exists()
    assert "4 call(s) collected from earlier batches" in done.stderr
    counts = bodies(b.body for b in fake_api.batch_log)
    assert len(fake_api.batch_log) == 8 and max(counts.values()) == 1  # 4 drafts, then 4 titles
    # The resumed coordinator submitted only the titles: the drafts' batches were collected.
    kinds = [b.provider for b in fake_api.batches.values()]
    assert kinds.count("openai") >= 1 and fake_api.batch_log[-1].provider == "openai"
    assert {b.provider for b in fake_api.batch_log[4:]} == {"openai"}
    rows = json.loads(manifest.read_text())["rows"]
    assert {r["status"] for r in rows.values()} == {"passed"} and len(rows) == 4
    # Both journals hold every batch again, the first coordinator's ones included.
    db = sqlite3.connect(store)
    stored = {bid for (bid,) in db.execute("SELECT id FROM provider_batches")}
    db.close()
    journaled = set(json.loads(manifest.read_text())["provider_batches"])
    assert journaled == set(fake_api.batches)
    assert stored == set(fake_api.batches)  # a lost store's entry comes back when collected


def test_options_that_do_not_combine_and_the_dry_run(tmp_path, cli, fake_api, capsys, monkeypatch):
    make_job(tmp_path)
    write_rows(tmp_path, 10)
    from nbconductor.cli import main

    monkeypatch.chdir(tmp_path)
    for bad, words in (
        (["--provider-batch", "--dask", "tcp://127.0.0.1:1"], "--dask"),
        (["--batch-window", "3"], "needs --provider-batch"),
        (["--provider-batch", "--batch-window", "0"], "more than 0"),
    ):
        assert main(["batch", "job.ipynb", "--params", "rows.csv", *bad]) == 2
        assert words in capsys.readouterr().err
    code, out, err = cli(tmp_path, "--provider-batch", "--dry-run")
    assert code == 0
    assert "10 rows, 30 model calls (10 of them judge calls" in out
    assert "at batch prices" in out and "saving" in out and "Nothing was sent" in out
    assert fake_api.requests == [] and not (tmp_path / "batch-out" / "manifest.json").exists()


def test_batch_prices_are_half_and_configurable():
    ref = ModelRef("anthropic", "claude-haiku-4-5")
    usage = Usage(1_000_000, 1_000_000)
    assert cost_of(ref, usage, Config()) == pytest.approx(6.0)
    assert cost_of(ref, usage, Config(), batch=True) == pytest.approx(3.0)
    own = Config(prices={"anthropic:claude-haiku-4-5": Price(input=1, output=5, batch=0.6)})
    assert cost_of(ref, usage, own, batch=True) == pytest.approx(3.6)


def test_stale_broker_folders_are_removed_live_ones_kept(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead = int(gone.stdout)
    stale = tmp_path / f"nbc-broker-{dead}-1-abcd"
    alive = tmp_path / f"nbc-broker-{os.getpid()}-{own_start()}-efgh"
    old = tmp_path / "nbc-broker-x1y2z3"  # an older coordinator's, nothing listening
    other = tmp_path / "not-a-broker"
    for d in (stale, alive, old, other):
        d.mkdir()
    assert sorted(clean_stale(str(tmp_path))) == sorted([str(stale), str(old)])
    assert alive.exists() and other.exists() and not stale.exists() and not old.exists()
    # A broker's own folder names its owner, and it is gone once the broker stops.
    broker = Broker()
    address = broker.start()
    try:
        assert Path(address).parent.name.startswith(f"nbc-broker-{os.getpid()}-{own_start()}-")
        assert str(Path(address).parent) not in clean_stale(str(Path(address).parent.parent))
        assert Path(address).exists()
    finally:
        broker.stop()
    assert not Path(address).parent.exists()


def tool_replies(body: dict):
    """A tool-use step: the first turn asks for `lookup`, the turn with its result answers."""
    text, topic = _text(body), topic_of(body)
    if "sunny in" in text:
        return Text(f"Answer on {topic}: sunny", input_tokens=120, output_tokens=9)
    return ToolCall("lookup", {"city": topic}, id=f"call_{topic}", input_tokens=80)


def test_tool_use_steps_travel_turn_by_turn_in_batches(tmp_path, cli, fake_api):
    p = Pipeline(store=":memory:", namespace={"topic": "topic-00"})
    p.step("ask", "Weather for {{ topic }}?", model=DRAFT, tools=["lookup"])
    p.step("title", "Title for {{ ask }}", model=JUDGE, tools=["lookup"])
    job = export_pipeline(p, tmp_path / "job.ipynb")
    nb = nbformat.read(job, as_version=4)
    tool = 'def lookup(city: str) -> str:\n    """The weather in a city."""\n    return f"sunny in {city}"'
    nb.cells.insert(2, nbformat.v4.new_code_cell(tool))
    nbformat.write(nb, job)
    (tmp_path / "nbconductor.toml").write_text(FAST)
    write_rows(tmp_path, 6)
    fake_api.set_default(tool_replies)
    fake_api.batch_delay = 0.2

    code, _, err = cli(tmp_path, "--out", "direct", "--store", "direct.sqlite", "--workers", "3")
    assert code == 0, err
    direct = [r.json for r in fake_api.requests if r.endpoint in ("anthropic", "openai")]
    fake_api.requests.clear()
    code, _, err = cli(
        tmp_path,
        *("--out", "batched", "--store", "batched.sqlite", "--provider-batch"),
        *("--batch-window", "120"),
    )
    assert code == 0, err
    assert not [r for r in fake_api.requests if r.endpoint in ("anthropic", "openai")]
    sent = [b.body for b in fake_api.batch_log]
    # Each tool-use turn is one request: 2 turns per step, 2 steps per row, the same bodies.
    assert len(sent) == 6 * 4 and bodies(sent) == bodies(direct)
    assert sum('"tool_result"' in _text(b) for b in sent) == 6  # Anthropic's second turns
    assert sum('"role": "tool"' in _text(b) for b in sent) == 6  # OpenAI's second turns
    # Turn by turn: every row's first turns in one batch, their second turns in the next.
    waves = collections.Counter((x.provider, len(x.results)) for x in fake_api.batches.values())
    assert waves == {("anthropic", 6): 2, ("openai", 6): 2}, waves
    a, b = store_rows(tmp_path / "direct.sqlite"), store_rows(tmp_path / "batched.sqlite")
    assert len(a) == 12 and a == b
    spent = {}
    for name in ("direct", "batched"):
        db = sqlite3.connect(tmp_path / f"{name}.sqlite")
        spent[name] = db.execute(
            "SELECT step, SUM(input_tokens), SUM(output_tokens) FROM results GROUP BY step"
        ).fetchall()
        db.close()
    assert (
        spent["direct"]
        == spent["batched"]
        == [("ask", 6 * 200, 6 * 14), ("title", 6 * 200, 6 * 14)]
    )


def test_responses_api_steps_go_in_a_responses_batch(tmp_path, cli, fake_api):
    """An alias on the Responses API: its calls are /v1/responses lines of their own OpenAI
    Batch (one endpoint per batch), beside the Chat Completions batch of the same model."""
    p = Pipeline(store=":memory:", namespace={"topic": "topic-00"})
    p.alias("resp", JUDGE, api="responses")
    p.step("ask", "Weather for {{ topic }}?", model="resp", tools=["lookup"])
    p.step("title", "Title for {{ ask }}", model=JUDGE)
    job = export_pipeline(p, tmp_path / "job.ipynb")
    nb = nbformat.read(job, as_version=4)
    assert any("--api responses" in c.source for c in nb.cells)
    tool = 'def lookup(city: str) -> str:\n    """The weather in a city."""\n    return f"sunny in {city}"'
    nb.cells.insert(2, nbformat.v4.new_code_cell(tool))
    nbformat.write(nb, job)
    (tmp_path / "nbconductor.toml").write_text(FAST)
    write_rows(tmp_path, 4)

    def answer(body):
        if "Title for" in _text(body):
            return Text(f"Title: {topic_of(body)}", input_tokens=50, output_tokens=8)
        return tool_replies(body)

    fake_api.set_default(answer)
    fake_api.batch_delay = 0.2
    code, _, err = cli(tmp_path, "--out", "direct", "--store", "direct.sqlite", "--workers", "2")
    assert code == 0, err
    direct = [r for r in fake_api.requests if r.endpoint == "openai"]
    # Direct: the Responses API, streamed (2 tool turns per row), then the title's chat call.
    assert collections.Counter(r.path for r in direct) == {
        "/v1/responses": 8,
        "/v1/chat/completions": 4,
    }
    assert all(r.json["stream"] for r in direct)
    first = next(r.json for r in direct if r.path == "/v1/responses")
    assert first["tools"][0]["type"] == "function" and first["tools"][0]["name"] == "lookup"
    assert isinstance(first["input"], list) and "messages" not in first
    fake_api.requests.clear()

    code, _, err = cli(
        tmp_path,
        *("--out", "batched", "--store", "batched.sqlite", "--provider-batch"),
        *("--batch-window", "120"),
    )
    assert code == 0, err
    assert not [r for r in fake_api.requests if r.endpoint == "openai"]
    sent = [b.body for b in fake_api.batch_log]
    assert bodies(sent) == bodies(r.json for r in direct)
    assert (
        sum(any(i.get("type") == "function_call_output" for i in b.get("input", [])) for b in sent)
        == 4
    )
    endpoints = collections.Counter((x.endpoint, len(x.results)) for x in fake_api.batches.values())
    assert endpoints == {("/v1/responses", 4): 2, ("/v1/chat/completions", 4): 1}, endpoints
    a, b = store_rows(tmp_path / "direct.sqlite"), store_rows(tmp_path / "batched.sqlite")
    assert len(a) == 8 and a == b
    cost = {}
    for name in ("direct", "batched"):
        db = sqlite3.connect(tmp_path / f"{name}.sqlite")
        cost[name] = db.execute("SELECT SUM(cost) FROM results").fetchone()[0]
        db.close()
    assert cost["direct"] > 0 and cost["batched"] == pytest.approx(cost["direct"] / 2, rel=1e-6)


def test_the_store_records_batches_on_both_backends(store_target, tmp_path):
    from nbconductor.store._base import connect
    from nbconductor.store._batches import forget_batches, record_batch, recorded_batches
    from nbconductor.store._copy import copy_store

    entry = {
        "provider": "openai",
        "group": {"base_url": None, "key_env": None, "model": "gpt-4.1-mini", "api": "responses"},
        "requests": {"nbc000001": "k1", "nbc000002": "k2"},
        "submitted": 10.0,
        "last_call": 9.5,
    }
    store = connect(store_target)
    try:
        record_batch(store, "/out/a", "batch_1", entry)
        record_batch(store, "/out/b", "batch_2", {**entry, "requests": {"nbc000003": "k3"}})
        assert recorded_batches(store, "/out/a") == {"batch_1": entry}
        record_batch(store, "/out/a", "batch_1", {**entry, "collected": 12.0})  # collected
        assert recorded_batches(store, "/out/a") == {"batch_1": {**entry, "collected": 12.0}}
    finally:
        store.close()
    # `nbconductor store copy` carries them (one line in store/_copy.TABLES).
    copied = str(tmp_path / "copy.sqlite")
    assert copy_store(store_target, copied)["provider_batches"] == 2
    store = connect(copied)
    try:
        assert set(recorded_batches(store, "/out/b")) == {"batch_2"}
        forget_batches(store, "/out/b")
        assert recorded_batches(store, "/out/b") == {} and recorded_batches(store, "/out/a")
    finally:
        store.close()
