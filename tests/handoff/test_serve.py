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

import pytest
from stores import flagged_store

from nbconductor._errors import ReviewError


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


# the page's logic, driven from Python (what the browser test clicks) -------------------------
def test_the_reviewer_is_named_in_the_url_or_on_the_page(store_target):
    from nbconductor.notebook._review_page import ReviewPage, check_name, reviewer_from_query
    from nbconductor.store._base import connect

    assert reviewer_from_query("token=t0k&reviewer=ana") == "ana"
    assert reviewer_from_query("token=t0k") is None and reviewer_from_query("reviewer=") is None
    for bad in ("", "ben smith!", "<b>x</b>", "a" * 65):
        with pytest.raises(ReviewError, match="a reviewer name is 1-64 letters"):
            check_name(bad)
    store, ids = flagged_store(store_target, 2)
    page = ReviewPage(connect(store_target))
    assert page.review is None  # no name yet: the page asks
    assert page.start("ben smith!") is None and "a reviewer name is" in page.status.value
    review = page.start("cleo")
    assert review.store.user == "cleo" and review.open.item.id == ids[0]
    assert "reviewing as <b>cleo</b>" in review.whoami.value
    review.leave()


def test_two_served_pages_claim_skip_and_race(store_target):
    from IPython.utils.capture import capture_output

    from nbconductor.notebook._review_page import ServedReview
    from nbconductor.store._base import connect

    store, ids = flagged_store(store_target, 3)
    ana = ServedReview(connect(store_target), "ana")
    ben = ServedReview(connect(store_target), "ben")
    assert (ana.open.item.id, ben.open.item.id) == (ids[0], ids[1])
    assert "being reviewed by ana" in ben.card(ids[0]).header.value
    assert "open: yours until" in ben.card(ids[1]).header.value
    assert ben.box.children[2] is ben.card(ids[1]).box  # the open card first
    ben.skip()
    assert ben.open.item.id == ids[2] and "open: yours" not in ben.card(ids[1]).header.value
    claims = {r["result_id"]: r["user"] for r in store.query("SELECT * FROM claims")}
    assert claims == {ids[0]: "ana", ids[2]: "ben"}
    with capture_output():
        ana.card(ids[0]).approve_button.click()
    assert "approved by ana" in ana.card(ids[0]).status.value and ana.open.item.id == ids[1]
    with capture_output():  # ben's card is stale: his approve is the racing second decision
        ben.card(ids[0]).approve_button.click()
    assert re.fullmatch(
        rf"result #{ids[0]} \(draft\) is already decided by ana at \S+ \S+ \(approved\)",
        str(ben.card(ids[0]).error),
    )
    assert ben.card(ids[0]).decision == "approved" and ben.card(ids[0]).approve_button.disabled
    ben.leave()  # his page's kernel stops: the open item is given back
    assert [r["user"] for r in store.query("SELECT * FROM claims")] == ["ana"]
    assert [r["user"] for r in store.query('SELECT "user" FROM reviews')] == ["ana"]
    ana.leave()
    assert store.query("SELECT * FROM claims") == []


def test_the_page_kernels_get_no_provider_keys():
    from nbconductor.handoff._serve import page_environ

    key = "sk-ant-" + "x" * 24
    env = page_environ(
        {"ANTHROPIC_API_KEY": key, "GITHUB_TOKEN": "t" * 20, "PGPASSWORD": "pw", "HOME": "/h"}
    )
    assert env == {"PGPASSWORD": "pw", "HOME": "/h"}


def test_the_page_offers_the_blind_pairwise_review_once_per_pair(store_target):
    from nbconductor import Pipeline
    from nbconductor.notebook._review_page import ReviewPage
    from nbconductor.store._base import connect
    from nbconductor.store._experiments import experiment_prefs

    p = Pipeline(store=store_target)
    p.step("draft", "Draft on {{ topic }}", model="offline:writer", lazy=True)
    p.variant("draft", "concise", "CONCISE draft on {{ topic }}")
    rows = [{"topic": "t0"}, {"topic": "t1"}]
    experiment = p.compare("draft", rows, pairwise="offline:judge").experiment_id
    p.store.close()
    page = ReviewPage(connect(store_target), "ana")
    shown = page._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert shown == page.box.model_id and page.pairwise.box in page.box.children
    ana = page.pairwise
    ben = ReviewPage(connect(store_target), "ben").pairwise
    assert "Blind comparison" in ana.box.children[0].value and len(ana.tasks) == 2
    assert ana.status.value == ""  # blind: the names show once chosen
    first = ana.current
    ana.choose("A")
    assert "A was " in ana.status.value and "(by ana)" in ana.status.value
    ben.tasks.sort(key=lambda t: t.row_index != first.row_index)  # ben has the same pair open
    assert ben.choose("B") == "" and "is decided" in ben.status.value
    assert len(ben.tasks) == 1  # ben moves on to the other pair
    prefs = experiment_prefs(connect(store_target), experiment)
    assert [(x["row_index"], x["reviewer"]) for x in prefs] == [(first.row_index, "ana")]
