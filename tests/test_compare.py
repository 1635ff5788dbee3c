"""The compare engine, ``%conductor compare`` and ``nbconductor compare``: the real Anthropic SDK
against the loopback fake, with the judge's score steered per variant and per row.

The pipeline: ``research`` (upstream) → ``draft`` (compared, with a rubric) → ``final``
(downstream). Judge scores, by the brief's row ``i``: base 0.7; ``concise`` 0.9 on rows 0-14
and 0.6 on rows 15-19 (15 wins, 5 losses: p = 0.041); ``warm`` 0.7 but 0.4 on rows 0-3
(below the 0.5 threshold: flagged, 4 losses and 16 ties: p = 0.125).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import anthropic  # noqa: F401 - the test extras install the SDK
import nbformat
import pytest
from fakeapi import JSONText, Slow, Text
from IPython.core.error import UsageError
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor._errors import OptionError
from nbconductor._stats import bootstrap_ci, sign_test, verdict_sentence
from nbconductor.cli import main
from nbconductor.store._experiments import experiment_cells
from nbconductor.store._sqlite import Store

WRITER = "anthropic:claude-haiku-4-5"
JUDGE = "anthropic:claude-opus-4-8"
ROWS = [{"topic": f"topic{i}"} for i in range(20)]


def judge_score(output: str) -> float:
    i = int(re.search(r"topic(\d+)", output).group(1))
    if "CONCISE" in output:
        return 0.9 if i < 15 else 0.6
    if "WARM" in output:
        return 0.4 if i < 4 else 0.7
    if "REGRESSED" in output:
        return 0.3 if i < 10 else 0.7
    if "NOISY" in output:
        return 0.6 if i == 0 else 0.7
    return 0.7


def reply(body, delay: float = 0.0):
    text = json.dumps(body["messages"])
    if "<output_a>" in text:  # the pairwise judge: picks CONCISE; for WARM, always A (bias)
        content = body["messages"][0]["content"]
        a = content.split("<output_a>")[1].split("</output_a>")[0]
        b = content.split("<output_b>")[1].split("</output_b>")[0]
        better = "A" if "WARM" in a + b else "A" if "CONCISE" in a else "B"
        return JSONText({"better": better, "reason": "clearer"}, input_tokens=50, output_tokens=5)
    if "<rubric>" in text:
        output = text.split("<output>")[1].split("</output>")[0]
        verdict = {"score": judge_score(output), "feedback": "ok", "suggested_edit": ""}
        return JSONText(verdict, input_tokens=100, output_tokens=20)
    prompt = body["messages"][0]["content"]
    answer = Text(f"[{body['model']}] {prompt[:120]}", input_tokens=10, output_tokens=5)
    return Slow(delay, answer) if delay else answer


def build(p: Pipeline) -> Pipeline:
    p.step("research", "Notes on {{ topic }}.", model=WRITER)
    p.step("draft", "Draft on {{ topic }} from: {{ research }}", model=WRITER)
    p.rubric("draft", "- says something true", judge=JUDGE, threshold=0.5, retries=0)
    p.step("final", "Polish: {{ draft }}", model=WRITER)
    p.variant("draft", "concise", "CONCISE draft on {{ topic }} from: {{ research }}")
    p.variant("draft", "warm", "WARM draft on {{ topic }} from: {{ research }}", temperature=0.9)
    return p


@pytest.fixture
def api(fake_api):
    fake_api.set_default(reply, endpoint="anthropic")
    return fake_api


@pytest.fixture
def config():
    """Short backoff, but a read timeout that a loaded 2-core machine cannot trip: the tests
    count requests exactly, and a stream stalled out by load would be retried (sent twice)."""
    from nbconductor._config import Config, RetryPolicy

    return Config(retry=RetryPolicy(base_delay=0.01, max_delay=0.05), read_timeout=30.0)


@pytest.fixture
def pipeline(tmp_path, config):
    p = build(Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path))
    yield p
    p.close()


def sent(api, marker: str) -> list:
    return [
        r
        for r in api.requests
        if r.endpoint == "anthropic" and r.json["messages"][0]["content"].startswith(marker)
    ]


def test_upstream_runs_once_per_row_and_the_figures_are_exact(api, pipeline):
    c = pipeline.compare("draft", ROWS)
    assert len(sent(api, "Notes on")) == 20  # upstream: once per row, not once per variant
    drafts = [sent(api, p) for p in ("Draft on", "CONCISE draft", "WARM draft")]
    assert [len(d) for d in drafts] == [20, 20, 20]  # STEP: once per row × variant
    assert len(sent(api, "Judge the output")) == 60
    assert len(sent(api, "Polish:")) == 60  # downstream: per variant too
    f = c.figures()
    assert {v: (f[v]["rows"], f[v]["first_pass_yield"], f[v]["final_yield"]) for v in f} == {
        "base": (20, 1.0, 1.0),
        "concise": (20, 1.0, 1.0),
        "warm": (20, 0.8, 0.8),
    }
    assert (f["base"]["mean_score"], f["base"]["score_ci"]) == (0.7, [0.7, 0.7])
    assert f["concise"]["mean_score"] == pytest.approx((15 * 0.9 + 5 * 0.6) / 20)
    lo, hi = f["concise"]["score_ci"]
    assert lo < f["concise"]["mean_score"] < hi
    assert f["warm"]["mean_score"] == pytest.approx((4 * 0.4 + 16 * 0.7) / 20)
    # per cell: draft 10+5 and its judge 100+20, final 10+5
    assert {v: f[v]["tokens"] for v in f} == {"base": 3000, "concise": 3000, "warm": 3000}
    assert f["concise"]["failures"] == 0 and "mean_score" in f["concise"]["best"]
    assert "first_pass_yield" in f["base"]["best"] and "first_pass_yield" not in f["warm"]["best"]
    v = c.verdicts()
    assert (v["concise"]["wins"], v["concise"]["losses"], v["concise"]["ties"]) == (15, 5, 0)
    assert v["concise"]["p_value"] == pytest.approx(0.0414, abs=1e-4)
    assert v["concise"]["winner"] == "concise"
    assert v["concise"]["sentence"] == "concise beats base on 15 of 20 briefs, p = 0.04, sign test"
    assert (v["warm"]["wins"], v["warm"]["losses"], v["warm"]["ties"]) == (0, 4, 16)
    assert v["warm"]["winner"] is None and "no significant difference" in v["warm"]["sentence"]
    assert c.winners()[0] == ["concise"] and c.winners()[16] == ["base", "warm"]
    html = c._repr_html_()
    assert "concise beats base on 15 of 20 briefs" in html and html.count("<details>") == 60
    assert '<td class="best">' in html
    # recorded: the same compare again resumes it and sends nothing
    before = len(api.requests)
    again = pipeline.compare("draft", ROWS)
    assert len(api.requests) == before and again.resumed == 60
    assert again.to_json()["variants"] == c.to_json()["variants"]
    assert len(experiment_cells(pipeline.store, c.experiment_id)) == 60


def test_pairwise_judge_in_both_orders_position_bias_is_a_tie(api, pipeline):
    c = pipeline.compare("draft", ROWS, pairwise=JUDGE)
    assert len(sent(api, "Which output serves the brief better?")) == 20 * 2 * 2
    v = c.verdicts()
    pw = v["concise"]["pairwise"]
    assert (pw["wins"], pw["losses"], pw["ties"], pw["flips"], pw["win_rate"]) == (20, 0, 0, 0, 1.0)
    assert (
        pw["sentence"]
        == "pairwise judge: concise beats base on 20 of 20 briefs, p < 0.001, sign test"
    )
    warm = v["warm"]["pairwise"]  # always "A": the preference flips with the order
    assert (warm["wins"], warm["losses"], warm["ties"], warm["flips"]) == (0, 0, 20, 20)
    assert warm["win_rate"] == 0.5 and warm["winner"] is None
    assert "win rate 100%, order flips 0" in c.text()
    before = len(api.requests)
    again = pipeline.compare("draft", ROWS, pairwise=JUDGE)  # resumed: judged pairs too
    assert len(api.requests) == before and again.verdicts() == v


def test_pairwise_alone_is_something_to_measure(api, tmp_path, config):
    p = Pipeline(store=tmp_path / "s.sqlite", config=config, root=tmp_path)
    p.step("draft", "Draft on {{ topic }}", model=WRITER)
    p.variant("draft", "concise", "CONCISE draft on {{ topic }}")
    c = p.compare("draft", ROWS[:6], pairwise=JUDGE)
    assert c.verdicts()["concise"]["pairwise"]["wins"] == 6
    with pytest.raises(OptionError, match="unknown"):
        p.compare("draft", ROWS[:6], pairwise="nosuchprovider:model")


def test_repeats_ask_again_and_workers_bound_rows(api, pipeline):
    c = pipeline.compare("draft", ROWS[:6], variants=["base", "concise"], repeats=2, workers=1)
    assert len(sent(api, "Notes on")) == 6
    assert len(sent(api, "Draft on")) + len(sent(api, "CONCISE draft")) == 6 * 2 * 2
    assert c.figures()["base"]["rows"] == 6 and len(c.cells) == 24


@pytest.mark.parametrize(
    ("kwargs", "rows", "message"),
    [
        ({"variants": ["base", "terse"]}, ROWS, "no variant `terse`"),
        ({"variants": ["base"]}, ROWS, "nothing to compare with"),
        ({"repeats": 0}, ROWS, "--repeats must be 1 or more, got 0"),
        ({}, [{"topc": "x"}], "column topc that no step reads"),
        ({}, [{"topic": "x"}, {}], "row 1 has no topic"),
    ],
)
def test_bad_compares_fail_before_anything_runs(api, pipeline, kwargs, rows, message):
    with pytest.raises(OptionError, match=message):
        pipeline.compare("draft", rows, **kwargs)
    with pytest.raises(OptionError, match="did you mean `draft`"):
        pipeline.compare("drat", ROWS)
    assert api.requests == []


def test_a_step_without_rubric_or_checks_has_nothing_to_measure(api, tmp_path, fast_config):
    p = Pipeline(store=tmp_path / "s.sqlite", config=fast_config, root=tmp_path)
    p.step("draft", "About {{ topic }}", model=WRITER)
    p.variant("draft", "b", model="anthropic:claude-sonnet-4-5")
    with pytest.raises(
        OptionError, match="nothing to\\s+measure quality with: add `%%rubric draft`"
    ):
        p.compare("draft", ROWS)


def test_statistics():
    assert sign_test(15, 5) == pytest.approx(2 * 21700 / 2**20)
    assert sign_test(14, 6) == pytest.approx(0.1153, abs=1e-4)
    assert sign_test(0, 0) == 1.0 and sign_test(6, 0) == pytest.approx(0.03125)
    assert verdict_sentence("a", "base", 3, 1, 1, 0.6)[0].endswith(
        "too few rows to tell (5 paired; need 6)"
    )
    assert verdict_sentence("a", "base", 1, 9, 0, 0.02) == (
        "base beats a on 9 of 10 briefs, p = 0.02, sign test",
        "base",
    )
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5) and bootstrap_ci([]) is None


# ----------------------------------------------------------------------- notebook and CLI


def job_notebook(folder: Path, prefix: str = "", rows: int = 8) -> Path:
    cells = [
        "topic = 'default'",
        "%load_ext nbconductor",
        f"%%step research --model {WRITER}\nNotes on {{{{ topic }}}}.",
        f"%%step draft --model {WRITER}\n{prefix}Draft on {{{{ topic }}}} from: {{{{ research }}}}",
        f"%%rubric draft --judge {JUDGE} --threshold 0.5 --retries 0\n- says something true",
        "%%variant draft concise\nCONCISE draft on {{ topic }} from: {{ research }}",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, folder / "job.ipynb")
    (folder / "briefs.json").write_text(json.dumps(ROWS[:rows]))
    return folder / "job.ipynb"


def test_cli_compare_prints_json_and_writes_a_report(api, tmp_path, capsys, monkeypatch):
    job = job_notebook(tmp_path)
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    out = tmp_path / "report"
    argv = ["compare", str(job), "--step", "draft", "--data", str(tmp_path / "briefs.json")]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 8 and set(data["variants"]) == {"base", "concise"}
    assert data["variants"]["concise"]["mean_score"] == 0.9
    assert (
        data["verdicts"]["concise"]["wins"] == 8
        and data["verdicts"]["concise"]["winner"] == "concise"
    )
    assert set(data["variants"]["base"]) >= {
        "rows",
        "first_pass_yield",
        "final_yield",
        "mean_score",
        "score_ci",
        "failures",
        "tokens",
        "cost_per_row",
        "p50_latency_s",
        "p95_latency_s",
    }
    page = (out / "compare-draft.html").read_text()
    assert '<img alt="plots" src="data:image/png;base64,' in page
    assert "concise beats base on 8 of 8 briefs, p = 0.008, sign test" in page
    assert main(argv) == 0  # resumed: the terminal table, nothing sent again
    text = capsys.readouterr().out
    assert (
        "concise beats base on 8 of 8 briefs" in text
        and "16 cells were already in the store" in text
    )
    # the experiment, read back from the store
    store = str(tmp_path / "store.sqlite")
    assert main(["report", "--store", store, "--experiment", "latest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdicts"] == data["verdicts"]
    assert main(["report", "--store", store, "--experiment", data["experiment"]]) == 0
    assert "concise beats base on 8 of 8 briefs" in capsys.readouterr().out
    assert main(["report", "--store", store, "--experiment", "list"]) == 0
    assert data["experiment"] in capsys.readouterr().out
    assert main(["report", "--store", store, "--experiment", "x123"]) == 2
    assert "no experiment 'x123' in the store" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variants", "base,nope"], "no variant `nope`"),
        (["--repeats", "0"], "--repeats must be 1 or more"),
        (["--step", "nostep"], "no step named `nostep`"),
    ],
)
def test_cli_compare_bad_input_is_one_line_exit_2(
    api, tmp_path, capsys, monkeypatch, extra, message
):
    job = job_notebook(tmp_path)
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    argv = ["compare", str(job), "--step", "draft", "--data", str(tmp_path / "briefs.json"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert api.requests == []


def test_cli_compare_bad_data_file(api, tmp_path, capsys):
    job = job_notebook(tmp_path)
    (tmp_path / "bad.csv").write_text("subject\nx\n")
    assert main(["compare", str(job), "--step", "draft", "--data", str(tmp_path / "bad.csv")]) == 2
    assert "column subject that no step reads" in capsys.readouterr().err


def test_conductor_compare_magic_shows_the_table(api, tmp_path, monkeypatch, fast_config):
    ip = fresh_shell(tmp_path, monkeypatch)
    (tmp_path / "briefs.json").write_text(json.dumps(ROWS[:6]))
    ip.run_cell("topic = 'default'")
    ip.run_cell_magic("step", f"research --model {WRITER} --lazy", "Notes on {{ topic }}.")
    ip.run_cell_magic(
        "step", f"draft --model {WRITER} --lazy", "Draft on {{ topic }} from: {{ research }}"
    )
    ip.run_cell_magic("rubric", f"draft --judge {JUDGE} --threshold 0.5 --retries 0", "- true")
    ip.run_cell_magic(
        "variant", "draft concise", "CONCISE draft on {{ topic }} from: {{ research }}"
    )
    from IPython.utils.capture import capture_output

    with capture_output() as shown:
        ip.run_line_magic("conductor", "compare draft --data briefs.json")
    c = ip.user_ns["_compare"]  # the last compare, as data
    assert c.verdicts()["concise"]["wins"] == 6
    kinds = [set(o.data) for o in shown.outputs]
    assert any("text/html" in k for k in kinds)  # the table, verdicts and grid
    assert any("image/png" in k for k in kinds)  # score distribution, cost vs quality
    for line, message in [
        ("compare draft", "--data FILE"),
        ("compare draft --data briefs.json --repeats 0", "--repeats must be 1 or more"),
        ("compare draft --data missing.json", "not found"),
    ]:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("conductor", line)


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_compare import build, ROWS
from nbconductor import Pipeline
p = build(Pipeline(store={store!r}, root={root!r}))
p.compare("draft", ROWS, workers=2)
"""


