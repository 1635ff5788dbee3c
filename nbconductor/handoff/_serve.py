"""``nbconductor review --serve``: the review queue as a web page, for reviewers without Jupyter.

Voilà (the ``serve`` extra) serves a one-cell notebook that shows the same review cards as
``%conductor review`` on the store (`ReviewPage`), on jupyter_server with its token
authentication: the command prints the URL with the token, and a request without it is
refused. Every page gets its own kernel, started by this one process, so the reviewer names
themself (``&reviewer=NAME`` in the URL, or the page asks). Decisions land in the store (with
claims and "already decided by …" like any reviewer's); nothing of the author's kernel re-runs:
their next run picks up the approved or edited output from the store.

A page whose browser has gone (no connection) for ``$NBCONDUCTOR_SERVE_IDLE`` seconds (default
60) has its kernel stopped, which gives its open item back; without that, every visit would
leave a kernel running until the server stops.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

IDLE_ENV = "NBCONDUCTOR_SERVE_IDLE"

_CELL = """\
import os
from nbconductor.notebook._review_page import ReviewPage, reviewer_from_query
from nbconductor.store._review import open_store

ReviewPage(open_store(os.environ["NBCONDUCTOR_STORE"], readonly=None), reviewer_from_query())
"""


def review_notebook(folder: Path) -> Path:
    """Write the served notebook (one code cell) into ``folder``; returns its path."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "review",
                "metadata": {},
                "outputs": [],
                "source": _CELL,
            }
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = folder / "review.ipynb"
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


def serve(
    store: str | None, *, port: int = 8866, ip: str = "127.0.0.1", token: str | None = None
) -> int:
    """Serve the review queue of ``store`` until interrupted; returns the exit status.

    Raises `ReviewError` when there is no store there, `MissingDependency` without Voilà.
    """
    from .._errors import missing_dependency
    from ..store._base import default_store, is_url, shown
    from ..store._review import open_store

    missing_dependency("voila", "serve", "nbconductor review --serve")
    target = str(store or default_store())
    if not is_url(target):
        target = str(Path(target).resolve())
    open_store(target, readonly=True).close()  # a missing or foreign store: one line, now
    idle = _idle_seconds()
    token = token or secrets.token_urlsafe(24)
    folder = Path(tempfile.mkdtemp(prefix="nbconductor-review-"))
    notebook = review_notebook(folder)
    cmd = [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        f"--port={port}",
        "--no-browser",
        f"--Voila.ip={ip}",
        f"--token={token}",
        "--Voila.port_retries=0",
        # stop the kernels of pages nobody has open any more (a connected page is kept)
        f"--MappingKernelManager.cull_idle_timeout={idle}",
        f"--MappingKernelManager.cull_interval={max(1, idle // 2)}",
        "--MappingKernelManager.cull_connected=False",
    ]
    env = {**page_environ(os.environ), "NBCONDUCTOR_STORE": target}
    proc = subprocess.Popen(cmd, env=env, cwd=folder)
    signal.signal(signal.SIGTERM, _interrupt)  # terminated: stop Voilà too, not orphan it
    print(f"review queue of {shown(target)}: http://{ip}:{port}/?token={token}", flush=True)
    print("each reviewer opens it with &reviewer=NAME added (or types a name on the page)")
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 130


def page_environ(environ) -> dict[str, str]:
    """``environ`` for Voilà and its page kernels: without the secrets they have no use for
    (provider keys, tokens), keeping what libpq reads (``PG*``, e.g. ``PGPASSWORD``)."""
    from .._redact import is_secret_name

    return {k: v for k, v in environ.items() if k.startswith("PG") or not is_secret_name(k)}


def _idle_seconds() -> int:
    """``$NBCONDUCTOR_SERVE_IDLE`` (seconds, default 60); raises `ReviewError` if not a number."""
    from .._errors import ReviewError

    raw = os.environ.get(IDLE_ENV, "60")
    try:
        return max(1, int(float(raw)))
    except ValueError:
        raise ReviewError(f"{IDLE_ENV} must be a number of seconds, not {raw!r}") from None


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
