"""A run store is data, never code (issue 9 §1).

A crafted store — the one that arrives beside a cloned notebook, or one passed with ``--store``
— holds pickle payloads that would write marker files when unpickled. It is opened through
every entry point that reads outputs: ``nbconductor review`` (listing, ``--approve``,
``--reject``), ``nbconductor report``, ``nbconductor run`` with both engines, plain papermill of
the exported job, ``nbconductor batch``, ``%conductor review / status / run --dry-run``, a
``%%step`` cache hit, ``history()``, ``nbconductor.store._review.queue()`` and the Store API. No marker
ever appears; each entry point says, in one warning line naming the store, that it did not load
the pickled outputs. A path that is not a store is one line, exit 2 (a ``UsageError`` in a
notebook); a read-only store is read by ``report`` and ``review`` without a write.
"""

from __future__ import annotations

import builtins
import csv
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from IPython.core.error import UsageError
from notebook_shell import fresh_shell

import nbconductor.store._ops as store_module  # where the warned-once set lives
from nbconductor import Pipeline
from nbconductor.handoff._export import export_pipeline
from nbconductor.store._sqlite import Store, Unstored

WARNING = "pickled by an older nbconductor"
ENTRY_POINTS: list[str] = []  # filled as the test goes: the report's figure


class _Payload:
    """Unpickling this calls ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(markers: Path) -> list[bytes]:
    """Five pickles, each writing its own marker file when loaded."""
    m = str(markers)
    return [
        pickle.dumps(p)
        for p in (
            _Payload(builtins.exec, f"open({m + '/exec'!r}, 'w').write('x')"),
            _Payload(builtins.eval, f"open({m + '/eval'!r}, 'w')"),
            _Payload(os.system, f"touch {m}/system"),
            _Payload(subprocess.call, ["touch", f"{m}/subprocess"]),
            _Payload(builtins.open, f"{m}/open", "w"),
        )
    ]


def make_job(folder: Path) -> Path:
    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step(
        "draft",
        "Write about {{ topic }}. Earlier issues: {{ history('draft') }}",
        model="offline:w",
    )
    p.step(
        "tagline",
        "One line on {{ topic }}",
        model="offline:t",
        checks=["max_words(1)"],
        retries=0,
        on_fail="review",
    )
    p.step("stats", "len(draft)", python=True)
    return export_pipeline(p, folder / "job.ipynb")


def poison(path: Path, blobs: list[bytes]) -> int:
    """Every stored output becomes a pickle payload, as a crafted store would hold; returns how many."""
    db = sqlite3.connect(path)
    ids = [r[0] for r in db.execute("SELECT id FROM results")]
    for i, rid in enumerate(ids):
        db.execute(
            "UPDATE results SET output_kind='pickle', output=? WHERE id=?",
            (blobs[i % len(blobs)], rid),
        )
    db.commit()
    db.close()
    return len(ids)


def add_other_brief(path: Path) -> None:
    """A second, older run for another topic: what history() would offer, and a second flagged item."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    other = dict(db.execute("SELECT * FROM runs ORDER BY started LIMIT 1").fetchone())
    other.update(
        id="20200101-000000-aaaaaa", started=other["started"] - 3600, params='{"topic": "other"}'
    )
    db.execute(
        f"INSERT INTO runs ({', '.join(other)}) VALUES ({', '.join('?' * len(other))})",
        list(other.values()),
    )
    cols = [c[1] for c in db.execute("PRAGMA table_info(results)") if c[1] != "id"]
    swapped = {"run_id": other["id"], "ended": other["started"] + 1}
    db.execute(
        f"INSERT INTO results ({', '.join(cols)}) SELECT {', '.join('?' if c in swapped else c for c in cols)} "
        "FROM results WHERE step IN ('draft', 'tagline') AND item IS NULL",
        [swapped[c] for c in cols if c in swapped],
    )
    db.commit()
    db.close()


