"""``nbconductor review --serve`` in Chromium: two reviewers on one queue, on both backends.

The queue comes from real runs (the offline provider, a word limit that flags every draft);
``nbconductor review --serve`` runs as a process (Voilà on jupyter_server, token auth); two
browser contexts are two reviewers, ana (named in the URL) and ben (typing his name on the
page), working at once. What they see — claims, "being reviewed by", "already decided by" —
and what the store holds afterwards are checked, then the author's next run picks up the
decisions. Screenshots of both reviewers go to tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nbconductor import Pipeline
from nbconductor.store._base import connect

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

TOPICS = ["pricing", "onboarding", "churn", "support", "billing", "refunds"]
EDITED = "Pricing pages: one plan, one price. Edited by ana."
WAIT = 90_000  # ms: a page's kernel starts on a loaded 2-core machine


def author_pipeline(store: str) -> Pipeline:
    """The author's pipeline: a draft that a 3-word limit flags for review."""
    p = Pipeline(store=store)
    p.step(
        "draft",
        "Write a short note about {{ topic }}",
        model="offline:writer",
        checks=["max_words(3)"],
        retries=0,
    )
    return p


def flagged_by_runs(store: str) -> list[int]:
    """One real run per topic; returns the flagged drafts' result ids, in topic order."""
    p = author_pipeline(store)
    ids = []
    for topic in TOPICS:
        run = p.run({"topic": topic})
        assert run.status == "flagged", run.summary()
        ids.append(run.results["draft"].result_id)
    # and a compare with a pairwise judge: its pairs wait for a person's blind preference
    p.step("draft", "Draft on {{ topic }}", model="offline:writer", lazy=True)
    p.variant("draft", "concise", "CONCISE draft on {{ topic }}")
    p.compare("draft", [{"topic": "t0"}, {"topic": "t1"}], pairwise="offline:judge")
    p.store.close()
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_open(result_id: int) -> re.Pattern:
    """The class list of the card of ``result_id`` (the open card has ``nbc-review-open``)."""
    return re.compile(rf"(^|\s)nbc-review-{result_id}(\s|$)")


