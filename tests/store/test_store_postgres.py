"""The PostgreSQL store against a real server (tests/pgserver.py), and what both backends share:
the schema version, passwords kept out of everything shown or stored, an unreachable server."""

import pytest
from jobs import make_job
from pgserver import PASSWORD

from nbconductor import Pipeline
from nbconductor._errors import StoreError
from nbconductor.cli import main
from nbconductor.store._base import connect, shown
from nbconductor.store._sqlite import SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_one_line(store_target):
    store = connect(store_target)
    store.execute("UPDATE nbconductor_schema SET version=?", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(StoreError, match=r"schema version \d+, newer than this nbconductor knows"):
        connect(store_target)
    with pytest.raises(StoreError, match="newer than this nbconductor"):
        connect(store_target, readonly=True)


def test_the_schema_is_created_once_by_processes_opening_a_new_database(pg_server):
    import concurrent.futures as cf

    url = pg_server.database()
    with cf.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: connect(url).close(), range(6)))
    store = connect(url)
    assert [r["version"] for r in store.query("SELECT version FROM nbconductor_schema")] == [
        SCHEMA_VERSION
    ]
    assert {"parent_id"} <= store._columns("results")
    store.close()


def test_the_password_is_in_no_path_row_or_output(pg_server, tmp_path, capsys, monkeypatch):
    url = pg_server.database()  # with the password in it
    assert PASSWORD in url
    monkeypatch.setenv("NBCONDUCTOR_STORE", url)
    p = Pipeline(root=tmp_path)
    p.step("draft", "Write about {{ topic }} for {{ where }}", model="offline:w")
    p.run({"topic": "pricing", "where": url})
    store = p.store
    assert store.path == shown(url) and PASSWORD not in store.path
    dump = repr(store.dump())
    assert PASSWORD not in dump and "pricing" in dump
    p.close()
    assert main(["report", "--store", url]) == 0
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err and "draft" in out.out


def test_an_unreachable_server_is_one_line_naming_the_host(pg_server, capsys):
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nope"
    with pytest.raises(StoreError) as err:
        connect(url)
    message = str(err.value)
    assert "127.0.0.1" in message and PASSWORD not in message and "\n" not in message
    assert main(["report", "--store", url]) == 2
    out = capsys.readouterr()
    assert "cannot be reached" in out.err and PASSWORD not in out.err
    assert "Traceback" not in out.err


def test_a_wrong_password_is_refused_without_showing_it(pg_server):
    url = pg_server.url(password=False).replace("postgres@", "postgres:wrong-password-123@")
    with pytest.raises(StoreError) as err:
        connect(url)
    assert "wrong-password-123" not in str(err.value) and "authentication" in str(err.value)


def test_a_run_resumes_from_the_store_across_sessions(store_target, tmp_path):
    def pipeline():
        p = Pipeline(store=store_target, root=tmp_path)
        p.step("a", "First {{ topic }}", model="offline:w")
        p.step("b", "Then {{ a }}", model="offline:w")
        return p

    first = pipeline()
    first.run({"topic": "x"})
    first.close()
    again = pipeline()
    run = again.run({"topic": "x"})
    assert all(r.cached for r in run.results.values())
    store = again.store
    assert store.count("results") == 4 and store.count("runs") == 2
    again.close()


def _rows_file(folder, n):
    import json

    rows = [{"topic": f"topic {i}", "divisor": 0 if i == 2 else i + 1} for i in range(n)]
    (folder / "rows.json").write_text(json.dumps(rows))
    return rows


def _check_batch_store(url, folder, n):
    store = connect(url, readonly=True)
    runs = {r["notebook"]: r["status"] for r in store.runs(limit=1000)}
    assert runs == {
        str(folder / "out" / f"job-{i:03d}.ipynb"): ("failed" if i == 2 else "flagged")
        for i in range(n)
    }
    prompts = {r["prompt"] for r in store.results(step="draft")}
    assert prompts == {f"Write about topic {i}" for i in range(n)}
    flagged = store.query("SELECT COUNT(*) AS n FROM results WHERE state='flagged'")[0]["n"]
    store.close()
    return flagged


