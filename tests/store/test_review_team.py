"""Several reviewers on one queue (both backends): claims, assignments, atomic decisions under
races between threads and between processes, decisions per reviewer; and `store copy`."""

import multiprocessing as mp
import random
import threading
import time

import pytest
from stores import as_user, flagged_store

from nbconductor._errors import ReviewError, StoreError
from nbconductor._types import StepResult
from nbconductor.cli import main
from nbconductor.store._base import connect
from nbconductor.store._claims import assign, claim, next_item
from nbconductor.store._copy import copy_store
from nbconductor.store._report import report
from nbconductor.store._review import decide, queue

# Every decision is a row of the store's `reviews` table (who, when, before, after, note), as the
# README documents; the tests read it as a user auditing the store would.
DECISIONS = "SELECT * FROM reviews ORDER BY id"
DECISIONS_OF = "SELECT * FROM reviews WHERE result_id=? ORDER BY id"


def test_an_open_item_is_claimed_and_others_skip_to_the_next(store_target):
    store, ids = flagged_store(store_target, 3)
    ana, ben = as_user(store_target, "ana"), as_user(store_target, "ben")
    first = next_item(ana, "ana")
    assert first.id == ids[0] and first.claimed_by == "ana"
    # ben sees who has it and gets the next one
    assert {i.id: i.claimed_by for i in queue(ben)}[ids[0]] == "ana"
    assert next_item(ben, "ben").id == ids[1]
    with pytest.raises(ReviewError, match=rf"#{ids[0]} \(draft\) is being reviewed by ana until"):
        decide(ben, ids[0], "approve")
    with pytest.raises(ReviewError, match="being reviewed by ana"):
        claim(ben, ids[0], "ben")
    decide(ana, ids[0], "approve")  # the claimant decides; the claim goes with the decision
    assert not ana.query("SELECT * FROM claims WHERE result_id=?", (ids[0],))


def test_a_claim_expires_when_its_reviewer_leaves(store_target):
    store, ids = flagged_store(store_target, 1)
    ana, ben = as_user(store_target, "ana"), as_user(store_target, "ben")
    claim(ana, ids[0], "ana", minutes=0.002)  # 0.12 s
    assert next_item(ben, "ben") is None  # being reviewed: nothing free
    time.sleep(0.3)
    assert next_item(ben, "ben").id == ids[0]  # ana left: ben takes it over
    decide(ben, ids[0], "reject")
    assert store.query(DECISIONS_OF, (ids[0],))[0]["user"] == "ben"


def test_claiming_an_item_decided_a_moment_ago_says_who_and_leaves_no_claim(store_target):
    store, ids = flagged_store(store_target, 1)
    ana, ben = as_user(store_target, "ana"), as_user(store_target, "ben")
    decide(ana, ids[0], "approve")  # ben's page still shows the card
    with pytest.raises(ReviewError, match=rf"#{ids[0]} \(draft\) is already decided by ana at"):
        claim(ben, ids[0], "ben")
    assert not store.query("SELECT * FROM claims")


def test_assign_round_robin_mine_and_decisions_per_reviewer(store_target, monkeypatch, capsys):
    store, ids = flagged_store(store_target, 5)
    path = store_target
    assert main(["review", "--store", path, "--assign", "ana,ben"]) == 0
    assert "assigned: 3 to ana, 2 to ben" in capsys.readouterr().out
    assert [i.id for i in queue(store, mine=True, user="ben")] == [ids[1], ids[3]]
    monkeypatch.setenv("NBCONDUCTOR_USER", "ben")
    assert main(["review", "--store", path, "--mine"]) == 0
    out = capsys.readouterr().out
    assert f"#{ids[1]}" in out and f"#{ids[0]} " not in out and "assigned to ben" in out
    assert main(["review", "--store", path, "--next", "--mine"]) == 0
    assert f"claimed #{ids[1]} for ben until" in capsys.readouterr().out
    assert main(["review", "--store", path, "--approve", str(ids[1])]) == 0
    assert f"#{ids[1]} draft: approved by ben" in capsys.readouterr().out
    monkeypatch.setenv("NBCONDUCTOR_USER", "ana")
    assert main(["review", "--store", path, "--reject", str(ids[0]), "--approve", str(ids[2])]) == 0
    by = report(path)["totals"]["decisions_by_reviewer"]
    assert by == {"ana": {"approve": 1, "reject": 1}, "ben": {"approve": 1}}
    capsys.readouterr()
    assert main(["report", "--store", path]) == 0
    assert "decisions by reviewer: ana 2 (1 approve, 1 reject); ben 1 (1 approve)" in (
        capsys.readouterr().out
    )


