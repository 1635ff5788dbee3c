"""A real Dask scheduler and worker processes on loopback: `dask_cluster` starts and stops one,
and the ``cluster`` fixture is one with two workers, once per test module that asks for it (a
pytest plugin: `conftest.pytest_plugins`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PASSWORD


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(home: Path, env: dict[str, str], workers: int = 2) -> Iterator[tuple[str, set]]:
    """A scheduler and a worker command with ``workers`` single-threaded worker processes,
    started in ``home`` with ``env``; yields (address, the workers' pids) once all are up."""
    import distributed

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = {"cwd": home, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **common,
        )
    ]
    worker = [*dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1"]
    local = ["--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(home)]
    procs.append(subprocess.Popen([*worker, *local], **common))
    try:
        deadline = time.monotonic() + 120
        client = None
        while client is None:
            try:
                client = distributed.Client(address, timeout=5)
            except OSError:
                assert time.monotonic() < deadline, "the Dask cluster did not start"
                time.sleep(0.5)
        client.wait_for_workers(workers, timeout=120)
        pids = set(client.run(os.getpid).values())
        client.close()
        yield address, pids
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two worker processes, in their own folder with their own TMPDIR: nothing they write is
    visible to the coordinator except through the task results."""
    home = tmp_path_factory.mktemp("dask-workers")
    # the workers' own PostgreSQL password file (for the tests' server's `postgres` user only)
    pgpass = home / ".pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:postgres:{PASSWORD}\n")
    pgpass.chmod(0o600)
    env = {**os.environ, "TMPDIR": str(home), "PGPASSFILE": str(pgpass)}
    for var in ("NBCONDUCTOR_STORE", "ANTHROPIC_API_KEY", "PGPASSWORD"):
        env.pop(var, None)
    with dask_cluster(home, env) as (address, workers):
        yield address, home, workers
