"""The ``cluster`` fixture: a real Dask scheduler and two worker processes on loopback, once per
test module that asks for it (a pytest plugin: `conftest.pytest_plugins`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from pgserver import PASSWORD


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
    import distributed

    home = tmp_path_factory.mktemp("dask-workers")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # the workers' own PostgreSQL password file (for the tests' server's `postgres` user only)
    pgpass = home / ".pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:postgres:{PASSWORD}\n")
    pgpass.chmod(0o600)
    env = {**os.environ, "TMPDIR": str(home), "PGPASSFILE": str(pgpass)}
    env.pop("NBCONDUCTOR_STORE", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("PGPASSWORD", None)
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
