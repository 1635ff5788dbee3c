"""Secrets reach no file and no display (issue 9 §4): one test per leak, then a canary scan.

The canaries are made at run time (random hex), so no secret-shaped literal is in the repository.
They are put in the environment under secret-looking names that nbconductor did not redact
before (``AWS_SECRET_ACCESS_KEY``, ``MY_DB_PASSWORD``) and one it did (``GITHUB_TOKEN``), and
passed as parameter values — what a user does with ``-p token "$GITHUB_TOKEN"``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from IPython.utils.capture import capture_output
from nbformat.v4 import new_code_cell, new_notebook
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor._errors import ConfigError
from nbconductor._redact import REDACTED, redact
from nbconductor.handoff._export import export_pipeline

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
CANARIES = {
    "AWS_SECRET_ACCESS_KEY": "aws" + secrets.token_hex(10),
    "MY_DB_PASSWORD": f"pw-{secrets.token_hex(4)}-{secrets.token_hex(4)}",
    "GITHUB_TOKEN": "ghp_" + secrets.token_hex(12),
}
AWS, DB, TOKEN = (
    CANARIES["AWS_SECRET_ACCESS_KEY"],
    CANARIES["MY_DB_PASSWORD"],
    CANARIES["GITHUB_TOKEN"],
)
DB_SPACED = DB.replace("-", " ")  # the password echoed with its hyphens turned into spaces


def needles() -> list[bytes]:
    """Every form of a canary that must not be found: as given, separator-changed, and its parts."""
    forms = {*CANARIES.values(), DB_SPACED, DB.replace("-", ""), TOKEN.replace("_", " ")}
    forms |= {p for p in DB.split("-") if len(p) >= 8}
    return sorted(f.encode() for f in forms)


def hits(path: Path) -> list[str]:
    data = path.read_bytes()
    return [n.decode() for n in needles() if n in data]


@pytest.fixture
def canary_env(monkeypatch):
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)


# ------------------------------------------------------------------- the mechanism itself


def test_redact_secret_named_variables_and_separator_variants(canary_env, monkeypatch):
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")  # a name that says nothing: kept
    text = (
        f"aws={AWS} db={DB} spaced={DB_SPACED} joined={DB.replace('-', '')} under={DB.replace('-', '_')} "
        f"slashed={DB.replace('-', ' / ')} token={TOKEN} token-spaced={TOKEN.replace('_', ' ')} "
        "url=postgresql://ann:s3cretpw@db.example/prod plain=not-a-secret-value words=password token"
    )
    clean = redact(text)
    for secret in needles():
        assert secret.decode() not in clean
    assert "s3cretpw" not in clean and "postgresql://ann:[REDACTED]@db.example/prod" in clean
    assert "plain=not-a-secret-value words=password token" in clean
    # a JSON document stays JSON: a match never spans two of its strings
    from nbconductor._redact import redactor

    doc = json.dumps({"a": [DB, DB.split("-")[1], DB.split("-")[2]], "b": f"x {DB_SPACED} y"})
    assert json.loads(redactor().json_text(doc)) == {
        "a": [REDACTED, *DB.split("-")[1:]],
        "b": f"x {REDACTED} y",
    }


def test_a_secret_with_quotes_or_non_ascii_is_redacted_inside_json_text(monkeypatch):
    """Store columns hold JSON text (json.dumps escapes `"` and, by default, non-ASCII)."""
    odd = f'qu"ote-p\u00e4ssw\u00f6rd-{secrets.token_hex(3)}'
    monkeypatch.setenv("ODD_PASSWORD", odd)
    for text in (
        json.dumps({"a": f"x {odd} y"}),
        json.dumps({"a": odd}, ensure_ascii=False),
        f"x {odd} y",
    ):
        clean = redact(text)
        assert REDACTED in clean and odd.split("-")[-1] not in clean, clean
        if text.startswith("{"):
            assert json.loads(clean)["a"] in (REDACTED, f"x {REDACTED} y")


def test_redact_config_section_adds_patterns_and_variables(tmp_path, monkeypatch):
    """``[redact]`` in nbconductor.toml: more patterns and variable names; a bad regex is one line."""
    code = "DEPLOY-" + secrets.token_hex(6).upper()
    monkeypatch.setenv("DEPLOY_CODE_VALUE", code)  # a name that does not look secret
    corp = f"corp-{secrets.token_hex(8)}"
    (tmp_path / "nbconductor.toml").write_text(
        '[redact]\npatterns = ["corp-[0-9a-f]{16}"]\nvariables = ["DEPLOY_CODE_VALUE"]\n'
    )
    p = Pipeline(
        store=tmp_path / "store.sqlite", namespace={"code": code, "corp": corp}, root=tmp_path
    )
    p.step("say", "Tell {{ code }} and {{ corp }}", model="offline:w")
    assert p.run().results["say"].state == "passed"
    p.close()
    for f in tmp_path.iterdir():
        assert code.encode() not in f.read_bytes() and corp.encode() not in f.read_bytes(), f
    (tmp_path / "nbconductor.toml").write_text('[redact]\npatterns = ["corp-(["]\n')
    with pytest.raises(ConfigError, match=r"corp-\(\[.* not a regular expression"):
        Pipeline(store=":memory:", root=tmp_path)


# ------------------------------------------------------------------- one test per leak


def test_secret_variables_never_reach_the_store(canary_env, tmp_path):
    """Values of *_SECRET*/*_PASSWORD variables, also echoed with other separators: no column, no WAL."""
    p = Pipeline(
        store=tmp_path / "store.sqlite", namespace={"token": TOKEN, "db": DB}, root=tmp_path
    )
    p.step("draft", "Use {{ token }} and {{ db }}", model="offline:w")

    @p.function()
    def leak(draft):
        return {
            "aws": os.environ["AWS_SECRET_ACCESS_KEY"],
            "spaced": os.environ["MY_DB_PASSWORD"].replace("-", " "),
        }

    @p.function()
    def boom(draft):
        raise ValueError(f"cannot connect with {os.environ['AWS_SECRET_ACCESS_KEY']}")

    assert p.run().results["boom"].state == "failed"
    files = sorted(tmp_path.glob("store.sqlite*"))
    assert any(f.name.endswith("-wal") for f in files)  # still open: the WAL is checked too
    assert {str(f): hits(f) for f in files} == {str(f): [] for f in files}
    p.close()
    db = sqlite3.connect(tmp_path / "store.sqlite")
    assert REDACTED in db.execute("SELECT prompt FROM results WHERE step='draft'").fetchone()[0]
    assert REDACTED in db.execute("SELECT params FROM runs").fetchone()[0]
    assert json.loads(db.execute("SELECT output FROM results WHERE step='leak'").fetchone()[0]) == {
        "aws": REDACTED,
        "spaced": REDACTED,
    }
    assert REDACTED in db.execute("SELECT error FROM results WHERE step='boom'").fetchone()[0]
    db.close()


def test_live_preview_redacts_a_key_split_across_chunks(canary_env, monkeypatch):
    """What the stream preview shows is redacted as a whole: neither half of a split key shows."""
    from nbconductor.notebook import _display

    shown: list[str] = []

    class Handle:
        def update(self, obj):
            shown.append(getattr(obj, "data", "") or "")

    def display(obj, display_id=False):
        shown.append(obj.data)
        return Handle()

    monkeypatch.setattr(_display, "display", display)
    live = _display.LiveText(interval=0)
    half = len(AWS) // 2
    for chunk in (
        "The key is ",
        AWS[:half],
        AWS[half:],
        " and the password ",
        DB[:5],
        DB[5:],
        ", done. " + "More text. " * 12,
    ):
        live("text", "draft", chunk)
    assert shown and "The key is" in shown[-1] and REDACTED in shown[-1]
    assert shown[-1].endswith("More text. ")  # text that cannot start a secret is not held back
    for text in shown:
        assert AWS[:half] not in text and AWS[half:] not in text and DB.split("-")[1] not in text, (
            text
        )


def test_streamed_step_preview_never_shows_a_split_key(canary_env, fake_api, tmp_path, monkeypatch):
    """End to end: a model streams a key split over its deltas into a `%%step` cell's preview."""
    import functools

    from fakeapi import Text
    from IPython.core.displaypub import DisplayPublisher

    from nbconductor.notebook import _display

    shell = fresh_shell(tmp_path, monkeypatch)
    shown: list[str] = []

    class Recorder(DisplayPublisher):
        def publish(self, data, metadata=None, *args, **kwargs):
            shown.append(json.dumps(data, default=str))

    monkeypatch.setattr(
        shell, "display_pub", Recorder(shell=shell)
    )  # not redacting: what LiveText sends
    monkeypatch.setattr(_display, "LiveText", functools.partial(_display.LiveText, interval=0))
    reply = f"Here it is: {AWS} and that is all there is to say about it, really, truly."
    fake_api.script(Text(reply, chunks=6), endpoint="anthropic")
    shell.run_cell("%%step draft --model anthropic:claude-haiku-4-5\nTell me the key")
    previews = [s for s in shown if "streaming" in s]
    assert len(previews) >= 3, shown  # the preview did update while the text arrived
    half = len(AWS) // 2
    for text in shown:
        assert AWS[:half] not in text and AWS[half:] not in text, text
    assert any(
        "Here it is: [REDACTED] and" in text for text in shown
    )  # the output, shown at the end


def test_errors_and_usage_errors_shown_in_a_kernel_are_redacted(canary_env, tmp_path, monkeypatch):
    shell = fresh_shell(tmp_path, monkeypatch)
    with capture_output() as cap:
        shell.run_cell(
            "import os\nraise ValueError('db password is ' + os.environ['MY_DB_PASSWORD'])"
        )
        shell.run_cell(f"%conductor show {TOKEN}")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout + cap.stderr)  # no colours
    assert "ValueError: db password is [REDACTED]" in shown
    assert "UsageError: %conductor show:" in shown and "`[REDACTED]`" in shown
    assert DB not in shown and TOKEN not in shown


def test_displays_in_a_kernel_are_redacted(canary_env, tmp_path, monkeypatch):
    """A step's output and `%conductor run`'s summary, shown in a notebook: their text is redacted."""
    from IPython.core.displaypub import DisplayPublisher

    from nbconductor.notebook._display import install_shell_redaction

    shell = fresh_shell(tmp_path, monkeypatch)
    shown: list[str] = []

    class Recorder(DisplayPublisher):  # what a kernel would send to the browser
        def publish(self, data, metadata=None, *args, **kwargs):
            shown.append(json.dumps(data, default=str))

    monkeypatch.setattr(shell, "display_pub", Recorder(shell=shell))
    install_shell_redaction(shell)  # %load_ext does this for the kernel's own publisher
    shell.run_cell(
        "import os\ndef leak():\n    return 'aws ' + os.environ['AWS_SECRET_ACCESS_KEY']"
    )
    shell.run_cell("%%step echo --python\nleak()")
    shell.run_cell("%conductor run")
    text = "".join(shown)
    assert text.count("aws [REDACTED]") >= 2, text  # the output, and the summary's preview of it
    assert AWS not in text


def test_papermill_saves_are_redacted_while_nbconductor_runs_a_notebook(canary_env, tmp_path):
    """Each save papermill makes (not only the last): a notebook using nbconductor always, any
    notebook while `nbconductor run` or a batch row runs it."""
    from papermill.iorw import write_ipynb

    from nbconductor.handoff._engine_outputs import install_write_redaction, redacting_every_write

    install_write_redaction()
    plain = new_notebook(cells=[new_code_cell(f"print({DB!r})")])
    ours = new_notebook(
        cells=[new_code_cell("%load_ext nbconductor"), new_code_cell(f"token = {TOKEN!r}")]
    )
    write_ipynb(plain, str(tmp_path / "plain.ipynb"))
    write_ipynb(ours, str(tmp_path / "ours.ipynb"))
    with redacting_every_write():
        write_ipynb(plain, str(tmp_path / "plain-run.ipynb"))
    assert (
        DB in (tmp_path / "plain.ipynb").read_text()
    )  # papermill's own runs of other notebooks: untouched
    assert hits(tmp_path / "ours.ipynb") == [] and hits(tmp_path / "plain-run.ipynb") == []
    assert (
        nbformat.read(tmp_path / "ours.ipynb", as_version=4).cells[1].source
        == f"token = {REDACTED!r}"
    )
    assert (
        plain.cells[0].source == f"print({DB!r})"
    )  # the notebook in memory, which runs, is unchanged


def test_dask_rows_are_redacted_with_the_coordinators_secrets(tmp_path, monkeypatch):
    """A Dask worker redacts with its own environment; the secret a row was given on the
    coordinator (``token`` = the coordinator's GITHUB_TOKEN) is redacted when the row lands."""
    from nbconductor.handoff._dask import _land, dump_store
    from nbconductor.handoff._row import Row

    monkeypatch.delenv(
        "GITHUB_TOKEN", raising=False
    )  # the worker's side: it does not know the token
    worker = Pipeline(store=tmp_path / "worker.sqlite", namespace={"token": TOKEN})
    worker.step("draft", "Use {{ token }}", model="offline:w")
    worker.run({"token": TOKEN})
    worker.close()
    notebook = nbformat.writes(new_notebook(cells=[new_code_cell(f"token = {TOKEN!r}")]))
    result = {
        "index": 0,
        "notebook_text": notebook,
        "store_rows": dump_store(tmp_path / "worker.sqlite"),
    }
    assert TOKEN in json.dumps(result, default=lambda b: b.decode())  # what the worker sent back
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)  # the coordinator's side
    row = Row(0, {"token": TOKEN}, str(tmp_path / "out" / "row-000.ipynb"))
    _land(result, row, str(tmp_path / "batch.sqlite"))
    written = [tmp_path / "out" / "row-000.ipynb", *tmp_path.glob("batch.sqlite*")]
    assert {f.name: hits(f) for f in written} == {f.name: [] for f in written}
    db = sqlite3.connect(tmp_path / "batch.sqlite")
    assert db.execute("SELECT prompt FROM results").fetchone()[0] == f"Use {REDACTED}"
    db.close()


def test_kernel_engine_stderr_line_is_redacted(canary_env, tmp_path, capsys):
    """``nbconductor run --engine kernel``: the one-line failure on stderr, and the notebook."""
    from nbconductor.cli import main

    nb = new_notebook(metadata={"kernelspec": KERNEL})
    nb.cells = [
        new_code_cell("import os\nraise RuntimeError('bad token ' + os.environ['GITHUB_TOKEN'])")
    ]
    nbformat.write(nb, tmp_path / "plain.ipynb")
    code = main(
        [
            "run",
            str(tmp_path / "plain.ipynb"),
            "--engine",
            "kernel",
            "-o",
            str(tmp_path / "out.ipynb"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "failed in cell 0: RuntimeError: bad token [REDACTED]" in err
    assert TOKEN not in err and hits(tmp_path / "out.ipynb") == []


# --------------------------------------------- run, export, batch and papermill, then a scan


def make_pipeline(store) -> Pipeline:
    """A pipeline whose parameter is a token, a step that echoes secrets, one that fails quoting one."""
    p = Pipeline(store=store, namespace={"token": TOKEN, "fail": False})
    p.step("draft", "Write with {{ token }}", model="offline:w")

    @p.function()
    def leak(draft, token):
        import os

        return f"{draft} | aws {os.environ['AWS_SECRET_ACCESS_KEY']} | db {os.environ['MY_DB_PASSWORD'].replace('-', ' ')}"

    @p.function()
    def boom(leak, token, fail):
        if fail:
            raise ValueError(f"cannot log in with {token}")
        return "ok"

    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every way nbconductor writes: a Pipeline run, an export, ``nbconductor run`` (both engines,
    passing and failing), ``nbconductor batch``, plain ``papermill`` (both engines, passing and failing)."""
    from nbconductor.cli import main

    folder = tmp_path_factory.mktemp("redaction")
    store = folder / ".nbconductor" / "store.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CANARIES.items():
            mp.setenv(name, value)
        mp.setenv("NBCONDUCTOR_STORE", str(store))
        mp.delenv("JPY_SESSION_NAME", raising=False)
        mp.chdir(folder)
        env = dict(os.environ)

        def papermill(out: str, *args: str) -> subprocess.Popen:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "papermill",
                    "job.ipynb",
                    out,
                    "-p",
                    "token",
                    TOKEN,
                    *args,
                    "--no-progress-bar",
                ],
                env=env,
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        p = make_pipeline(store)
        pipeline_run = p.run()
        export_pipeline(p, folder / "job.ipynb")
        procs = {  # the slow ones (a kernel each) start first and run while the rest runs here
            "pm": papermill("pm-out.ipynb"),
            "pm-fail": papermill("pm-fail.ipynb", "-p", "fail", "True"),
            "pm-inproc": papermill("pm-inproc.ipynb", "--engine", "nbconductor"),
        }
        cli: dict[str, tuple[int, str]] = {}
        for name, args in {
            "run": ["run", "job.ipynb", "-p", "token", TOKEN, "-o", "run-out.ipynb"],
            "run-kernel-fail": [
                "run",
                "job.ipynb",
                "--engine",
                "kernel",
                "-p",
                "token",
                TOKEN,
                "-p",
                "fail",
                "True",
                "-o",
                "run-fail.ipynb",
            ],
            "batch": [
                "batch",
                "job.ipynb",
                "--params",
                "rows.json",
                "--workers",
                "2",
                "--out",
                "batch",
            ],
        }.items():
            if name == "batch":
                rows = [{"token": TOKEN, "fail": False}, {"token": DB, "fail": True}]
                (folder / "rows.json").write_text(json.dumps(rows))
            with capture_output() as cap:
                code = main(args)
            cli[name] = (code, cap.stdout + cap.stderr)
        done = {
            name: (proc.wait(timeout=300), proc.stdout.read() + proc.stderr.read())
            for name, proc in procs.items()
        }
        yield SimpleNamespace(
            folder=folder, store=store, pipeline=p, pipeline_run=pipeline_run, cli=cli, pm=done
        )
        p.close()


def test_export_has_no_secret_parameter_value(runs):
    job = (runs.folder / "job.ipynb").read_text()
    assert TOKEN not in job and f"token = {REDACTED!r}" in job


def test_batch_manifest_and_summary_hold_no_secret(runs):
    code, printed = runs.cli["batch"]
    assert code == 1  # the second row fails on purpose
    manifest = json.loads((runs.folder / "batch" / "manifest.json").read_text())
    rows = manifest["rows"]
    assert [rows[i]["params"]["token"] for i in ("0", "1")] == [REDACTED, REDACTED]
    assert rows["1"]["status"] == "failed" and "cannot log in with [REDACTED]" in rows["1"]["error"]
    assert hits(runs.folder / "batch" / "manifest.json") == []
    assert [n for n in needles() if n.decode() in printed] == []


def test_plain_papermill_of_an_exported_job(runs):
    """The injected parameters cell and the exception message, kernel engine and in-process engine."""
    for name, file in (("pm", "pm-out.ipynb"), ("pm-inproc", "pm-inproc.ipynb")):
        code, printed = runs.pm[name]
        assert code == 0, printed[-2000:]
        assert [n for n in needles() if n.decode() in printed] == []
        out = nbformat.read(runs.folder / file, as_version=4)
        injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert REDACTED in injected.source and TOKEN not in injected.source
        assert out.metadata.papermill.parameters == {"token": REDACTED}
    code, printed = runs.pm["pm-fail"]
    assert code != 0 and "cannot log in with [REDACTED]" in printed, printed[-3000:]
    assert [n for n in needles() if n.decode() in printed] == []
    failed = (runs.folder / "pm-fail.ipynb").read_text()
    assert "StepFailed" in failed and "cannot log in with [REDACTED]" in failed


def test_nbconductor_run_output_and_failure_line(runs):
    assert runs.cli["run"][0] == 0, runs.cli["run"][1]
    code, printed = runs.cli["run-kernel-fail"]
    assert code == 1 and "cannot log in with [REDACTED]" in printed, printed
    assert [n for n in needles() if n.decode() in printed] == []


def test_canary_scan_of_every_file_written(runs, capsys):
    """Every file the runs wrote — store (and its WAL), notebooks, manifest, logs — holds no canary."""
    files = [f for f in runs.folder.rglob("*") if f.is_file() and f.name != "rows.json"]
    found = {str(f.relative_to(runs.folder)): hits(f) for f in files}
    found = {k: v for k, v in found.items() if v}
    kinds = {f.suffix or f.name for f in files}
    with capsys.disabled():
        print(
            f"\ncanary scan: {len(files)} files scanned ({', '.join(sorted(kinds))}), "
            f"{len(needles())} canary forms, {sum(map(len, found.values()))} hits"
        )
    assert found == {}
    assert {".ipynb", ".json", ".sqlite"} <= kinds and len(files) >= 10
    names = {f.name for f in files}
    assert {
        "job.ipynb",
        "pm-out.ipynb",
        "pm-fail.ipynb",
        "run-out.ipynb",
        "run-fail.ipynb",
        "manifest.json",
    } <= names
