"""`%conductor export`: the job's contents, and the job run by plain papermill (real kernels).

The kernel runs (papermill's CLI in a subprocess) start concurrently to keep the file fast.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbconductor import Pipeline
from nbconductor._errors import OptionError
from nbconductor.handoff._export import export_pipeline, is_job

CANARY = "sk-ant-" + "api03-canaryCANARYcanary0123456789abcdef"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def code(source: str, *tags: str):
    cell = new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def source_notebook(folder: Path) -> Path:
    """A working notebook, as a user leaves it: exploration mixed with the pipeline."""
    nb = new_notebook(metadata={"kernelspec": KERNEL})
    nb.cells = [
        new_markdown_cell("# Newsletter\n\nA brief becomes a checked draft."),
        code("%load_ext nbconductor"),
        code('topic = "AI orchestration"\nwords = 120', "parameters"),
        code(f'LEGACY_KEY = "{CANARY}"  # pasted while debugging'),
        code("def shout(text):\n    return text.upper()"),
        code("%%context tone\nWarm and direct."),
        new_markdown_cell("The draft, in the house tone:"),
        code(
            "%%step draft --model offline:writer --context tone\nWrite about {{ topic }} in {{ words }} words."
        ),
        code(
            "%%rubric draft --judge offline:judge --threshold 0.5 --on-fail review\n- Is it warm?"
        ),
        code("%%step loud --python\nshout(draft)"),
        code("%conductor graph"),
        new_markdown_cell("Peek at the draft:"),
        code("print(draft[:30])"),
        code("SCRATCH = 'only for me'", "skip-export"),
        code("%conductor export job.ipynb"),
    ]
    path = folder / "newsletter.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The source notebook executed in-process (its export cell writes job.ipynb)."""
    folder = tmp_path_factory.mktemp("export")
    src = source_notebook(folder)
    env = {"NBCONDUCTOR_STORE": str(folder / "store.sqlite")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(src),
            str(folder / "executed.ipynb"),
            engine_name="nbconductor",
            cwd=str(folder),
            progress_bar=False,
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return folder


def sources(nb) -> list[str]:
    return [c.source for c in nb.cells]


def test_export_writes_a_clean_documented_job(exported):
    text = (exported / "job.ipynb").read_text()
    job = nbformat.read(exported / "job.ipynb", as_version=4)
    nbformat.validate(job)
    assert is_job(job)
    header, params, load = job.cells[:3]
    # header: title, graph (SVG attachment), steps, models, parameters, how to run
    assert header.cell_type == "markdown" and header.source.startswith("# Newsletter")
    svg = base64.b64decode(header.attachments["pipeline.svg"]["image/svg+xml"]).decode()
    assert 'data-node="draft"' in svg and 'data-node="loud"' in svg
    for needle in (
        "| `draft` | LLM | `offline:writer` |",
        "rubric ≥ 0.5 (judge `offline:judge`)",
        '| `topic` | `"AI orchestration"` |',
        "papermill job.ipynb out.ipynb -p topic",
        "nbconductor batch job.ipynb --params",
        "`tone` (16 characters)",
    ):
        assert needle in header.source
    assert (
        params.metadata["tags"] == ["parameters"]
        and params.source == 'topic = "AI orchestration"\nwords = 120'
    )
    assert load.source == "%load_ext nbconductor"
    body = sources(job)[3:]
    assert body == [
        'LEGACY_KEY = "[REDACTED]"  # pasted while debugging',
        "def shout(text):\n    return text.upper()",
        "%%context tone\nWarm and direct.",
        "The draft, in the house tone:",
        "%%step draft --model offline:writer --context tone --lazy\nWrite about {{ topic }} in {{ words }} words.",
        "%%rubric draft --judge offline:judge --threshold 0.5 --on-fail review\n- Is it warm?",
        "%%step loud --python --lazy\nshout(draft)",
        "%conductor run",
    ]
    # no outputs, no secrets, no exploration, no skip-export cell
    assert all(
        c.get("outputs", []) == [] and c.get("execution_count") is None
        for c in job.cells
        if c.cell_type == "code"
    )
    assert CANARY not in text and "SCRATCH" not in text and "%conductor graph" not in text
    assert "export job.ipynb" not in text.replace("papermill job.ipynb", "")
    assert "a secret in cell" in header.source and "reads step outputs" in header.source


def test_papermill_runs_the_job_with_parameters_and_failure_semantics(exported, tmp_path):
    folder = exported
    store = tmp_path / "store.sqlite"
    env = {**os.environ, "NBCONDUCTOR_STORE": str(store), "ANTHROPIC_API_KEY": CANARY}
    env.pop("JPY_SESSION_NAME", None)
    # Two more jobs, written without IPython: a rule gate that fails the run, one that flags.
    for name, on_fail in (("fail", "fail"), ("flag", "review")):
        p = Pipeline(store=":memory:", namespace={"topic": name})
        p.step(
            "tagline",
            "One line about {{ topic }}",
            model="offline:t",
            checks=["max_words(1)"],
            retries=0,
            on_fail=on_fail,
        )
        export_pipeline(p, tmp_path / f"{name}.ipynb")

    def papermill(job, out, *params):
        return subprocess.Popen(
            [sys.executable, "-m", "papermill", str(job), str(out), *params, "--no-progress-bar"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    runs = {
        "job": papermill(
            folder / "job.ipynb", tmp_path / "out.ipynb", "-p", "topic", "Pricing pages"
        ),
        "fail": papermill(tmp_path / "fail.ipynb", tmp_path / "fail-out.ipynb"),
        "flag": papermill(tmp_path / "flag.ipynb", tmp_path / "flag-out.ipynb"),
    }
    done = {name: (proc.wait(timeout=240), proc.stderr.read()) for name, proc in runs.items()}

    # the parameter reached the step's rendered prompt (the offline model echoes its first line)
    assert done["job"][0] == 0, done["job"][1][-2000:]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.metadata.papermill.parameters == {"topic": "Pricing pages"}
    db = sqlite3.connect(store)
    prompt, output, state = db.execute(
        "SELECT prompt, output, state FROM results WHERE step='draft' AND item IS NULL"
    ).fetchone()
    assert prompt == "Write about Pricing pages in 120 words."
    assert output.decode().startswith("[offline:writer] Write about Pricing pages in 120 words.")
    assert state == "passed"
    assert (
        db.execute("SELECT output FROM results WHERE step='loud'")
        .fetchone()[0]
        .decode()
        .startswith("[OFFLINE:WRITER] WRITE ABOUT PRICING PAGES")
    )
    summary = "".join(o.get("data", {}).get("text/markdown", "") for o in out.cells[-1].outputs)
    assert "| draft | passed | offline:writer |" in summary

    # --on-fail fail: papermill exits non-zero, the error cell is marked
    code_, err = done["fail"]
    assert code_ != 0 and "StepFailed" in err
    failed = nbformat.read(tmp_path / "fail-out.ipynb", as_version=4)
    assert "papermill-error-cell-tag" in failed.cells[0].metadata.get("tags", [])
    run_cell = next(c for c in failed.cells if c.source == "%conductor run")
    assert run_cell.metadata.papermill["exception"] is True
    assert [o.ename for o in run_cell.outputs if o.output_type == "error"] == ["StepFailed"]

    # --on-fail review: the run succeeds and the flagged output waits in the store
    assert done["flag"][0] == 0, done["flag"][1][-2000:]
    states = dict(
        db.execute(
            "SELECT json_extract(r.params, '$.topic'), s.state FROM results s "
            "JOIN runs r ON s.run_id = r.id WHERE s.step = 'tagline'"
        ).fetchall()
    )
    assert states == {"flag": "flagged", "fail": "failed"}

    # the canary key (in the environment, and pasted in the source) reached no file the runs or
    # the export wrote
    for path in [*tmp_path.rglob("*"), folder / "job.ipynb"]:
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_export_from_kernel_history_when_the_file_is_unknown(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    ip = InteractiveShell.instance()  # the one shell every test in this process shares
    ip.run_line_magic("load_ext", "nbconductor")
    if "__nbconductor__" not in ip.user_ns:  # an earlier test unloaded it
        ip.run_line_magic("reload_ext", "nbconductor")
    magics = ip.user_ns["__nbconductor__"]
    from nbconductor.notebook._commands import cmd_reset

    cmd_reset(magics, [])
    for cell in [
        'audience = "founders"',
        "import textwrap\ndef clip(text):\n    return textwrap.shorten(text, 40)",
        "%%step pitch --model offline:p\nPitch nbconductor to {{ audience }}.",
        "%%step short --python\nclip(pitch)",
        "pitch",
        "%conductor status",
        "x = len(pitch)",
    ]:
        assert ip.run_cell(cell, store_history=True).success, cell
    ip.run_line_magic("conductor", f"export {tmp_path / 'job.ipynb'}")
    job = nbformat.read(tmp_path / "job.ipynb", as_version=4)
    assert job.cells[1].metadata["tags"] == ["parameters"]
    assert job.cells[1].source == "audience = 'founders'"
    body = sources(job)[2:]
    assert body[0] == "%load_ext nbconductor"
    assert "import textwrap\ndef clip(text):\n    return textwrap.shorten(text, 40)" in body
    assert "%%step pitch --model offline:p --lazy\nPitch nbconductor to {{ audience }}." in body
    assert "%%step short --python --lazy\nclip(pitch)" in body
    assert body[-1] == "%conductor run"
    assert not any(s in ("pitch", "x = len(pitch)", "%conductor status") for s in body)
    assert "built from this kernel's history" in job.cells[0].source


def test_export_pipeline_without_ipython_runs_in_process(tmp_path, monkeypatch):
    """A pipeline declared in Python (a function step, a context file) becomes a runnable job."""
    from nbconductor.cli import main

    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    (tmp_path / "voice.md").write_text("Short sentences.")
    p = Pipeline(store=":memory:", namespace={"topic": "queues", "n": 2}, root=tmp_path)
    p.step("draft", "Write about {{ topic }}", model="offline:w", contexts=["tone"])

    @p.function()
    def count(draft, n):
        return len(draft.split()) * n

    p.context("tone", file="voice.md")
    (tmp_path / "jobs").mkdir()
    job = export_pipeline(p, tmp_path / "jobs" / "job.ipynb")
    nb = nbformat.read(job, as_version=4)
    assert nb.cells[1].source == "n = 2\ntopic = 'queues'"
    assert "def count_fn(draft, n):" in sources(nb)[3]
    assert "%%step count --python --lazy\ncount_fn(draft, n)" in sources(nb)
    assert "%%context tone\nShort sentences." in sources(nb)
    assert main(["run", str(job), "-p", "topic", "joins", "-o", str(tmp_path / "out.ipynb")]) == 0
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    summary = json.dumps(out.cells[-1].outputs)
    assert "| count | passed |" in summary and "| draft | passed | offline:w |" in summary


def test_export_refuses_bad_paths(tmp_path):
    p = Pipeline(store=":memory:")
    p.step("a", "hi", model="offline:x")
    with pytest.raises(OptionError, match=r"must be an \.ipynb file"):
        export_pipeline(p, tmp_path / "job.txt")
    with pytest.raises(OptionError, match="not found"):
        export_pipeline(p, tmp_path / "job.ipynb", source_notebook=tmp_path / "missing.ipynb")


def test_export_into_a_missing_folder_or_an_unwritable_place_is_one_line(tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from notebook_shell import fresh_shell

    p = Pipeline(store=":memory:")
    p.step("a", "hi", model="offline:x")
    with pytest.raises(OptionError, match="folder .*jobs' does not exist; create it first"):
        export_pipeline(p, tmp_path / "jobs" / "job.ipynb")
    assert not (tmp_path / "jobs").exists()  # not created behind the user's back
    with pytest.raises(
        OptionError, match=r"^export: cannot write /proc/x\.ipynb: .*; choose another path$"
    ):
        export_pipeline(p, "/proc/x.ipynb")
    ip = fresh_shell(tmp_path, monkeypatch)
    assert ip.run_cell("%%step a --model offline:x --lazy\nhi").success
    with pytest.raises(UsageError, match="does not exist; create it first"):
        ip.run_line_magic("conductor", f"export {tmp_path / 'jbos' / 'job.ipynb'}")
    assert not (tmp_path / "jbos").exists()
    with pytest.raises(UsageError, match="cannot write /proc/x.ipynb"):
        ip.run_line_magic("conductor", "export /proc/x.ipynb")


def test_run_refuses_bad_output_paths_and_unknown_parameters(tmp_path, monkeypatch, capsys):
    from nbconductor.cli import main

    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    job = str(export_pipeline(p, tmp_path / "job.ipynb"))
    (tmp_path / "outdir").mkdir()
    cases = [
        (
            ["-o", str(tmp_path / "missing" / "out.ipynb")],
            "folder",
            "does not exist; create it first",
        ),
        (["-o", str(tmp_path / "outdir")], "-o", "that is a folder"),
        (["-p", "topc", "x"], "-p", "unknown parameter `topc`: did you mean `topic`?"),
        (["-p", "topic", "x", "-p", "topic", "y"], "-p", "-p topic is given twice"),
    ]
    for args, first, expected in cases:
        capsys.readouterr()
        assert main(["run", job, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and first in err and expected in err, err
    assert list((tmp_path / "outdir").iterdir()) == [] and not (tmp_path / "job.out.ipynb").exists()


def test_kernel_death_is_the_one_line_failure_with_the_output_path(tmp_path, capsys):
    from nbconductor.cli import main

    nb = new_notebook(metadata={"kernelspec": KERNEL})
    nb.cells = [
        code("x = 1", "parameters"),
        code("print('before')"),
        code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
        code("print('after')"),
    ]
    nbformat.write(nb, tmp_path / "dies.ipynb")
    out = tmp_path / "dies.out.ipynb"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "dies.ipynb"), "--engine", "kernel", "-o", str(out)]) == 1
    text = capsys.readouterr().err
    ours = [line for line in text.splitlines() if line.startswith("nbconductor")]
    assert ours == [
        "nbconductor: dies.ipynb failed in cell 2: the kernel died (DeadKernelError: Kernel died)"
    ]
    assert f"  the executed notebook, as far as it ran, is {out}" in text
    assert "Traceback" not in text and "Kernel died while waiting" not in text and out.is_file()