class Served:
    """``nbconductor review --serve`` as a process: its base URL, token and log."""

    def __init__(self, store: str, log: Path):
        self.log = log
        port = _free_port()
        argv = ["review", "--serve", "--port", str(port), "--store", store]
        # the server's own user is nobody's reviewer name: each page says who reviews
        env = {**os.environ, "NBCONDUCTOR_USER": "server-owner"}
        env["NBCONDUCTOR_SERVE_IDLE"] = "15"  # a page left for 15 s is stopped
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nbconductor", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 120
        while not (match := re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        self.base, self.token = match.groups()
        while True:  # until Voilà listens
            try:
                urllib.request.urlopen(self.base + "api/status", timeout=10).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (403 without the token)
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)

    def url(self, **query: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"{self.base}?token={self.token}{extra}"

    def stop(self) -> None:
        self.proc.terminate()  # review --serve stops Voilà, which shuts the page kernels down
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Reviewer:
    """One reviewer's page: cards by result id, their buttons and status lines."""

    def __init__(self, browser, name: str, tag: str):
        self.name, self.tag = name, tag
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.context.set_default_timeout(WAIT)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))

    def card(self, result_id: int):
        return self.page.locator(f".nbc-review-{result_id}")

    def click(self, result_id: int, button: str, note: str = "", text: str | None = None):
        card = self.card(result_id)
        if text is not None:
            card.locator("textarea").fill(text)
        if note:
            card.locator("input[type=text]").fill(note)
        self.button(result_id, button).click()

    def button(self, result_id: int, title: str):
        # by its title: an icon's glyph is part of a button's accessible name
        return self.card(result_id).locator(f"button[title='{title}']")

    def status(self, result_id: int):
        return self.card(result_id).locator(".nbc-review-status")

    def screenshot(self, stage: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"review-serve-{self.tag}-{self.name}-{stage}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def decisions(store: str) -> dict[int, tuple]:
    """result id -> every (decision, user, note) recorded for it, and the result's state."""
    s = connect(store)
    try:
        out: dict[int, tuple] = {}
        for r in s.query('SELECT result_id, decision, "user", note FROM reviews ORDER BY id'):
            out.setdefault(r["result_id"], []).append((r["decision"], r["user"], r["note"]))
        states = {r["id"]: r["state"] for r in s.query("SELECT id, state FROM results")}
        claims = {
            r["result_id"]: r["user"] for r in s.query('SELECT result_id, "user" FROM claims')
        }
        prefs = [r["reviewer"] for r in s.query("SELECT reviewer FROM experiment_prefs")]
        return {"reviews": out, "states": states, "claims": claims, "preferences": prefs}
    finally:
        s.close()


def test_two_reviewers_share_the_served_queue(browser, store_target, request):
    from playwright.sync_api import expect

    tag = request.node.callspec.id
    for old in ARTIFACTS.glob(f"review-serve-{tag}-*"):
        old.unlink()  # this run's screenshots only
    i1, i2, i3, i4, i5, i6 = flagged_by_runs(store_target)
    served = Served(store_target, ARTIFACTS / f"review-serve-{tag}.log")
    people: list[Reviewer] = []
    try:
        # -- no token, or a wrong one: the login page, nothing of the queue -------------------
        stranger = Reviewer(browser, "stranger", tag)
        people.append(stranger)
        for url in (served.base, served.base + "?token=not-the-token&reviewer=eve"):
            stranger.page.goto(url)
            assert "/login" in stranger.page.url
            assert "Review queue" not in stranger.page.content()
            assert "pricing" not in stranger.page.content()
        for path in ("", "?token=not-the-token", "api/kernels"):  # refused before any page
            answer = stranger.page.request.get(served.base + path, max_redirects=0)
            assert answer.status in (302, 403), (path, answer.status)
            assert answer.status == 403 or "/login" in answer.headers["location"]
        stranger.context.close()
        people.remove(stranger)

        # -- ana opens the page with her name in the URL: the first item is hers -------------
        ana = Reviewer(browser, "ana", tag)
        ben = Reviewer(browser, "ben", tag)
        people += [ana, ben]
        ana.page.goto(served.url(reviewer="ana"))
        expect(ana.page.locator(".nbc-review-open")).to_have_class(is_open(i1))
        expect(ana.card(i1)).to_contain_text("open: yours until")
        expect(ana.page.locator(".nbc-review-whoami")).to_contain_text("reviewing as ana")

        # -- ben types his name (a bad one first); he sees ana's claim and gets the next ------
        ben.page.goto(served.url())
        ben.page.get_by_placeholder("your name").fill("ben smith!")
        ben.page.get_by_role("button", name="Start reviewing").click()
        expect(ben.page.get_by_text("a reviewer name is 1-64 letters")).to_be_visible()
        ben.page.get_by_placeholder("your name").fill("ben")
        ben.page.get_by_role("button", name="Start reviewing").click()
        expect(ben.page.locator(".nbc-review-open")).to_have_class(is_open(i2))
        expect(ben.card(i1)).to_contain_text("being reviewed by ana")
        assert decisions(store_target)["claims"] == {i1: "ana", i2: "ben"}

        # ben skips i2: he gets i3, i2 is free again
        ben.page.get_by_role("button", name="Skip").click()
        expect(ben.page.locator(".nbc-review-open")).to_have_class(is_open(i3))
        assert decisions(store_target)["claims"] == {i1: "ana", i3: "ben"}
        expect(ben.card(i2)).not_to_contain_text("open: yours")
        ana.page.get_by_role("button", name="Refresh").click()
        expect(ana.card(i3)).to_contain_text("being reviewed by ben")
        ana.screenshot("claims")
        ben.screenshot("claims")

        # -- ana edits and approves i1; her page opens the next free item (i2) ----------------
        ana.click(i1, "Edit & approve", note="tightened", text=EDITED)
        expect(ana.status(i1)).to_have_text(
            "edited by ana (in the store: the author's next run uses it)"
        )
        expect(ana.page.locator(".nbc-review-open")).to_have_class(is_open(i2))

        # -- ben's page still shows i1 as ana's: his racing approve gets one line -------------
        ben.click(i1, "Approve")
        expect(ben.status(i1)).to_have_text(
            re.compile(
                rf"^result #{i1} \(draft\) is already decided by ana at "
                r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(edited\)$"
            )
        )
        expect(ben.button(i1, "Approve")).to_be_disabled()

        # -- ben approves i3 with a note, and gets i4 ----------------------------------------
        ben.click(i3, "Approve", note="fine as is")
        expect(ben.status(i3)).to_contain_text("approved by ben")
        expect(ben.page.locator(".nbc-review-open")).to_have_class(is_open(i4))

        # -- ana tries ben's open item: refused, one line; then rejects hers ------------------
        ana.click(i4, "Reject")
        expect(ana.status(i4)).to_have_text(
            re.compile(rf"^result #{i4} \(draft\) is being reviewed by ben until \d\d:\d\d:\d\d$")
        )
        expect(ana.card(i4)).to_contain_text("being reviewed by ben")
        ana.click(i2, "Reject", note="off-brand")
        expect(ana.status(i2)).to_contain_text("rejected by ana")
        expect(ana.page.locator(".nbc-review-open")).to_have_class(is_open(i5))

        ben.click(i4, "Approve")
        expect(ben.status(i4)).to_contain_text("approved by ben")
        expect(ben.page.locator(".nbc-review-open")).to_have_class(is_open(i6))
        ben.screenshot("decided")

        # -- ben leaves with i6 open: his page's kernel stops and gives it back -------------
        ben.context.close()
        people.remove(ben)
        deadline = time.monotonic() + 120
        while decisions(store_target)["claims"].get(i6) == "ben":
            assert time.monotonic() < deadline, "ben's claim outlived his page"
            time.sleep(1)

        ana.click(i5, "Approve")
        expect(ana.status(i5)).to_contain_text("approved by ana")
        expect(ana.page.locator(".nbc-review-open")).to_have_class(is_open(i6))
        ana.click(i6, "Approve")
        expect(ana.status(i6)).to_contain_text("approved by ana")
        expect(ana.page.locator(".nbc-review-title")).to_contain_text("0 of 6 flagged outputs")
        expect(ana.page.locator(".nbc-review-whoami")).to_contain_text("nothing free to open")
        # -- the blind pairwise review under the queue --------------------------------------
        pairwise = ana.page.locator(".nbc-pairwise")
        expect(pairwise).to_contain_text("Blind comparison")
        pairwise.locator("button[title='A is better']").click()
        expect(pairwise).to_contain_text("A was ")
        expect(pairwise).to_contain_text("(by ana)")
        ana.screenshot("decided")
        assert "server-owner" not in ana.page.content()
    except Exception:
        for who in people:
            try:
                who.screenshot("FAILED")
            except Exception:  # noqa: BLE001 - a crashed page must not hide the test's own error
                pass
            (ARTIFACTS / f"review-serve-{tag}-{who.name}-FAILED.console.txt").write_text(
                "\n".join(who.console)
            )
        raise
    finally:
        for who in people:
            who.context.close()
        served.stop()

    # -- the store: each item decided exactly once, by whom the pages said ------------------
    got = decisions(store_target)
    assert got["reviews"] == {
        i1: [("edit", "ana", "tightened")],
        i2: [("reject", "ana", "off-brand")],
        i3: [("approve", "ben", "fine as is")],
        i4: [("approve", "ben", "")],
        i5: [("approve", "ana", "")],
        i6: [("approve", "ana", "")],
    }
    states = [got["states"][i] for i in (i1, i2, i3, i4, i5, i6)]
    assert states == ["edited", "rejected", "approved", "approved", "approved", "approved"]
    assert got["claims"] == {}
    assert got["preferences"] == ["ana"]

    # -- the author's next run: edited and approved drafts from the store, rejected re-made --
    p = author_pipeline(store_target)
    runs = {topic: p.run({"topic": topic}).results["draft"] for topic in TOPICS}
    assert (runs["pricing"].state, runs["pricing"].output) == ("cached", EDITED)
    for topic in ("churn", "support", "billing", "refunds"):
        assert runs[topic].state == "cached" and runs[topic].output.startswith("[offline:writer]")
    assert runs["onboarding"].state == "flagged" and not runs["onboarding"].cached
    p.store.close()
