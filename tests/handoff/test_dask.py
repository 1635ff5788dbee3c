"""``nbconductor batch --dask``: rows as tasks on a real Dask scheduler and worker processes."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import nbformat
import pytest
from dask_cluster import free_port
from jobs import make_job
from pgserver import PASSWORD

pytestmark = pytest.mark.dask

CANARY = "sk-ant-" + "api03-canaryDASKcanary0123456789abcdef"


def test_batch_on_a_dask_cluster(cluster, tmp_path, monkeypatch, capsys):
    from nbconductor.cli import main

    address, worker_home, worker_pids = cluster
    make_job(tmp_path)
    rows = [{"topic": f"topic {i}", "divisor": 0 if i == 2 else i + 1} for i in range(5)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)  # the coordinator's: never sent to the workers
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    code = main(["batch", "job.ipynb", "--params", "rows.json", "--dask", address, "--out", "out"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert f"5 rows of job.ipynb on Dask at {address}" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"]
    assert {int(i): r["status"] for i, r in manifest.items()} == {
        0: "flagged",
        1: "flagged",
        2: "failed",
        3: "flagged",
        4: "flagged",
    }
    assert "ZeroDivisionError" in manifest["2"]["error"]
    # every row ran on a worker process (both were used), none in this process
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in manifest.values()}
    assert pids <= worker_pids and len(pids) == 2 and os.getpid() not in pids
    # the coordinator wrote each row's notebook and the store rows the tasks brought back
    for i in range(5):
        nb = nbformat.read(tmp_path / "out" / f"job-00{i}.ipynb", as_version=4)
        assert nb.metadata.papermill.parameters == rows[i]
    db = sqlite3.connect(tmp_path / ".nbconductor" / "store.sqlite")
    runs = dict(db.execute("SELECT notebook, status FROM runs").fetchall())
    assert runs == {
        str(tmp_path / "out" / f"job-00{i}.ipynb"): ("failed" if i == 2 else "flagged")
        for i in range(5)
    }
    prompts = {r[0] for r in db.execute("SELECT prompt FROM results WHERE step='draft'")}
    assert prompts == {f"Write about topic {i}" for i in range(5)}
    assert db.execute("SELECT COUNT(*) FROM results WHERE state='flagged'").fetchone()[0] == 5
    db.close()
    assert "5 rows: 0 passed, 4 flagged, 1 failed" in out
    # the workers cleaned up after themselves; the canary is in no file the batch wrote
    assert not list(Path(worker_home).glob("nbconductor-row-*"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from nbconductor.cli import main

    make_job(tmp_path)
    (tmp_path / "rows.json").write_text('[{"topic": "x"}]')
    monkeypatch.chdir(tmp_path)
    code = main(
        ["batch", "job.ipynb", "--params", "rows.json", "--dask", f"tcp://127.0.0.1:{free_port()}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler" in err


def _pg_rows(url: str) -> tuple[list[dict], list[dict]]:
    from nbconductor.store._base import connect

    store = connect(url, readonly=True)
    try:
        rows = store.dump(("runs", "results"))
        return rows["runs"], rows["results"]
    finally:
        store.close()


def test_dask_workers_write_to_postgres_themselves_and_resume_from_it(
    cluster, pg_server, tmp_path, monkeypatch, capsys
):
    from nbconductor.cli import main

    address, _, worker_pids = cluster
    url = pg_server.database()  # with its password: the tasks get it without (workers: .pgpass)
    # a secret only the coordinator knows (not key-shaped, so only its environment redacts it)
    secret = "-".join(["coordinator", "only", "value", "7f3a"])
    monkeypatch.setenv("BATCH_DB_PASSWORD", secret)
    make_job(tmp_path)
    rows = [{"topic": f"topic {i}", "divisor": 0 if i == 2 else i + 1} for i in range(5)]
    rows[3]["topic"] = f"topic 3 {secret}"  # this row comes back to be redacted here
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    argv = ["batch", "job.ipynb", "--params", "rows.json", "--dask", address, "--out", "out"]
    assert main([*argv, "--store", url]) == 1
    out, err = capsys.readouterr()
    assert "5 rows: 0 passed, 4 flagged, 1 failed" in out
    assert "cannot write to the store directly" not in err  # the workers found their password
    runs, results = _pg_rows(url)
    assert len(runs) == 5 and {r["pid"] for r in runs} <= worker_pids  # each row once
    drafts = [r for r in results if r["step"] == "draft"]
    assert len(drafts) == 5 and not any(r["cached"] for r in drafts)
    assert sum(r["state"] == "flagged" for r in results) == 5  # the failed row's tagline too
    stored = repr(runs) + repr(results)
    assert secret not in stored and PASSWORD not in stored and "[REDACTED]" in stored
    for text in (out, err, (tmp_path / "out" / "manifest.json").read_text()):
        assert secret not in text and PASSWORD not in text

    # the failed row again: its worker reads the draft it wrote before from the database's cache
    assert main([*argv, "--store", url, "--resume"]) == 1
    out, err = capsys.readouterr()
    assert "resuming: 4 of 5 rows already finished" in err
    runs, results = _pg_rows(url)
    assert len(runs) == 6
    again = [r for r in results if r["run_id"] == max(runs, key=lambda r: r["started"])["id"]]
    assert {r["step"]: bool(r["cached"]) for r in again}["draft"] is True
    assert len([r for r in results if r["step"] == "draft" and not r["cached"]]) == 5


def test_a_worker_without_the_database_password_sends_its_rows_back(
    cluster, pg_server, tmp_path, monkeypatch, capsys
):
    import uuid

    import psycopg

    from nbconductor.cli import main

    address, _, _ = cluster
    role, password = f"alice_{uuid.uuid4().hex[:8]}", "-".join(["alice", "pw", uuid.uuid4().hex])
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {role} OWNER {role}")
    url = f"postgresql://{role}:{password}@127.0.0.1:{pg_server.port}/{role}"  # not in .pgpass
    make_job(tmp_path)
    (tmp_path / "rows.json").write_text(json.dumps([{"topic": f"t{i}"} for i in range(3)]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    argv = ["batch", "job.ipynb", "--params", "rows.json", "--dask", address, "--out", "out"]
    assert main([*argv, "--store", url]) == 0
    out, err = capsys.readouterr()
    assert "3 rows: 0 passed, 3 flagged, 0 failed" in out
    note = [line for line in err.splitlines() if "cannot write to the store directly" in line]
    assert len(note) == 1 and "no password supplied" in note[0], err  # said once
    assert f"{role}@127.0.0.1" in note[0] and password not in out + err
    runs, results = _pg_rows(url)  # the coordinator merged what the tasks brought back
    assert len(runs) == 3 and len([r for r in results if r["step"] == "draft"]) == 3
