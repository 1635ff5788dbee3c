"""``nbconductor batch``: rows in parallel worker processes, failures, a crashed worker, --resume."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from nbconductor import Pipeline
from nbconductor._errors import OptionError
from nbconductor.handoff._batch import read_rows
from nbconductor.handoff._export import export_pipeline

CANARY = "sk-ant-" + "api03-canaryBATCHcanary0123456789abcdef"


def make_job(folder: Path) -> Path:
    """A job whose rows can pass, flag, fail in a step (divisor 0) or kill their worker (crash)."""
    p = Pipeline(store=":memory:", namespace={"topic": "t", "divisor": 1, "crash": False})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("ratio", "len(draft) // divisor", python=True)
    p.step(
        "tagline",
        "One line on {{ topic }}",
        model="offline:t",
        checks=["max_words(1)"],
        retries=0,
        on_fail="review",
    )
    job = export_pipeline(p, folder / "job.ipynb")
    nb = nbformat.read(job, as_version=4)
    # A helper cell that a careless author left in: it prints the key and can kill the process.
    helper = nbformat.v4.new_code_cell(
        "import os\nprint('key in use:', os.environ.get('ANTHROPIC_API_KEY'))\nif crash:\n    os._exit(3)"
    )
    nb.cells.insert(3, helper)
    nb.cells[1].source += "\ncrash = False"
    nbformat.write(nb, job)
    return job


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["topic", "divisor", "crash"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def batch(monkeypatch, capsys):
    """``nbconductor batch job.ipynb ARGS`` in a folder, with a canary key in the environment."""
    from nbconductor.cli import main

    def run(folder: Path, *args: str) -> SimpleNamespace:
        monkeypatch.chdir(folder)
        monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
        monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
        capsys.readouterr()
        code = main(["batch", "job.ipynb", *args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def test_batch_with_a_failing_row_a_crash_and_resume(tmp_path, batch):
    make_job(tmp_path)
    rows = [
        {"topic": "alpha", "divisor": 1, "crash": False},
        {"topic": "beta", "divisor": 0, "crash": False},
        {"topic": "gamma", "divisor": 2, "crash": False},
        {"topic": "delta", "divisor": 1, "crash": True},
    ]
    write_rows(tmp_path / "rows.csv", rows)
    first = batch(tmp_path, "--params", "rows.csv", "--workers", "2", "--out", "out")
    assert first.returncode == 1, first.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"]
    status = {int(i): r["status"] for i, r in manifest.items()}
    assert status == {0: "flagged", 1: "failed", 2: "flagged", 3: "failed"}
    assert "ZeroDivisionError" in manifest["1"]["error"] and manifest["1"]["error"].startswith(
        "cell "
    )
    assert "worker process died (exit code 3)" in manifest["3"]["error"]
    assert manifest["0"]["flagged"] == 1 and manifest["0"]["cost"] == 0
    for i in (0, 1, 2):
        assert (tmp_path / "out" / f"job-00{i}.ipynb").is_file()
    # the summary table, one line per row
    lines = first.stdout.splitlines()
    assert lines[0].split()[:5] == ["row", "status", "flagged", "cost", "time"]
    assert any(line.startswith("1    failed") for line in lines)
    assert "4 rows: 0 passed, 2 flagged, 2 failed" in first.stdout
    assert "nbconductor review --store" in first.stdout
    # every row's runs in one store, each found by its output notebook
    store = tmp_path / ".nbconductor" / "store.sqlite"
    db = sqlite3.connect(store)
    by_nb = dict(db.execute("SELECT notebook, status FROM runs").fetchall())
    assert by_nb == {
        str(tmp_path / "out" / "job-000.ipynb"): "flagged",
        str(tmp_path / "out" / "job-001.ipynb"): "failed",
        str(tmp_path / "out" / "job-002.ipynb"): "flagged",
    }
    flagged = db.execute(
        "SELECT COUNT(*) FROM results WHERE step='tagline' AND state='flagged'"
    ).fetchone()[0]
    assert flagged == 3  # the failing row flagged its tagline too
    # the failing row's notebook marks the failing cell
    failed = nbformat.read(tmp_path / "out" / "job-001.ipynb", as_version=4)
    assert "papermill-error-cell-tag" in failed.cells[0].metadata["tags"]

    # fix the two failed rows and change a finished one: --resume runs exactly those three
    rows[1]["divisor"], rows[3]["crash"], rows[2]["topic"] = 5, False, "gamma ray"
    write_rows(tmp_path / "rows.csv", rows)
    before = {i: r["finished"] for i, r in manifest.items()}
    second = batch(tmp_path, "--params", "rows.csv", "--workers", "2", "--out", "out", "--resume")
    assert second.returncode == 0, second.stderr
    assert "resuming: 1 of 4 rows already finished" in second.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"]
    status = {int(i): r["status"] for i, r in manifest.items()}
    assert status[0] == status[2] == status[3] == "flagged"
    assert status[1] in ("passed", "flagged")  # its flagged tagline may come back from the cache
    assert manifest["0"]["finished"] == before["0"] and manifest["2"]["finished"] != before["2"]
    assert "0    flagged (earlier)" in second.stdout
    runs = dict(db.execute("SELECT notebook, COUNT(*) FROM runs GROUP BY notebook").fetchall())
    assert runs[str(tmp_path / "out" / "job-000.ipynb")] == 1  # not run again
    assert runs[str(tmp_path / "out" / "job-003.ipynb")] == 1
    db.close()

    # the canary key in the runs' environment reached no file the batch wrote
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("job.ipynb", "rows.csv")
    ]
    assert len(written) >= 8
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path
    out0 = (tmp_path / "out" / "job-000.ipynb").read_text()
    assert "key in use: [REDACTED]" in out0


def test_kernel_engine_batch_leaves_no_kernels(tmp_path, batch):
    import psutil

    make_job(tmp_path)
    (tmp_path / "rows.json").write_text(json.dumps([{"topic": "a"}, {"topic": "b", "divisor": 2}]))
    result = batch(tmp_path, "--params", "rows.json", "--workers", "2", "--engine", "kernel")
    assert result.returncode == 0, result.stderr
    assert "kernel engine" in result.stderr
    kernels = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ipykernel_launcher" in " ".join(p.info["cmdline"] or []) and str(tmp_path) in _env_of(p)
    ]
    assert kernels == []
    assert len(list((tmp_path / "batch-out").glob("job-*.ipynb"))) == 2


def _env_of(proc) -> str:
    try:
        return json.dumps(proc.environ())
    except Exception:  # noqa: BLE001
        return ""


def test_read_rows_formats_and_errors(tmp_path):
    (tmp_path / "r.csv").write_text(
        'topic,n,markets,empty\nPricing,3,"[""fr"", ""de""]",\nOps,True,,\n'
    )
    assert read_rows(tmp_path / "r.csv") == [
        {"topic": "Pricing", "n": 3, "markets": ["fr", "de"]},
        {"topic": "Ops", "n": True},
    ]
    (tmp_path / "r.yaml").write_text("- topic: Pricing\n  day: 2024-01-02\n- topic: Ops\n")
    assert read_rows(tmp_path / "r.yaml") == [
        {"topic": "Pricing", "day": "2024-01-02"},
        {"topic": "Ops"},
    ]
    (tmp_path / "r.json").write_text('{"rows": [{"topic": "x"}]}')
    assert read_rows(tmp_path / "r.json") == [{"topic": "x"}]
    (tmp_path / "bad.json").write_text('{"topic": "x"}')
    with pytest.raises(OptionError, match="must hold a list of rows"):
        read_rows(tmp_path / "bad.json")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(OptionError, match=r"use a \.csv, \.yaml or \.json file"):
        read_rows(tmp_path / "r.txt")
    with pytest.raises(OptionError, match="not found"):
        read_rows(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("typo.csv", "topc,divisor\nalpha,1\n", "unknown parameter `topc`: did you mean `topic`?"),
        ("dup.csv", "topic,topic\nalpha,beta\n", "column `topic` appears twice"),
        ("short.csv", "topic,divisor\nalpha,1\nbeta\n", "row 1 has 1 value for 2 columns"),
        ("long.csv", "topic\nalpha,1\n", "row 0 has 2 values for 1 column"),
        ("latin1.csv", "topic\ncaf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
        ("syntax.yaml", "- topic: alpha\n  divisor: [1\n- topic: beta\n", "at line 3, column"),
        ("dup.yaml", "- topic: alpha\n  topic: beta\n", "`topic` appears twice in one row"),
        ("dup.json", '[{"topic": "a", "topic": "b"}]', "`topic` appears twice in one row"),
        (
            "unknown.json",
            '[{"topic": "a"}, {"topic": "b", "wrods": 3}]',
            "unknown parameter `wrods`",
        ),
    ],
)
def test_bad_parameter_files_stop_before_any_row_runs(tmp_path, batch, name, content, expected):
    make_job(tmp_path)
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = batch(tmp_path, "--params", name, "--workers", "1", "--out", "out")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and name in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".nbconductor").exists()


def test_workers_zero_is_an_error_and_counts_read_singular(tmp_path, batch):
    make_job(tmp_path)
    write_rows(tmp_path / "rows.csv", [{"topic": "alpha", "divisor": 1, "crash": False}])
    for bad in ("0", "-2"):
        result = batch(tmp_path, "--params", "rows.csv", "--workers", bad)
        assert result.returncode == 2 and f"--workers must be 1 or more, got {bad}" in result.stderr
    assert not (tmp_path / "batch-out").exists()
    result = batch(tmp_path, "--params", "rows.csv", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "1 row of job.ipynb on 1 local worker," in result.stderr
    assert "1 row: 0 passed, 1 flagged" in result.stdout


def test_a_bad_config_stops_the_batch_naming_file_and_key(tmp_path, batch):
    make_job(tmp_path)
    write_rows(tmp_path / "rows.csv", [{"topic": "alpha", "divisor": 1, "crash": False}])
    (tmp_path / "nbconductor.toml").write_text(
        '[aliases]\nfast = { model = "offline:f", base_ur = "http://x" }\n'
    )
    result = batch(tmp_path, "--params", "rows.csv", "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"nbconductor: {tmp_path / 'nbconductor.toml'}: `aliases.fast.base_ur` is not a setting: "
        "did you mean `base_url`? (known here: model, base_url, api_key_env, structured, concurrency, "
        "api)"
    )
