import multiprocessing as mp
import sqlite3

from nbconductor._types import Attempt, GateResult, StepResult, Usage
from nbconductor.store._base import connect
from nbconductor.store._sqlite import Store, Unstored, decode_output, encode_output


def _writer(path, n, worker):
    store = connect(path)
    run = store.start_run({"worker": worker}, None, "nb.ipynb")
    for i in range(n):
        store.record(
            run, StepResult(f"s{i}", "passed", f"w{worker}-{i}", cache_key=f"k{worker}-{i}")
        )
    store.end_run(run, "passed", 0.0)


def test_several_processes_write_at_once(store_target):
    path = store_target
    connect(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 100, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = connect(path)
    assert len(store.results()) == 400
    assert {r["status"] for r in store.runs()} == {"passed"}
    assert store.lookup("k3-99").output == "w3-99"


def test_record_roundtrip_with_audit_fields(store_target):
    store = connect(store_target)
    run = store.start_run({"topic": "x"}, ["draft"], "nb.ipynb")
    result = StepResult(
        "draft",
        "flagged",
        {"a": [1, 2]},
        prompt="Write",
        model="offline:w",
        attempts=[Attempt("offline:w", 1.0, 2.0, "gate", "too long", Usage(5, 7), 0.0)],
        gates=[GateResult("rubric", False, 0.4, "too long", "shorten")],
        usage=Usage(5, 7, 1, 2),
        cost=0.01,
        started=1.0,
        ended=2.0,
        cache_key="key1",
    )
    rid = store.record(run, result, "nb.ipynb")
    back = store.result(rid)
    assert (
        back.output == {"a": [1, 2]} and back.state == "flagged" and back.usage == Usage(5, 7, 1, 2)
    )
    assert back.attempts[0].usage == Usage(5, 7) and back.gates[0].suggestion == "shorten"
    row = store.results(run)[0]
    assert row["user"] and row["notebook"] == "nb.ipynb" and len(row["prompt_hash"]) == 16
    assert row["output_hash"] and row["attempts"] == 1
    assert store.lookup("key1").result_id == rid


def test_output_encoding():
    for value in ["text", {"k": [1, None]}, [1, 2], 3.5, None]:
        assert decode_output(*encode_output(value)) == value
    kind, blob = encode_output(b"\x89PNG")
    assert kind == "bytes" and decode_output(kind, blob) == b"\x89PNG"
    kind, blob = encode_output({1, 2})
    assert kind == "unstored" and blob == b"{1, 2}"  # no safe form: only its repr is kept
    back = decode_output(kind, blob)
    assert isinstance(back, Unstored) and repr(back) == "{1, 2}"


def test_rich_outputs_have_safe_encodings():
    import numpy as np
    import pandas as pd

    arr = np.arange(12, dtype="float32").reshape(3, 4)
    kind, blob = encode_output(arr)
    assert kind == "ndarray" and blob.startswith(b"\x93NUMPY")
    back = decode_output(kind, blob)
    assert back.dtype == arr.dtype and (back == arr).all()
    # an array of Python objects would need pickle: it is not stored
    assert encode_output(np.array([object()], dtype=object))[0] == "unstored"
    df = pd.DataFrame({"name": ["a", "b"], "n": [1, 2]}, index=["x", "y"])
    kind, blob = encode_output(df)
    assert kind == "dataframe"
    assert decode_output(kind, blob).equals(df)
    assert encode_output(pd.DataFrame({"o": [object()]}))[0] == "unstored"
    from nbconductor.store._codec import _safe_pyarrow

    assert not _safe_pyarrow("14.0.0") and _safe_pyarrow(
        "14.0.1"
    )  # CVE-2023-47248: never read with older


def test_secrets_in_rich_outputs_are_not_stored(monkeypatch):
    import numpy as np
    import pandas as pd

    canary = "sk-ant-" + "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    for value in (np.array([f"key {canary}"]), pd.DataFrame({"k": [canary]})):
        kind, blob = encode_output(value)
        assert kind == "unstored" and canary.encode() not in blob


def test_cache_keys_hash_without_pickle(monkeypatch):
    import pickle

    import numpy as np

    from nbconductor._cache import stable_hash

    def refuse(*args, **kwargs):
        raise AssertionError("stable_hash pickled a value")

    monkeypatch.setattr(pickle, "dumps", refuse)

    class Point:
        def __init__(self, x):
            self.x = x

    assert stable_hash(Point(1)) == stable_hash(Point(1)) != stable_hash(Point(2))
    assert stable_hash(np.arange(3)) == stable_hash(np.arange(3)) != stable_hash(np.arange(4))
    assert stable_hash({"a", "b"}) == stable_hash({"b", "a"})
    assert stable_hash({"k": [1, 2]}) == stable_hash({"k": [1, 2]})
    # a notebook function an input refers to: its code decides, not where it lives in memory
    first = {}
    exec("def helper(x):\n    return x + 1", first)
    again = {}
    exec("def helper(x):\n    return x + 1", again)
    changed = {}
    exec("def helper(x):\n    return x + 2", changed)
    assert (
        stable_hash(first["helper"])
        == stable_hash(again["helper"])
        != stable_hash(changed["helper"])
    )


def test_keys_are_redacted_before_writing(tmp_path, monkeypatch):
    canary = "sk-ant-" + "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    path = tmp_path / "s.sqlite"
    store = Store(path)
    run = store.start_run({"note": f"key is {canary}"}, None, None)
    store.record(
        run, StepResult("s", "failed", f"echo {canary}", prompt=canary, error=f"401 for {canary}")
    )
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert canary.encode() not in data


def test_structured_outputs_are_redacted_too(monkeypatch):
    from pydantic import BaseModel

    canary = "sk-ant-" + "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)

    class Reply(BaseModel):
        text: str

    kind, blob = encode_output(Reply(text=f"the key is {canary}"))
    assert kind == "pydantic" and canary.encode() not in blob and b"[REDACTED]" in blob


# ----------------------------------------------------------------- history(): memory of other work


def _draft_pipeline(path):
    from nbconductor import Pipeline

    p = Pipeline(store=path)
    p.step("draft", "Issue on {{ topic }}. Past issues: {{ history('draft') }}", model="offline:w")
    return p


def test_history_never_feeds_a_step_its_own_output(store_target):
    path = store_target
    p = _draft_pipeline(path)
    first = p.run({"topic": "pricing"}).results["draft"]
    assert first.state == "passed" and "Past issues: []" in first.prompt
    again = p.run({"topic": "pricing"}).results["draft"]
    assert again.cached and again.prompt == first.prompt  # an unchanged re-run is free
    p.close()
    later = _draft_pipeline(path)  # a later session: the same, from the store
    assert later.run({"topic": "pricing"}).results["draft"].cached
    # another brief does see it: memory of other work
    other = later.run({"topic": "onboarding"}).results["draft"]
    assert not other.cached and first.output[:30] in other.prompt
    later.close()


def _copy(src, dst):
    import shutil

    shutil.copy(src, dst)
    return dst


def test_history_ends_where_the_batch_began(tmp_path, monkeypatch):
    import time

    from nbconductor.store._history import HISTORY_ENV

    seed = tmp_path / "seed.sqlite"
    p = _draft_pipeline(seed)
    p.run({"topic": "seed"})
    p.close()
    monkeypatch.setenv(HISTORY_ENV, repr(time.time()))  # what `nbconductor batch` sets for its rows
    outputs, prompts = [], {}
    for n, order in enumerate(
        (["a", "b", "c"], ["c", "b", "a"])
    ):  # rows finishing in different orders
        store = _copy(seed, tmp_path / f"batch{n}.sqlite")
        got = {}
        for topic in order:
            row = _draft_pipeline(store)  # each row its own process/session, as in a batch
            result = row.run({"topic": topic}).results["draft"]
            got[topic], prompts[topic] = result.output, result.prompt
            row.close()
        outputs.append(got)
    assert outputs[0] == outputs[1]  # identical batches on identical stores: identical outputs
    for (
        prompt
    ) in prompts.values():  # each row remembers the work before the batch, none of its rows
        past = prompt.split("Past issues:", 1)[1]
        assert "Issue on seed" in past and not any(f"Issue on {t}." in past for t in "abc")


def test_batch_rows_do_not_see_each_other(tmp_path, monkeypatch, capsys):
    import json
    import sqlite3

    from nbconductor.cli import main
    from nbconductor.handoff._export import export_pipeline

    p = _draft_pipeline(":memory:")
    p.namespace["topic"] = "t"
    job = export_pipeline(p, tmp_path / "job.ipynb")
    (tmp_path / "rows.json").write_text(
        json.dumps([{"topic": t} for t in ("alpha", "beta", "gamma")])
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    prompts = []
    for n in range(2):  # two identical batches on identical (empty) stores
        store = tmp_path / f"s{n}.sqlite"
        assert (
            main(
                [
                    "batch",
                    str(job),
                    "--params",
                    "rows.json",
                    "--workers",
                    "1",
                    "--store",
                    str(store),
                    "--out",
                    f"out{n}",
                ]
            )
            == 0
        ), capsys.readouterr().err
        db = sqlite3.connect(store)
        prompts.append(
            sorted(r[0] for r in db.execute("SELECT prompt FROM results WHERE step='draft'"))
        )
        db.close()
    assert prompts[0] == prompts[1]
    assert all(
        prompt.endswith("Past issues: []") for prompt in prompts[0]
    )  # no row saw another's draft


# ---------------------------------------------------------------------- interrupted runs, the WAL

SLOW_RUN = """
import sys, time
from nbconductor import Pipeline

p = Pipeline(store=sys.argv[1])
p.step("quick", "Hello {{ name }}", model="offline:q")

@p.function()
def slow(quick):
    time.sleep(120)
    return quick

p.run({"name": "Ada"})
"""


def test_a_killed_run_is_counted_interrupted_and_marked_so(tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from nbconductor.store._report import report, report_text

    path, script = tmp_path / "s.sqlite", tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.1)
        if path.exists():
            db = sqlite3.connect(path, timeout=30)
            try:
                done = db.execute("SELECT id FROM results WHERE step='quick'").fetchall()
            except sqlite3.OperationalError:  # the tables are not there yet
                done = []
            db.close()
            if done:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rep = report(path)
    assert rep["totals"]["interrupted_runs"] == 1 and "1 run interrupted" in report_text(rep)
    store = Store(path)
    assert [r["status"] for r in store.runs()] == ["running"]  # report only reads
    run = store.start_run({}, None, None)  # a later run finds the dead one
    statuses = {r["id"]: r["status"] for r in store.runs()}
    assert statuses.pop(run) == "running" and list(statuses.values()) == ["interrupted"]
    store.end_run(run, "passed", 0.0)
    assert report(store)["totals"]["interrupted_runs"] == 1
    store.close()


def test_live_runs_are_not_marked_interrupted(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    mine = store.start_run({}, None, None)  # this process: alive
    other = Store(tmp_path / "s.sqlite")
    other.start_run({}, None, None)
    assert {r["status"] for r in other.runs()} == {"running"} and other.mark_interrupted() == []
    store.end_run(mine, "passed", 0.0)
    store.close()
    other.close()


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
    """A container restarted: its new process got the pid of the one that was killed mid-run."""
    import os

    store = Store(tmp_path / "s.sqlite")
    dead = store.start_run({}, None, None)
    store.execute(
        "UPDATE runs SET pid=?, pid_start=pid_start - 100 WHERE id=?", (os.getpid(), dead)
    )
    live = store.start_run({}, None, None)
    statuses = {r["id"]: r["status"] for r in store.runs()}
    assert statuses == {dead: "interrupted", live: "running"}
    store.close()


def test_an_older_store_is_migrated_in_place(tmp_path):
    import sqlite3

    from nbconductor.store._report import report

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE runs (id TEXT PRIMARY KEY, started REAL, ended REAL, status TEXT, notebook TEXT,
            user TEXT, host TEXT, params TEXT, targets TEXT, cost REAL, error TEXT);
        CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, step TEXT, state TEXT,
            cache_key TEXT, cached INTEGER, output_kind TEXT, output BLOB, prompt TEXT, model TEXT,
            attempts INTEGER, attempt_log TEXT, gates TEXT, input_tokens INTEGER, output_tokens INTEGER,
            cache_read_tokens INTEGER, cache_write_tokens INTEGER, cost REAL, started REAL, ended REAL,
            error TEXT, items INTEGER, item INTEGER, notebook TEXT, user TEXT, prompt_hash TEXT,
            output_hash TEXT, params TEXT);
        INSERT INTO runs (id, started, status, host, params) VALUES ('old', 1.0, 'running', 'h', '{}');
        INSERT INTO results (run_id, step, state, cache_key, cached, output_kind, output, attempts,
            attempt_log, gates, input_tokens, output_tokens, cost, started, ended)
            VALUES ('old', 'a', 'passed', 'k', 0, 'text', X'6869', 1, '[]', '[]', 1, 1, 0.0, 1.0, 2.0);
    """)
    db.commit()
    db.close()
    assert report(path)["totals"]["runs"] == 1  # read-only: an unmigrated store reads as it is
    store = Store(path)
    assert {"pid", "pid_start"} <= {c[1] for c in store.query("PRAGMA table_info(runs)")}
    assert (
        store.lookup("k").output == "hi" and store.runs()[0]["status"] == "running"
    )  # pid unknown: left alone
    store.start_run({}, None, None)
    store.close()
    assert Store(path).query("SELECT count(*) AS n FROM runs")[0]["n"] == 2


def test_the_store_file_alone_has_the_data_after_a_kernel_run(tmp_path, monkeypatch, capsys):
    import shutil
    import sqlite3

    import nbformat

    from nbconductor import Pipeline
    from nbconductor.cli import main
    from nbconductor.handoff._export import export_pipeline

    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("words", "len(draft.split())", python=True)
    job = export_pipeline(p, tmp_path / "job.ipynb")
    nb = nbformat.read(job, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell("%conductor run words --force")
    )  # a second run right after
    nbformat.write(nb, job)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    assert main(["run", str(job), "--engine", "kernel", "-o", str(tmp_path / "out.ipynb")]) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(
        tmp_path / ".nbconductor" / "store.sqlite", copy / "store.sqlite"
    )  # the file alone, no -wal
    db = sqlite3.connect(copy / "store.sqlite")
    assert db.execute("SELECT status FROM runs").fetchall() == [("passed",), ("passed",)]
    per_run = db.execute(
        "SELECT run_id, group_concat(step) FROM results GROUP BY run_id ORDER BY min(id)"
    ).fetchall()
    assert len(per_run) == 2 and all("words" in steps for _, steps in per_run)
    db.close()


def test_opening_a_store_twice_in_a_process_keeps_its_wal_safe(tmp_path):
    """Checking a file must not drop this process's SQLite locks (POSIX drops them when any
    descriptor of the file closes): another process would think it is the last one and delete
    the WAL under the connection still open here."""
    import subprocess
    import sys

    path = tmp_path / "s.sqlite"
    held = Store(path)
    held.record(held.start_run({}, None, None), StepResult("a", "passed", "x", cache_key="k"))
    Store(path, readonly=True).close()  # e.g. `%conductor review --store` on the kernel's own store
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from nbconductor.store._sqlite import Store; "
            "s = Store(sys.argv[1]); s.start_run({}, None, None); s.close()",
            str(path),
        ],
        check=True,
    )
    assert (tmp_path / "s.sqlite-wal").exists()  # not deleted while `held` uses it
    held.record(held.start_run({}, None, None), StepResult("b", "passed", "y", cache_key="k2"))
    assert held.lookup("k2").output == "y"
    held.close()


def test_a_store_whose_schema_another_process_commits_mid_check_opens(tmp_path):
    """200 batch rows open one new store at once. A row that read the empty catalog just
    before another row committed the schema, and the table count just after, took the file
    for someone else's database and failed (a lost row in a 200-row batch)."""
    from nbconductor.store._sqlite import _check_tables

    path = tmp_path / "new.sqlite"
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").close()  # created, still empty

    class Interleaved:
        """A connection on which another process commits the schema after each statement."""

        def __init__(self):
            self.db = sqlite3.connect(path, isolation_level=None)

        def execute(self, sql, *args):
            cursor = self.db.execute(sql, *args)
            rows = cursor.fetchall()
            Store(str(path)).close()  # the other process creates the whole schema
            return iter(rows) if not sql.lstrip().upper().startswith("SELECT") else _Rows(rows)

    _check_tables(Interleaved(), str(path), readonly=False)  # no StoreError
    Store(str(path)).close()


class _Rows(list):
    def fetchall(self):
        return list(self)

    def fetchone(self):
        return self[0] if self else None