@pytest.fixture
def crafted(tmp_path, monkeypatch, capsys):
    """A job folder whose .nbconductor/store.sqlite has been crafted; ``check()`` asserts no marker."""
    from nbconductor.cli import main

    folder = tmp_path / "clone"
    folder.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    job = make_job(folder)
    assert (
        main(
            [
                "run",
                str(job),
                "-p",
                "topic",
                "t",
                "--engine",
                "nbconductor",
                "-o",
                str(folder / "first.ipynb"),
            ]
        )
        == 0
    )
    store = folder / ".nbconductor" / "store.sqlite"
    add_other_brief(store)
    blobs = payloads(markers)

    def fresh_warning() -> None:
        # One warning per store per process: forget it, so each entry point shows its own.
        monkeypatch.setattr(store_module, "_WARNED", set(), raising=False)
        poison(store, blobs)

    def cli(*args: str) -> SimpleNamespace:
        fresh_warning()
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    def check() -> None:
        assert sorted(os.listdir(markers)) == []

    fresh_warning()
    return SimpleNamespace(
        folder=folder,
        job=job,
        store=store,
        markers=markers,
        blobs=blobs,
        cli=cli,
        check=check,
        fresh=fresh_warning,
    )


def _one_warning(text: str, store: Path) -> None:
    lines = [line for line in text.splitlines() if WARNING in line]
    assert len(lines) == 1, text
    assert str(store) in lines[0]