def test_a_local_batch_writes_every_row_into_postgres(pg_server, tmp_path, monkeypatch, capsys):
    url = pg_server.database()
    make_job(tmp_path)
    _rows_file(tmp_path, 4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    argv = ["batch", "job.ipynb", "--params", "rows.json", "--workers", "2", "--out", "out"]
    assert main([*argv, "--store", url]) == 1
    out, err = capsys.readouterr()
    assert "4 rows: 0 passed, 3 flagged, 1 failed" in out
    assert PASSWORD not in out + err + (tmp_path / "out" / "manifest.json").read_text()
    assert _check_batch_store(url, tmp_path, 4) == 4  # every row's tagline, the failed one's too
    assert main(["review", "--store", url]) == 0  # the queue is there for any reviewer
    assert capsys.readouterr().out.count("tagline") >= 3


def test_a_dask_batch_lands_in_postgres(cluster, pg_server, tmp_path, monkeypatch, capsys):
    address, _, _ = cluster
    url = pg_server.database()
    make_job(tmp_path)
    _rows_file(tmp_path, 5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    argv = ["batch", "job.ipynb", "--params", "rows.json", "--dask", address, "--out", "out"]
    assert main([*argv, "--store", url]) == 1
    out, _ = capsys.readouterr()
    assert "5 rows: 0 passed, 4 flagged, 1 failed" in out
    assert _check_batch_store(url, tmp_path, 5) == 5


def test_a_server_gone_mid_run_fails_in_one_line_and_the_run_resumes_when_back(
    tmp_path, monkeypatch
):
    from pgserver import PostgresServer

    from nbconductor.store import _postgres

    monkeypatch.setattr(_postgres, "_IDLE_CHECK", 0.0)  # check a kept connection before each use
    server = PostgresServer().start()  # its own server: this test stops and restarts it
    try:
        url = server.database()
        idle = connect(url)  # a store open in some kernel, idle while the server is away
        idle.start_run({}, None, None)
        calls = []

        def pipeline():
            p = Pipeline(store=url, root=tmp_path)
            p.step("a", "First {{ topic }}", model="offline:w")

            @p.function("b")
            def b(a):
                calls.append("b")
                if len(calls) == 1:
                    server.pause()  # the database goes away while the run is under way
                return a.upper()

            p.step("c", "Then {{ b }}", model="offline:w")
            return p

        p = pipeline()
        with pytest.raises(StoreError) as err:
            p.run({"topic": "x"})
        message = str(err.value)
        assert "127.0.0.1" in message and "cannot be reached" in message
        assert PASSWORD not in message and "\n" not in message
        server.resume()
        again = pipeline()
        run = again.run({"topic": "x"})  # the same process, its pool reconnects
        assert run.status == "passed" and run.results["a"].cached  # `a` was recorded before
        assert not run.results["b"].cached and run.results["c"].state == "passed"
        assert idle.start_run({}, None, None)  # its dead connection was replaced, not reported
        idle.close()
        again.close()
        p.close()
    finally:
        server.stop()


def test_the_config_store_setting_takes_a_url(store_target, tmp_path, monkeypatch):
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    (tmp_path / "nbconductor.toml").write_text(f'store = "{store_target}"\n')
    p = Pipeline(root=tmp_path)
    p.step("a", "Hello {{ who }}", model="offline:w")
    p.run({"who": "x"})
    assert p.store.path == shown(store_target)
    assert connect(store_target, readonly=True).count("results") == 1
    p.close()


class _Sent:
    """Every statement psycopg sends (its cursors' ``execute``) and every pool hand-over."""

    def __init__(self, monkeypatch):
        import psycopg
        import psycopg_pool

        self.statements: list[str] = []
        self.checkouts = 0
        execute, getconn = psycopg.Cursor.execute, psycopg_pool.ConnectionPool.getconn

        def spy_execute(cur, query, *args, **kwargs):
            self.statements.append(" ".join(str(query).split()))
            return execute(cur, query, *args, **kwargs)

        def spy_getconn(pool, *args, **kwargs):
            self.checkouts += 1
            return getconn(pool, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", spy_execute)
        monkeypatch.setattr(psycopg_pool.ConnectionPool, "getconn", spy_getconn)

    def clear(self) -> None:
        self.statements.clear()
        self.checkouts = 0


def test_a_step_on_postgres_is_one_round_trip_per_read_and_per_write(pg_server, monkeypatch):

    url = pg_server.database()
    p = Pipeline(store=url)
    _ = p.store
    p.step("s0", "Begin", model="offline:w")
    for i in range(1, 20):
        p.step(f"s{i}", f"Step {i} goes on from {{{{ s{i - 1} }}}}", model="offline:w")
    sent = _Sent(monkeypatch)
    assert p.run().status == "passed"
    # per step: the cache lookup and the result's insert; per run: interrupted runs, start, end
    assert len(sent.statements) == 20 * 2 + 3, sent.statements
    assert sent.checkouts <= 1  # the store keeps its connection: no pool hand-over per statement
    sent.clear()
    assert all(r.cached for r in p.run().results.values())
    assert len(sent.statements) == 20 + 3 and sent.checkouts == 0
    p.close()


def test_a_map_row_and_its_items_parent_in_one_statement(store_target, monkeypatch):
    from nbconductor._types import StepResult

    store = connect(store_target)
    run, other = store.start_run({}, None, None), store.start_run({}, None, None)
    items = [store.record(run, StepResult("t", "passed", f"x{i}"), item=i) for i in range(3)]
    stray = store.record(other, StepResult("t", "passed", "y"), item=0)  # another run's item
    sent = _Sent(monkeypatch)
    whole = store.record(run, StepResult("t", "passed", ["x0", "x1", "x2"], items=3))
    if store_target.startswith("postgresql"):
        assert len(sent.statements) == 1, sent.statements
    parents = {r["id"]: r["parent_id"] for r in store.query("SELECT id, parent_id FROM results")}
    assert [parents[i] for i in items] == [whole] * 3
    assert parents[stray] is None and parents[whole] is None
    store.close()


def test_the_latest_result_of_a_key_is_served_however_often_it_was_recorded(store_target):
    from nbconductor._types import StepResult

    store = connect(store_target)
    run = store.start_run({}, None, None)
    for i in range(300):
        store.record(run, StepResult("s", "passed", f"v{i}", cache_key="k"))
        store.record(run, StepResult("s", "passed", f"v{i}", cache_key="k", cached=True))
    assert store.lookup("k").output == "v299"
    if store_target.startswith("postgresql"):  # an index on (key, id): no sort of 600 rows
        plan = store.query(
            "EXPLAIN SELECT * FROM results WHERE cache_key='k' AND state IN "
            "('passed','flagged','approved','edited') AND cached=0 ORDER BY id DESC LIMIT 1"
        )
        assert "Sort" not in " ".join(str(r) for r in plan)
    store.close()


def test_opening_a_store_that_has_its_schema_takes_no_table_lock(pg_server, monkeypatch):
    url = pg_server.database()
    connect(url).close()  # creates the schema
    sent = _Sent(monkeypatch)
    store = connect(url)
    sql = [s for s in sent.statements if s]  # (an empty one is the pool checking a connection)
    ddl = [s for s in sql if s.split()[0].upper() in ("CREATE", "ALTER", "DROP")]
    assert ddl == [] and len(sql) <= 2, sql  # the catalog, the version
    store.close()
