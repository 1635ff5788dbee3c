"""The review queue: queue/decide over the store, the widget driven from Python, and the CLI."""

from __future__ import annotations

import json

import pytest
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor.cli import main
from nbconductor.notebook._magics import ConductorMagics
from nbconductor.notebook._review_widget import ReviewWidget, review_widget
from nbconductor.store._history import history
from nbconductor.store._review import ReviewError, decide, queue
from nbconductor.store._sqlite import Store

# Every decision is a row of the store's `reviews` table (who, when, before, after, note), as the
# README documents; the tests read it as a user auditing the store would.
DECISIONS = "SELECT * FROM reviews ORDER BY id"
DECISIONS_OF = "SELECT * FROM reviews WHERE result_id=? ORDER BY id"


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    shell = fresh_shell(tmp_path, monkeypatch)
    shell.run_cell('topic = "pricing pages"\nmarkets = ["fr", "de"]\nlimit = 3')
    yield shell


def magics_of(ip) -> ConductorMagics:
    return ip.user_ns["__nbconductor__"]


def step(ip, line, body):
    with capture_output():
        ip.run_cell_magic("step", line, body)


def flagged_pipeline(ip):
    """draft (flagged by a word limit) → shout (Python, downstream)."""
    step(
        ip,
        "draft --model offline:writer --check max_words(limit) --retries 0",
        "Write about {{ topic }}",
    )
    step(ip, "shout --python", "draft.upper()")
    return magics_of(ip)


def click(button):
    with capture_output():
        button.click()


# the widget in a kernel ---------------------------------------------------------------------
def test_edit_and_approve_replaces_output_and_reruns_downstream(ip):
    m = flagged_pipeline(ip)
    original = ip.user_ns["draft"]
    draft = m.pipeline.results["draft"]
    assert (
        draft.cached and draft.state == "flagged"
    )  # the second cell reused the flagged draft, still flagged
    widget = review_widget(m)
    assert [c.item.step for c in widget.cards] == ["draft"]
    card = widget.cards[0]
    assert (
        card.item.feedback.startswith("max_words(limit): output has ")
        and card.textarea.value == original
    )
    card.textarea.value = "Edited draft. Reply to book a call."
    card.note.value = "tightened"
    click(card.edit_button)
    assert card.error is None, card.error
    assert "edited by" in card.status.value and "re-ran shout" in card.status.value
    assert all(b.disabled for b in card.buttons)
    # the store: the result's state and output, and who/when/before/after of the decision
    row = m.pipeline.store.result(card.item.id)
    assert (row.state, row.output) == ("edited", "Edited draft. Reply to book a call.")
    (rev,) = m.pipeline.store.query(DECISIONS_OF, (card.item.id,))
    assert (rev["decision"], rev["user"], rev["note"]) == (
        "edit",
        m.pipeline.store.user,
        "tightened",
    )
    assert (
        json.loads(rev["before"]) == original
        and json.loads(rev["after"]) == "Edited draft. Reply to book a call."
    )
    assert rev["at"] > 0
    # the kernel: the variable, the results, and the downstream step re-ran on the edited text
    assert ip.user_ns["draft"] == "Edited draft. Reply to book a call."
    assert ip.user_ns["shout"] == "EDITED DRAFT. REPLY TO BOOK A CALL."
    assert m.pipeline.results["shout"].state == "passed"
    assert queue(m.pipeline.store) == []
    assert history(m.pipeline.store, "draft") == ["Edited draft. Reply to book a call."]
    # a later run takes the edited output from the cache instead of paying for a new one
    with capture_output():
        ip.run_line_magic("conductor", "run")
    assert m.pipeline.results["draft"].state == "cached"
    assert ip.user_ns["draft"] == "Edited draft. Reply to book a call."
    assert queue(m.pipeline.store) == []


def test_approve_keeps_output_records_decision_and_is_served_from_cache(ip):
    m = flagged_pipeline(ip)
    original, shouted = ip.user_ns["draft"], ip.user_ns["shout"]
    widget = review_widget(m)
    click(widget.cards[0].approve_button)
    item = widget.cards[0].item
    assert widget.cards[0].error is None and "approved by" in widget.cards[0].status.value
    assert m.pipeline.store.result(item.id).state == "approved"
    assert m.pipeline.store.query(DECISIONS)[0]["decision"] == "approve"
    assert ip.user_ns["draft"] == original and ip.user_ns["shout"] == shouted
    assert history(m.pipeline.store, "draft") == [original]
    # a fresh pipeline on the same store gets the approved output from the cache
    p = Pipeline(store=m.pipeline.store, namespace=dict(ip.user_ns))
    p.step(
        "draft",
        "Write about {{ topic }}",
        model="offline:writer",
        checks=["max_words(limit)"],
        retries=0,
    )
    again = p.run().results["draft"]
    assert again.state == "cached" and again.output == original