def test_pickled_outputs_are_never_loaded_from_any_entry_point(crafted, monkeypatch, capsys):
    c = crafted
    store = c.store
    flagged = [
        r[0]
        for r in sqlite3.connect(store).execute(
            "SELECT id FROM results WHERE state='flagged' AND item IS NULL ORDER BY id"
        )
    ]
    assert len(flagged) == 2

    # the command line: review (listing, approve, reject) and report
    r = c.cli("review")
    assert r.returncode == 0 and "tagline" in r.stdout and "not loaded" in r.stdout
    _one_warning(r.stderr, store)
    ENTRY_POINTS.append("nbconductor review")
    r = c.cli("review", "--approve", str(flagged[0]))
    assert r.returncode == 0 and f"#{flagged[0]} tagline: approved" in r.stdout
    _one_warning(r.stderr, store)
    ENTRY_POINTS.append("nbconductor review --approve")
    r = c.cli("review", "--reject", str(flagged[1]))
    assert r.returncode == 0 and f"#{flagged[1]} tagline: rejected" in r.stdout
    ENTRY_POINTS.append("nbconductor review --reject")
    r = c.cli("report")
    assert r.returncode == 0 and "tagline" in r.stdout
    ENTRY_POINTS.append("nbconductor report")
    c.check()

    # the Python API: queue(), history(), lookups
    from nbconductor.store._history import history
    from nbconductor.store._review import queue

    c.fresh()
    db = sqlite3.connect(store)
    db.execute("UPDATE results SET state='flagged' WHERE id=?", (flagged[0],))
    db.commit()
    items = queue(store)
    assert items and all(isinstance(i.output, Unstored) for i in items)
    ENTRY_POINTS.append("nbconductor.store._review.queue()")
    s = Store(store)
    assert history(s, "draft") == []  # the other brief's output is a pickle: never offered
    ENTRY_POINTS.append("history()")
    keys = [
        r["cache_key"] for r in s.query("SELECT cache_key FROM results WHERE cache_key IS NOT NULL")
    ]
    assert keys and all(s.lookup(k) is None for k in keys)  # every poisoned row is a cache miss
    assert all(
        isinstance(s.result(r["id"]).output, Unstored) for r in s.query("SELECT id FROM results")
    )
    ENTRY_POINTS.append("Store.lookup / Store.result")
    s.close()
    c.check()

    # a notebook: %conductor review / status / run --dry-run, and a %%step cache hit
    c.fresh()
    shell = fresh_shell(c.folder, monkeypatch)
    monkeypatch.setenv(
        "NBCONDUCTOR_STORE", str(store)
    )  # the cloned store, as if beside the notebook
    shell.user_ns["topic"] = "t"
    shell.run_cell_magic(
        "step",
        "tagline --model offline:t --check 'max_words(1)' --retries 0 --on-fail review --lazy",
        "One line on {{ topic }}",
    )
    capsys.readouterr()
    shell.run_line_magic("conductor", "status")
    assert WARNING in capsys.readouterr().err
    ENTRY_POINTS.append("%conductor status")
    c.fresh()
    shell.run_line_magic("conductor", "run --dry-run")
    assert WARNING in capsys.readouterr().err
    ENTRY_POINTS.append("%conductor run --dry-run")
    c.fresh()
    widget = shell.run_line_magic("conductor", "review")
    assert widget.cards and WARNING in capsys.readouterr().err
    ENTRY_POINTS.append("%conductor review")
    c.fresh()
    shell.run_cell_magic(
        "step",
        "tagline --model offline:t --check 'max_words(1)' --retries 0 --on-fail review",
        "One line on {{ topic }}",
    )
    assert WARNING in capsys.readouterr().err
    assert shell.user_ns["tagline"].startswith("[offline:t]")  # run again, not loaded
    ENTRY_POINTS.append("%%step (cache hit)")
    c.check()

    # running the job: nbconductor run (both engines), plain papermill, nbconductor batch
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    for engine in ("nbconductor", "kernel"):
        out = c.folder / f"out-{engine}.ipynb"
        r = c.cli("run", str(c.job), "-p", "topic", "t", "--engine", engine, "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert WARNING in out.read_text() or WARNING in r.stderr
        ENTRY_POINTS.append(f"nbconductor run --engine {engine}")
        c.check()
    c.fresh()
    out = c.folder / "out-papermill.ipynb"
    env = {k: v for k, v in os.environ.items() if k != "NBCONDUCTOR_STORE"}
    subprocess.run(
        [sys.executable, "-m", "papermill", str(c.job), str(out), "-p", "topic", "t"],
        cwd=c.folder,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert WARNING in out.read_text()
    ENTRY_POINTS.append("papermill")
    c.check()
    with (c.folder / "rows.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["topic"], ["t"], ["other"]])
    r = c.cli("batch", str(c.job), "--params", "rows.csv", "--workers", "1", "--out", "batch")
    assert r.returncode == 0, r.stderr + r.stdout
    assert any(WARNING in p.read_text() for p in (c.folder / "batch").glob("*.ipynb"))
    ENTRY_POINTS.append("nbconductor batch")
    c.check()
    assert len(ENTRY_POINTS) == 15 and len(c.blobs) == 5
    print(f"\n{len(c.blobs)} pickle payloads × {len(ENTRY_POINTS)} entry points, marker files: 0")


def test_old_store_with_pickles_is_a_cache_miss_not_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "_WARNED", set(), raising=False)
    path = tmp_path / "s.sqlite"
    p = Pipeline(store=path)
    p.step("a", "Hello {{ name }}", model="offline:x")
    first = p.run({"name": "Ada"})
    p.close()
    poison(path, payloads(tmp_path))
    capsys.readouterr()
    p = Pipeline(store=path)
    p.step("a", "Hello {{ name }}", model="offline:x")
    again = p.run({"name": "Ada"})
    assert again.results["a"].state == "passed" and not again.results["a"].cached
    assert again["a"] == first["a"]
    _one_warning(capsys.readouterr().err, path)
    assert not (tmp_path / "exec").exists() and not (tmp_path / "open").exists()


_CALLS: list[int] = []


def _make_set() -> set:
    _CALLS.append(1)  # a module global: a closure over the list would change the function's hash
    return {1, 2, 3}  # a set: no safe stored form


def test_unstored_values_are_cached_in_the_session_only(tmp_path):
    path = tmp_path / "s.sqlite"
    calls, make = _CALLS, _make_set
    calls.clear()

    p = Pipeline(store=path)
    p.step("a", "make()", python=True)
    p.namespace["make"] = make
    assert p.run()["a"] == {1, 2, 3}
    assert p.run().results["a"].cached and len(calls) == 1  # same session: from memory
    row = p.store.query("SELECT output_kind, output FROM results WHERE step='a' AND cached=0")[0]
    assert row["output_kind"] == "unstored" and row["output"] == b"{1, 2, 3}"
    p.close()
    q = Pipeline(store=path, namespace={"make": make})
    q.step("a", "make()", python=True)
    res = q.run().results["a"]
    assert (
        not res.cached and res.output == {1, 2, 3} and len(calls) == 2
    )  # a later session runs it again


# --------------------------------------------------------------------- not a store, read-only


def not_stores(folder: Path) -> dict[str, Path]:
    text = folder / "notes.sqlite"
    text.write_text("these are my notes, not a database\n")
    foreign = folder / "other.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE customers (name TEXT)")
    db.commit()
    db.close()
    return {"text": text, "foreign": foreign, "folder": folder}


def test_a_path_that_is_not_a_store_is_one_line_exit_2_everywhere(tmp_path, monkeypatch, capsys):
    from nbconductor.cli import main

    job = make_job(tmp_path)
    (tmp_path / "rows.csv").write_text("topic\nt\n")
    monkeypatch.chdir(tmp_path)
    foreign_before = None
    for what, path in not_stores(tmp_path).items():
        if what == "foreign":
            foreign_before = path.read_bytes()
        commands = [
            ["review", "--store", str(path)],
            ["review", "--store", str(path), "--approve", "1"],
            ["report", "--store", str(path)],
            ["batch", str(job), "--params", "rows.csv", "--store", str(path), "--out", "b"],
        ]
        monkeypatch.setenv("NBCONDUCTOR_STORE", str(path))
        commands += [
            ["run", str(job), "--engine", engine, "-o", str(tmp_path / "o.ipynb")]
            for engine in ("nbconductor", "kernel")
        ]
        for args in commands:
            capsys.readouterr()
            code = main(args)
            out, err = capsys.readouterr()
            assert code == 2, (args, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and str(path) in lines[0] and "store" in lines[0], (args, err)
            assert (
                not (tmp_path / "o.ipynb").exists() and not (tmp_path / "b").exists()
            )  # nothing ran
        monkeypatch.delenv("NBCONDUCTOR_STORE")
    assert (
        tmp_path / "other.sqlite"
    ).read_bytes() == foreign_before  # no tables added to someone's database


def test_not_a_store_is_a_usage_error_in_a_notebook(tmp_path, monkeypatch):
    shell = fresh_shell(tmp_path, monkeypatch)
    for path in not_stores(tmp_path).values():
        for sub in ("review", "report"):
            with pytest.raises(UsageError, match=str(path)):
                shell.run_line_magic("conductor", f"{sub} --store {path}")


def _as_other_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m nbconductor ARGS`` as a user who may not write the store (nobody, when we are root)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": str(cwd)}
    env.pop("NBCONDUCTOR_STORE", None)
    cmd = [sys.executable, "-m", "nbconductor", *args]
    if (
        os.geteuid() == 0
    ):  # root writes any file: drop to an unprivileged user, as the users it matters to are
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("readonly", ["file", "folder"])
def test_a_read_only_store_is_read_by_report_and_review(readonly):
    base = Path(tempfile.mkdtemp(prefix="nbc-ro-"))
    try:
        os.chmod(base, 0o755)
        folder = base / "shared"
        folder.mkdir()
        path = folder / "store.sqlite"
        p = Pipeline(store=path)
        p.step(
            "tagline",
            "One line on {{ topic }}",
            model="offline:t",
            checks=["max_words(1)"],
            retries=0,
            on_fail="review",
        )
        p.run({"topic": "pricing"})
        p.close()
        assert not (
            folder / "store.sqlite-wal"
        ).exists()  # closing checkpointed the WAL into the file
        before = path.read_bytes()
        os.chmod(path, 0o444)
        if readonly == "folder":
            os.chmod(folder, 0o555)
        else:
            os.chmod(folder, 0o777)  # the folder is writable: only the file is read-only
        report = _as_other_user(["report", "--store", str(path)], base)
        assert report.returncode == 0, report.stderr
        assert "tagline" in report.stdout and report.stderr == ""
        review = _as_other_user(["review", "--store", str(path)], base)
        assert review.returncode == 0, review.stderr
        assert "tagline" in review.stdout and "#1" in review.stdout and review.stderr == ""
        # deciding writes: refused with one line, not a traceback
        decide = _as_other_user(["review", "--store", str(path), "--approve", "1"], base)
        assert decide.returncode == 2 and len(decide.stderr.strip().splitlines()) == 1, (
            decide.stderr
        )
        assert "read-only" in decide.stderr or "readonly" in decide.stderr
        assert path.read_bytes() == before
    finally:
        for d in (base / "shared", base):
            if d.exists():
                os.chmod(d, stat.S_IRWXU)
        subprocess.run(["rm", "-rf", str(base)], check=False)