def test_resume_after_kill_9_resends_no_finished_cell(api, tmp_path):
    api.set_default(lambda body: reply(body, delay=0.05), endpoint="anthropic")
    store = tmp_path / "store.sqlite"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), store=str(store), root=str(tmp_path)
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    p = build(Pipeline(store=store, root=tmp_path))
    plan_id = None
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            from nbconductor._compare import plan_compare

            plan_id = plan_id or plan_compare(p, "draft", ROWS).experiment_id
            if len(experiment_cells(p.store, plan_id)) >= 12:
                break
            time.sleep(0.05)
        proc.kill()  # kill -9 mid-compare
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = {(c["row_index"], c["variant"]) for c in experiment_cells(p.store, plan_id)}
    assert 12 <= len(finished) < 60
    before = len(api.requests)
    c = p.compare("draft", ROWS)
    assert c.resumed == len(finished) and len(c.cells) == 60
    resent = []
    for r in api.requests[before:]:
        content = r.json["messages"][0]["content"]
        m = re.match(r"(CONCISE |WARM )?[Dd]raft on topic(\d+)", content)
        if m:
            variant = {"CONCISE ": "concise", "WARM ": "warm"}.get(m.group(1) or "", "base")
            resent.append((int(m.group(2)), variant))
    assert not set(resent) & finished  # 0 completed cells re-sent
    assert len(resent) <= 60 - len(finished)
    p.close()


