"""``nbconductor batch --dask``: rows as tasks on a real Dask scheduler and worker processes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import distributed
import nbformat
import pytest

from nbconductor import Pipeline
from nbconductor.handoff._export import export_pipeline

pytestmark = pytest.mark.dask

CANARY = "sk-ant-" + "api03-canaryDASKcanary0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and a worker command with two single-threaded worker processes, on loopback.

    The workers run in their own folder with their own TMPDIR: nothing they write is visible to
    the coordinator except through the task results.
    """
    home = tmp_path_factory.mktemp("dask-workers")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "TMPDIR": str(home)}
    env.pop("NBCONDUCTOR_STORE", None)
    env.pop("ANTHROPIC_API_KEY", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(home),
            ],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        deadline = time.monotonic() + 90
        client = None
        while client is None:
            try:
                client = distributed.Client(address, timeout=5)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        client.wait_for_workers(2, timeout=90)
        workers = set(client.run(os.getpid).values())
        client.close()
        yield address, home, workers
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def make_job(folder: Path) -> Path:
    p = Pipeline(store=":memory:", namespace={"topic": "t", "divisor": 1})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("ratio", "len(draft) // divisor", python=True)
    p.step(
        "tagline",
        "One line on {{ topic }}",
        model="offline:t",
        checks=["max_words(1)"],
        retries=0,
        on_fail="review",
    )
    return export_pipeline(p, folder / "job.ipynb")


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