def test_reject_records_and_leaves_the_queue(ip):
    m = flagged_pipeline(ip)
    widget = review_widget(m)
    card = widget.cards[0]
    card.note.value = "off-brand"
    click(card.reject_button)
    assert m.pipeline.store.result(card.item.id).state == "rejected"
    assert m.pipeline.store.query(DECISIONS)[0]["note"] == "off-brand"
    assert queue(m.pipeline.store) == [] and history(m.pipeline.store, "draft") == []
    assert "1 of 1" not in widget.header.value and "0 of 1" in widget.header.value


def test_rerun_reruns_the_step_and_supersedes_the_flagged_output(ip):
    m = flagged_pipeline(ip)
    widget = review_widget(m)
    card = widget.cards[0]
    assert not card.rerun_button.disabled
    ip.user_ns["limit"] = 1000  # the fix: a looser limit; Re-run runs the step again
    click(card.rerun_button)
    assert card.error is None, card.error
    assert (
        m.pipeline.results["draft"].state == "passed"
        and m.pipeline.results["draft"].result_id != card.item.id
    )
    assert m.pipeline.store.result(card.item.id).state == "rejected"
    assert m.pipeline.store.query(DECISIONS)[0]["decision"] == "rerun"
    assert queue(m.pipeline.store) == []
    assert ip.user_ns["shout"] == ip.user_ns["draft"].upper()


def test_map_items_are_reviewed_one_by_one_and_the_list_follows(ip):
    step(
        ip,
        'translate --model offline:fast --map "lang in markets" --check "not_contains(\'into de\')" --retries 0',
        "Translate into {{ lang }}: {{ topic }}",
    )
    step(ip, "first_words --python", "[t.split()[0] for t in translate]")
    m = magics_of(ip)
    fr = ip.user_ns["translate"][0]
    widget = review_widget(m)
    assert [c.item.label for c in widget.cards] == [
        "translate[1]"
    ]  # the step-level row is not queued
    card = widget.cards[0]
    card.textarea.value = "Hallo Preisseiten"
    click(card.edit_button)
    assert card.error is None, card.error
    assert ip.user_ns["translate"] == [fr, "Hallo Preisseiten"]
    assert ip.user_ns["first_words"] == [fr.split()[0], "Hallo"]
    step_row = m.pipeline.store.query(
        "SELECT id FROM results WHERE step='translate' AND item IS NULL AND cached=0"
    )[0]
    whole = m.pipeline.store.result(step_row["id"])
    assert whole.state == "edited" and whole.output == [fr, "Hallo Preisseiten"]
    items = m.pipeline.store.query(
        "SELECT parent_id FROM results WHERE step='translate' AND item IS NOT NULL AND cached=0"
    )
    assert [r["parent_id"] for r in items] == [step_row["id"]] * 2  # items point at their step


def test_json_edits_must_be_json_and_become_typed_values(ip):
    step(
        ip,
        'research --model offline:fast --json --check "lambda o: len(o) > 9" --retries 0',
        'List three competitors as JSON: [{"name": ...}]',
    )
    m = magics_of(ip)
    card = review_widget(m).cards[0]
    card.textarea.value = "not json"
    click(card.edit_button)
    assert isinstance(card.error, ReviewError) and "must be JSON" in card.status.value
    assert m.pipeline.store.result(card.item.id).state == "flagged"  # nothing recorded
    card.textarea.value = '[{"name": "Acme"}]'
    click(card.edit_button)
    assert card.error is None and ip.user_ns["research"] == [{"name": "Acme"}]


