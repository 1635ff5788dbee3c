"""``nbconductor review --serve``: Voilà started as a process on a free port, token auth.

What a browser then does with the page (two reviewers clicking) is for tests/browser; here:
the URL printed with its token serves the queue's widgets, a request without the token or
with a wrong one is refused, and the store's password never reaches the page or the output.
"""

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

from test_review_team import flagged_store


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a refusal redirects to the login page: keep its 302


_OPEN = urllib.request.build_opener(_NoRedirect)


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPEN.open(url, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_review_serve_needs_its_token_and_shows_the_queue(store_target):
    store, ids = flagged_store(store_target, 2)
    store.close()
    port = _free_port()
    argv = ["review", "--serve", "--port", str(port), "--store", store_target]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbconductor", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert match, line
        base, token = match.groups()
        deadline = time.time() + 120
        while True:  # until Voilà listens
            try:
                _get(base + "api/status")
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "voila did not start"
                time.sleep(0.5)
        refused = (302, 401, 403)  # jupyter_server sends a request without the token to /login
        assert _get(base)[0] in refused
        assert _get(base + "?token=wrong-token")[0] in refused
        status, page = _get(f"{base}?token={token}")
        assert status == 200
        # the executed notebook's output is in the page: the queue with both drafts
        assert "Review queue" in page
        assert f"| #{ids[0]} | draft |" in page and f"| #{ids[1]} | draft |" in page
        assert "pg-test-secret" not in page + line
    finally:
        proc.terminate()
        proc.wait(30)