def test_racing_threads_decide_each_item_exactly_once(store_target):
    store, ids = flagged_store(store_target, 20)
    done, refused, errors = [], [], []

    def reviewer(name):
        mine = as_user(store_target, name)
        order = ids[:]
        random.Random(name).shuffle(order)
        for rid in order:
            try:
                decide(mine, rid, random.choice(["approve", "reject"]))
                done.append(rid)
            except ReviewError as exc:
                refused.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - a deadlock or lock error fails the test
                errors.append(repr(exc))
        mine.close()

    threads = [threading.Thread(target=reviewer, args=(f"r{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(done) == sorted(ids)  # each decided once
    assert len(refused) == 3 * len(ids) and all("already decided by r" in m for m in refused)
    assert store.count("reviews") == len(ids)
    print(f"threads: {4 * len(ids)} attempted, {len(done)} recorded, {len(refused)} refused")


def _race(target, user, ids, out):
    import os

    os.environ["NBCONDUCTOR_USER"] = user
    store = connect(target)
    won = 0
    for rid in ids:
        try:
            decide(store, rid, "approve")
            won += 1
        except ReviewError:
            pass
    store.close()
    out.put(won)


def test_racing_processes_decide_each_item_exactly_once(store_target):
    store, ids = flagged_store(store_target, 30)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(store_target, f"p{k}", ids, out)) for k in range(3)]
    for p in procs:
        p.start()
    wins = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(wins) == len(ids) and store.count("reviews") == len(ids)
    users = {r["user"] for r in store.query(DECISIONS)}
    assert users <= {"p0", "p1", "p2"} and not queue(store)
    print(f"processes: {3 * len(ids)} attempted, {sum(wins)} recorded")


def test_copy_moves_every_row_both_ways_and_refuses_a_full_store(
    store_target, pg_server, tmp_path, capsys
):
    store, ids = flagged_store(store_target, 4)
    as_user(store_target, "ana") and decide(as_user(store_target, "ana"), ids[0], "edit", "short")
    assign(store, ["ben"])
    claim(store, ids[2], "cat")
    other = str(tmp_path / "copy.sqlite") if "://" in store_target else pg_server.database()
    assert main(["store", "copy", store_target, other]) == 0
    out = capsys.readouterr().out
    assert "1 runs, 4 results, 1 reviews, 1 claims, 3 assignments" in out
    copied = connect(other)
    assert [r["step"] for r in copied.results()] == ["draft"] * 4
    assert copied.result(ids[0]).output == "short" and copied.result(ids[0]).state == "edited"
    assert [i.id for i in queue(copied, mine=True, user="ben")] == ids[1:]
    assert main(["store", "copy", store_target, other]) == 2
    assert "is not empty (1 runs, 4 results" in capsys.readouterr().err
    assert main(["store", "copy", store_target, other, "--merge"]) == 0
    assert copied.count("results") == 8 and copied.count("runs") == 1
    assert copied.count("reviews") == 2  # the merged review follows its result's new id
    merged = copied.query("SELECT result_id FROM reviews ORDER BY id")
    assert merged[0]["result_id"] == ids[0] and merged[1]["result_id"] > max(ids)
    # a new record after the copy gets a fresh id (the PostgreSQL sequence moved on)
    run = copied.start_run({}, None, None)
    assert copied.record(run, StepResult("x", "passed", "y")) > merged[1]["result_id"]


def test_copy_moves_the_experiment_tables_and_counts_them(
    store_target, pg_server, tmp_path, capsys
):
    from nbconductor.store._audit import add_audit
    from nbconductor.store._experiments import (
        experiment_cells,
        experiment_pairs,
        experiment_prefs,
        experiments,
        record_cell,
        record_pair,
        record_preference,
        save_experiment,
    )

    store, ids = flagged_store(store_target, 3)
    save_experiment(store, "e1", "draft", ["base", "short"], 2, 1, "nb.ipynb", "finished", {"k": 1})
    for row in range(2):
        for n, variant in enumerate(("base", "short")):
            cell = {"row_index": row, "variant": variant, "repeat_index": 0, "run_id": "r"}
            cell |= {"result_id": ids[n], "state": "passed", "first_pass": True, "score": 4.0}
            record_cell(store, "e1", cell | {"output": f"{variant} {row}", "gates": ["ok"]})
        pair = {"row_index": row, "variant": "short", "vs": "base", "judge": "j"}
        record_pair(store, "e1", pair | {"winner": "short", "flipped": row == 1, "reasons": ["r"]})
    assert record_preference(store, "e1", 0, "short", "base", "tie", "base")
    add_audit(store, ids[1], "draft", 0.5)
    add_audit(store, ids[2], "draft", 0.5)
    other = str(tmp_path / "copy.sqlite") if "://" in store_target else pg_server.database()
    assert main(["store", "copy", store_target, other]) == 0
    out = capsys.readouterr().out
    assert (
        "1 experiments, 4 experiment_cells, 2 experiment_pairs, 1 experiment_prefs, 2 audits" in out
    )
    copied = connect(other)
    assert [(e["id"], e["variants"], e["summary"]) for e in experiments(copied)] == [
        ("e1", ["base", "short"], {"k": 1})
    ]
    assert experiment_cells(copied, "e1") == experiment_cells(store, "e1")
    assert experiment_pairs(copied, "e1") == experiment_pairs(store, "e1")
    assert experiment_prefs(copied, "e1") == experiment_prefs(store, "e1")
    audited = copied.query("SELECT result_id, status FROM audits ORDER BY result_id")
    assert [(r["result_id"], r["status"]) for r in audited] == [(ids[1], "open"), (ids[2], "open")]
    # a merge replaces the experiment rows by key and moves audits with their results' new ids
    assert main(["store", "copy", store_target, other, "--merge"]) == 0
    assert copied.count("experiment_cells") == 4 and copied.count("experiment_prefs") == 1
    audited = [r["result_id"] for r in copied.query("SELECT result_id FROM audits")]
    assert len(audited) == 4 and sorted(audited)[2] > max(ids)
    moved = copied.query("SELECT step FROM results WHERE id=?", (sorted(audited)[2],))
    assert moved[0]["step"] == "draft"


def test_copy_from_nowhere_is_one_line(tmp_path, capsys):
    assert main(["store", "copy", str(tmp_path / "none.sqlite"), str(tmp_path / "b.sqlite")]) == 2
    assert "no run store at" in capsys.readouterr().err
    with pytest.raises(StoreError):
        copy_store(str(tmp_path), str(tmp_path / "b.sqlite"))


def test_the_notebook_widget_shows_who_has_an_item_open_and_refuses_it(store_target):
    from nbconductor.notebook._review_widget import ReviewWidget

    store, ids = flagged_store(store_target, 2)
    claim(as_user(store_target, "ana"), ids[0], "ana")
    widget = ReviewWidget(as_user(store_target, "ben"))
    first, second = widget.cards
    assert "being reviewed by ana" in first.header.value
    assert "being reviewed" not in second.header.value
    first.approve_button.click()
    assert isinstance(first.error, ReviewError) and "being reviewed by ana" in str(first.error)
    second.approve_button.click()
    assert second.error is None and store.result(ids[1]).state == "approved"