def test_items_from_another_store_are_decided_there_without_touching_the_kernel(ip, tmp_path):
    batch = tmp_path / "batch.sqlite"
    p = Pipeline(store=batch)
    p.step(
        "draft",
        "Write about {{ topic }}",
        model="offline:writer",
        checks=["max_words(2)"],
        retries=0,
    )
    for topic in ("a", "b"):
        p.run({"topic": topic})
    p.close()
    m = magics_of(ip)
    widget = review_widget(m, str(batch))
    assert widget.kernel is None and len(widget.cards) == 2
    assert [c.item.params for c in widget.cards] == [{"topic": "a"}, {"topic": "b"}]
    assert all(c.rerun_button.disabled for c in widget.cards)
    click(widget.cards[1].approve_button)
    assert "not this kernel's current output" in widget.cards[1].status.value
    assert [i.params for i in queue(Store(batch))] == [{"topic": "a"}]
    assert "draft" not in ip.user_ns
    with pytest.raises(ReviewError, match="no run store"):
        review_widget(m, str(tmp_path / "nope.sqlite"))


def test_widget_has_a_text_and_markdown_fallback(ip):
    m = flagged_pipeline(ip)
    widget = review_widget(m)
    bundle = widget._repr_mimebundle_()
    item = widget.cards[0].item
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert f"#{item.id}" in bundle["text/plain"] and "draft" in bundle["text/plain"]
    assert (
        bundle["text/markdown"].startswith("**Review queue**")
        and "max_words(limit)" in bundle["text/markdown"]
    )
    click(widget.cards[0].approve_button)
    assert "nothing to review" in widget._repr_mimebundle_()["text/plain"]


def test_conductor_review_magic_returns_the_widget(ip):
    flagged_pipeline(ip)
    with capture_output():
        widget = ip.run_line_magic("conductor", "review")
    assert isinstance(widget, ReviewWidget) and len(widget.cards) == 1


# decide() -------------------------------------------------------------------------------------
@pytest.fixture
def store(store_target):
    p = Pipeline(store=store_target)  # SQLite and PostgreSQL
    p.step(
        "draft",
        "Write about {{ topic }}",
        model="offline:writer",
        checks=["max_words(2)"],
        retries=0,
    )
    p.step("ok", "Say hi", model="offline:writer")
    for topic in ("a", "b", "c"):
        p.run({"topic": topic})
    yield p.store
    p.close()


def test_decide_refuses_what_it_cannot_do(store):
    first, second, _ = [i.id for i in queue(store)]
    passed = store.query("SELECT id FROM results WHERE step='ok' AND cached=0")[0]["id"]
    with pytest.raises(ReviewError, match="unknown decision 'maybe'"):
        decide(store, first, "maybe")
    with pytest.raises(ReviewError, match="needs the edited output"):
        decide(store, first, "edit")
    with pytest.raises(ReviewError, match=r"no result #999"):
        decide(store, 999, "approve")
    with pytest.raises(ReviewError, match=r"is passed, not waiting for review"):
        decide(store, passed, "approve")
    decide(store, first, "approve")
    with pytest.raises(
        ReviewError, match=r"already decided by .+ at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(approved\)"
    ):
        decide(store, first, "reject")
    # an "edit" that changes nothing is recorded as an approval
    before = store.result(second).output
    decide(store, second, "edit", before)
    assert (
        store.result(second).state == "approved"
        and store.query(DECISIONS_OF, (second,))[0]["decision"] == "approve"
    )


# the command line ------------------------------------------------------------------------------
def test_cli_lists_the_queue_and_approves_and_rejects_by_id(store, capsys):
    a, b, c = [i.id for i in queue(store)]
    assert main(["review", "--store", store.path]) == 0
    out = capsys.readouterr().out
    assert "id" in out.splitlines()[0] and "parameters" in out.splitlines()[0]
    assert all(f"#{i}" in out for i in (a, b, c)) and "topic=" in out
    assert "max_words(2): output has" in out
    assert (
        main(
            [
                "review",
                "--store",
                store.path,
                "--approve",
                str(a),
                "--reject",
                str(b),
                "--note",
                "batch 7",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"#{a} draft: approved" in out and f"#{b} draft: rejected" in out
    assert [i.id for i in queue(store)] == [c]
    assert {r["note"] for r in store.query(DECISIONS)} == {"batch 7"}
    assert main(["review", "--store", store.path, "--approve", str(a)]) == 2
    assert f"result #{a} (draft) is already decided by" in capsys.readouterr().err


def test_cli_without_a_store_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    assert main(["review"]) == 2
    assert "no run store at" in capsys.readouterr().err
    assert not (tmp_path / ".nbconductor").exists()  # nothing was created
