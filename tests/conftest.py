"""Shared fixtures.

- ``fake_api``: the loopback fake of the Anthropic / OpenAI HTTP APIs (tests/fakeapi.py),
  started for one test, with the official SDKs pointed at it the way a user would point
  them at a proxy — ``ANTHROPIC_BASE_URL`` / ``OPENAI_BASE_URL`` — and fake keys in
  ``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``. The test fails if the fake itself hit a bug.
- ``fast_config``: a `Config` whose retry backoff and read timeout are short, for tests.
- the whole session (set when pytest starts, so example notebooks under nbval and every
  kernel or Jupyter server a test starts inherit it): ``JUPYTER_DATA_DIR``,
  ``JUPYTER_RUNTIME_DIR`` and ``IPYTHONDIR`` point into a temporary directory removed at the
  end, so no test writes to ``~/.local/share/jupyter`` or ``~/.ipython``.
- every test: ``sys.modules["__main__"]`` is put back afterwards. An IPython
  ``InteractiveShell`` replaces it with its user module, and multiprocessing's spawn start
  method (used by later tests) cannot start workers from that.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest
from fakeapi import FakeAPI

# third-party notebooks the engine tests execute themselves; not examples for nbval
collect_ignore_glob = ["fixtures/*"]

# fixtures shared by the tests of several folders
pytest_plugins = ["dask_cluster", "snapshots"]

# built at runtime so that no key-shaped literal is committed
FAKE_ANTHROPIC_KEY = "-".join(["sk", "ant", "test", "key", "0" * 16])
FAKE_OPENAI_KEY = "-".join(["sk", "test", "key", "0" * 20])


#: the user-level directories Jupyter and IPython write to, and their place under the session's
#: temporary directory
ISOLATED_DIRS = {
    "JUPYTER_DATA_DIR": "data",
    "JUPYTER_RUNTIME_DIR": "runtime",
    "IPYTHONDIR": "ipython",
}


def pytest_configure(config):
    """Point Jupyter's and IPython's user directories into a temporary directory."""
    root = tempfile.mkdtemp(prefix="nbc-test-home-")
    for var, sub in ISOLATED_DIRS.items():
        os.environ[var] = os.path.join(root, sub)
    # at exit, after IPython's own atexit hook has closed its history database there
    atexit.register(shutil.rmtree, root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_main_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


@pytest.fixture
def fake_api(monkeypatch):
    api = FakeAPI().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.anthropic_base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", api.openai_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    for var in ("ANTHROPIC_AUTH_TOKEN", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield api
    finally:
        api.stop()
    assert api.errors == [], f"the fake API hit errors: {api.errors}"


@pytest.fixture
def fast_config():
    """Retries back off for milliseconds; a stream stalls out after 0.5 s."""
    from nbconductor._config import Config, RetryPolicy

    return Config(
        retry=RetryPolicy(
            base_delay=0.01, max_delay=0.05, max_retry_after=5.0, cooldown=60.0, cooldown_after=3
        ),
        timeout=20.0,
        read_timeout=0.5,
    )


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (tests/pgserver.py), started once for the session."""
    from pgserver import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request, tmp_path, monkeypatch):
    """A new, empty run store on each backend: an SQLite path, or a PostgreSQL database URL
    (without its password: libpq reads it from PGPASSWORD, as a user would set it)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    from pgserver import PASSWORD

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    return request.getfixturevalue("pg_server").database().replace(f":{PASSWORD}@", "@")