def test_eval_exits_1_on_a_planted_regression_and_0_on_noise(api, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    baseline = tmp_path / "baseline.json"

    def run(prefix: str, *extra: str) -> int:
        job = job_notebook(tmp_path, prefix, rows=20)
        data = str(tmp_path / "briefs.json")
        return main(["eval", str(job), "--data", data, *extra])

    assert run("", "--save", str(baseline)) == 0
    saved = json.loads(baseline.read_text())
    assert saved["steps"]["draft"]["first_pass_yield"] == 1.0
    assert saved["steps"]["draft"]["mean_score"] == 0.7
    assert len(sent(api, "Notes on")) == 20
    capsys.readouterr()
    # noise: one row 0.1 lower (mean drop 0.005, within --max-drop)
    assert run("NOISY ", "--baseline", str(baseline)) == 0
    assert "no regression against baseline.json" in capsys.readouterr().out
    # a drop beyond --max-drop on 4 of 20 rows: not significant (p = 0.125), not a failure
    assert run("WARM ", "--baseline", str(baseline)) == 0
    # planted: 10 of 20 rows fall below the threshold
    assert run("REGRESSED ", "--baseline", str(baseline)) == 1
    out = capsys.readouterr().out
    assert "regression: step `draft`: first-pass yield dropped 100% → 50%" in out
    assert "worse on 10 of 20 rows, p = 0.002, sign test" in out
    assert "regression: step `draft`: mean score dropped 0.70 → 0.50" in out
    assert run("REGRESSED ", "--baseline", str(baseline), "--max-drop", "0.6") == 0
    # bad input: one line, exit 2, before anything runs
    before = len(api.requests)
    for extra, message in [
        (["--baseline", str(tmp_path / "none.json")], "not found (write one with --save)"),
        (["--max-drop", "2"], "--max-drop must be between 0 and 1"),
    ]:
        assert run("", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert len(api.requests) == before


# ------------------------------------------------------------------ audits and calibration


def test_audit_sampling_is_a_deterministic_share_of_passed_outputs(tmp_path, monkeypatch):
    from nbconductor.store._review import queue

    def audited(store_name: str, seed: str) -> set[str]:
        monkeypatch.setenv("NBCONDUCTOR_AUDIT_SEED", seed)
        p = Pipeline(store=tmp_path / store_name, root=tmp_path)
        p.step("d", "About {{ t }}", model="offline:x", audit=0.1)
        p.step("never", "Flag {{ t }}", model="offline:x", checks=["contains('zzz')"], audit=1.0)
        for i in range(200):
            p.run({"t": f"brief {i}"})
        items = queue(p.store)
        flagged = [i for i in items if not i.audit]
        assert len(flagged) == 200 and all(i.step == "never" for i in flagged)  # never audited
        keys = {i.cache_key for i in items if i.audit}
        assert all(i.step == "d" for i in items if i.audit)
        p.close()
        return keys

    first = audited("a.sqlite", "0")
    assert 10 <= len(first) <= 30  # 10% of 200, sampled by hash
    assert audited("b.sqlite", "0") == first  # the same seed audits the same outputs
    other = audited("c.sqlite", "7")
    assert other != first and 10 <= len(other) <= 30


def test_audit_bad_rates_are_one_line_errors(tmp_path, monkeypatch):
    p = Pipeline(store=":memory:")
    for rate in (0, 1.5, -0.1):
        with pytest.raises(OptionError, match=r"--audit must be a share in \(0, 1\]"):
            p.step("d", "About {{ t }}", model="offline:x", audit=rate)
    p.step("d", "About {{ t }}", model="offline:x")
    with pytest.raises(OptionError, match="--audit must be a share"):
        p.rubric("d", "- good", judge="offline:j", audit=2)
    ip = fresh_shell(tmp_path, monkeypatch)
    with pytest.raises(UsageError, match="--audit must be a share"):
        ip.run_cell_magic("step", "x --model offline:x --audit 0 --lazy", "hi")


def test_calibration_agreement_kappa_and_audited_first_pass_yield(tmp_path):
    from nbconductor.store._report import report, report_text
    from nbconductor.store._review import decide, queue

    p = Pipeline(store=tmp_path / "s.sqlite", root=tmp_path)
    p.step("d", "About {{ t }}", model="offline:x", checks=["contains('ok')"], audit=1.0)
    before = report(p.store)
    assert "calibration" not in before  # no audits, no reviews: the report as before
    for i in range(10):
        p.run({"t": f"ok {i}"})  # passes: every one audited at rate 1
    for i in range(6):
        p.run({"t": f"no {i}"})  # flagged
    items = queue(p.store)
    audits = [i for i in items if i.audit]
    flagged = [i for i in items if not i.audit]
    assert (len(audits), len(flagged)) == (10, 6)
    rep = report(p.store)
    assert rep["calibration"]["d"]["note"] == (
        "0 audits reviewed: about 97 more give a ±10-point interval on the false-pass rate"
    )
    for item in audits[:8]:
        decide(p.store, item.id, "approve")  # the gate was right
    for item in audits[8:]:
        decide(p.store, item.id, "reject")  # false passes
    for item in flagged[:2]:
        decide(p.store, item.id, "approve")  # false flags
    for item in flagged[2:]:
        decide(p.store, item.id, "reject")
    assert queue(p.store) == []
    rep = report(p.store)
    cal = rep["calibration"]["d"]
    gate = next(iter(cal["gates"].values()))
    assert gate == {
        "reviewed": 16,
        "agreement": 0.75,
        "false_passes": 2,
        "false_flags": 2,
        "kappa": pytest.approx(0.4667, abs=1e-4),
    }
    # the report counts the 2 rejected audits as not first-pass (8/16); the gates passed 10/16
    assert rep["steps"]["d"]["first_pass_yield"] == 0.5
    assert (cal["audits"], cal["audits_reviewed"], cal["false_pass_rate"]) == (10, 10, 0.2)
    assert cal["audited_first_pass_yield"] == 0.5
    lo, hi = cal["interval"]
    assert lo == pytest.approx(0.625 * (1 - 0.5098), abs=1e-3)
    assert hi == pytest.approx(0.625 * (1 - 0.0567), abs=1e-3)
    text = report_text(rep)
    assert "16 reviewed, agreement 75%, 2 false passes, 2 false flags, kappa 0.47" in text
    assert "d: audited first-pass yield 50% [31%, 59%] (2 of 10 audits failed)" in text
    with pytest.raises(Exception, match="already decided"):
        decide(p.store, audits[0].id, "reject")
    p.close()


def test_blind_pairwise_review_records_preferences_and_agreement(api, tmp_path, monkeypatch):
    from nbconductor._compare import load_comparison

    ip = fresh_shell(tmp_path, monkeypatch)
    monkeypatch.setenv("NBCONDUCTOR_USER", "ana")
    (tmp_path / "briefs.json").write_text(json.dumps(ROWS[:6]))
    ip.run_cell("topic = 'default'")
    ip.run_cell_magic("step", f"draft --model {WRITER} --lazy", "Draft on {{ topic }}")
    ip.run_cell_magic("variant", "draft concise", "CONCISE draft on {{ topic }}")
    ip.run_line_magic("conductor", f"compare draft --data briefs.json --pairwise {JUDGE}")
    ip.run_line_magic("conductor", "review --pairwise latest")
    review = ip.user_ns["_pairwise_review"]
    assert len(review.tasks) == 6
    sides = set()
    for n in range(6):
        task = review.current
        sides.add(task.first)
        shown = review.a.value + review.b.value + review.brief.value
        assert "concise" not in shown and ">base<" not in shown  # blind: no variant names
        concise_side = "A" if "CONCISE" in task.a else "B"
        choice = concise_side if n < 4 else "tie" if n == 4 else "both bad"
        winner = review.choose(choice)
        assert winner == ("concise" if n < 4 else choice)
        assert "A was " in review.status.value
    assert sides <= {"concise", "base"}
    assert review.current is None and "nothing left" in review.brief.value
    store = ip.user_ns["__nbconductor__"].pipeline.store
    c = load_comparison(store, ip.user_ns["_compare"].experiment_id)
    # sides are random: over seeded draws of a fresh experiment's tasks both variants come first
    from nbconductor._preferences import pending

    firsts = [t.first for seed in range(8) for t in pending(c, Store(":memory:"), seed)]
    assert {"concise", "base"} <= set(firsts) and len(firsts) == 48
    human = c.verdicts()["concise"]["human"]
    assert human == {
        "decided": 6,
        "wins": 4,
        "losses": 0,
        "ties": 1,
        "both_bad": 1,
        "win_rate": round(5 / 6, 4),
        "agreement_with_judge": round(4 / 6, 4),
        "reviewers": [store.user],
    }
    assert "people (6 decided): 4 wins, 0 losses, 1 ties, 1 both bad" in c.text()
    with pytest.raises(UsageError, match="no experiment 'nope'"):
        ip.run_line_magic("conductor", "review --pairwise nope")


def test_a_secret_in_an_output_never_reaches_the_grid_store_or_report(api, pipeline, tmp_path):
    from conftest import FAKE_ANTHROPIC_KEY

    from nbconductor.render._compare import report_page

    rows = [{"topic": f"topic{i} {FAKE_ANTHROPIC_KEY}"} for i in range(6)]
    c = pipeline.compare("draft", rows, variants=["base", "concise"])
    assert any(FAKE_ANTHROPIC_KEY in r.body.decode() for r in api.requests)  # it was sent...
    page = report_page(c)
    assert "[REDACTED]" in page and FAKE_ANTHROPIC_KEY not in page  # ...but never shown
    stored = experiment_cells(pipeline.store, c.experiment_id)
    assert FAKE_ANTHROPIC_KEY not in json.dumps(stored)
