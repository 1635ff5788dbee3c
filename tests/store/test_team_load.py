"""Locks and limits at load (issue 13.5), against a real PostgreSQL server (tests/pgserver.py):
a batch of 100 rows on 8 local workers writing to one database while two reviewer processes
decide its flagged items from the same database at the same time.

One reviewer works the way the queue is meant to be used (claim the next free item, decide it);
the other races it, deciding items in queue order without claiming them, as a second terminal
typing ``--approve ID`` would. Whatever they collide on, every item is decided exactly once.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time
from pathlib import Path

from jobs import make_job

from nbconductor.cli import main
from nbconductor.store._base import connect

ROWS = 100
WORKERS = 8


def _reviewer(url: str, user: str, claim_first: bool, done_file: str, out_file: str) -> None:
    """A reviewer process: decide waiting items until the batch is over and the queue is empty.

    Writes what it saw to ``out_file``: the ids it decided, the refusals it was given (one-line
    `ReviewError`s, e.g. "already decided by …"), and any other error (there must be none)."""
    os.environ["NBCONDUCTOR_USER"] = user
    from nbconductor._errors import ReviewError
    from nbconductor.store._claims import next_item
    from nbconductor.store._review import decide, queue

    decided: list[int] = []
    refused: list[str] = []
    errors: list[str] = []
    store = connect(url)
    try:
        while True:
            finished = Path(done_file).exists()  # read before the queue: no item arrives after
            try:
                if claim_first:
                    item = next_item(store, user, minutes=1)
                    items = [item] if item is not None else []
                else:
                    items = queue(store)[:5]
                if not items:
                    if finished:
                        break
                    time.sleep(0.05)
                    continue
                for item in items:
                    try:
                        decide(store, item.id, "approve" if item.id % 3 else "reject")
                        decided.append(item.id)
                    except ReviewError as exc:
                        refused.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
    finally:
        store.close()
        Path(out_file).write_text(
            json.dumps({"decided": decided, "refused": refused, "errors": errors})
        )


def test_a_batch_on_8_workers_and_two_reviewers_share_one_postgres_store(
    pg_server, tmp_path, monkeypatch, capsys
):
    url = pg_server.database()
    make_job(tmp_path)  # draft, a Python step, a tagline every row gets flagged for review
    rows = [{"topic": f"topic {i}", "divisor": i % 7 + 1} for i in range(ROWS)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    connect(url).close()  # the schema exists before the reviewers first look at the queue
    done = tmp_path / "batch-done"
    ctx = mp.get_context("spawn")
    reviewers = {
        user: ctx.Process(
            target=_reviewer,
            args=(url, user, user == "ana", str(done), str(tmp_path / f"{user}.json")),
        )
        for user in ("ana", "ben")
    }
    for proc in reviewers.values():
        proc.start()
    started = time.monotonic()
    try:
        argv = ["batch", "job.ipynb", "--params", "rows.json", "--workers", str(WORKERS)]
        code = main([*argv, "--out", "out", "--store", url])
    finally:
        done.write_text("")
        for proc in reviewers.values():
            proc.join(120)
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 0, err
    # every row's tagline is flagged: a row reports what it ran as, `flagged`, even when a
    # reviewer decided its tagline before the row ended
    summary = re.search(r"(\d+) rows: (\d+) passed, (\d+) flagged, (\d+) failed", out)
    assert summary, out[-1500:] + err[-1500:]
    total, passed, flagged_rows, failed = map(int, summary.groups())
    assert (total, passed, flagged_rows, failed) == (ROWS, 0, ROWS, 0)
    assert all(proc.exitcode == 0 for proc in reviewers.values())
    seen = {u: json.loads((tmp_path / f"{u}.json").read_text()) for u in reviewers}
    print(
        f"{ROWS} rows on {WORKERS} workers with two reviewers: {seconds:.1f} s; decided "
        + ", ".join(
            f"{u} {len(s['decided'])} ({len(s['refused'])} refused)" for u, s in seen.items()
        )
    )

    # 0 errors, 0 deadlocks: a collision is only ever a one-line refusal
    assert [e for s in seen.values() for e in s["errors"]] == []
    refusals = [r for s in seen.values() for r in s["refused"]]
    assert all("already decided by" in r or "being reviewed by" in r for r in refusals), refusals
    assert "deadlock detected" not in (pg_server.dir / "log").read_text()

    # 0 lost rows: every row's run and steps are in the database, once
    store = connect(url, readonly=True)
    try:
        runs = store.query("SELECT notebook, status FROM runs")
        assert len(runs) == ROWS and len({r["notebook"] for r in runs}) == ROWS
        assert {r["status"] for r in runs} == {"flagged"}
        steps = store.query(
            "SELECT step, COUNT(*) AS n FROM results WHERE cached=0 GROUP BY step ORDER BY step"
        )
        assert {r["step"]: r["n"] for r in steps} == {"draft": ROWS, "ratio": ROWS, "tagline": ROWS}
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"]
        assert len(manifest) == ROWS

        # 0 double decisions: each flagged tagline decided exactly once, by one reviewer
        reviews = store.query('SELECT result_id, "user", decision FROM reviews')
        flagged = {
            r["id"] for r in store.query("SELECT id FROM results WHERE step='tagline' AND cached=0")
        }
        assert sorted(r["result_id"] for r in reviews) == sorted(flagged)
        ana, ben = (set(seen[u]["decided"]) for u in ("ana", "ben"))
        assert not ana & ben and ana | ben == flagged
        assert {r["result_id"]: r["user"] for r in reviews} == {
            **dict.fromkeys(ana, "ana"),
            **dict.fromkeys(ben, "ben"),
        }
        states = store.query(
            "SELECT state, COUNT(*) AS n FROM results WHERE step='tagline' GROUP BY state"
        )
        rejected = sum(1 for i in flagged if i % 3 == 0)
        assert {r["state"]: r["n"] for r in states} == {
            "approved": ROWS - rejected,
            "rejected": rejected,
        }
    finally:
        store.close()
