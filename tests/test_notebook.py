import nbformat

from nbconductor import Pipeline
from nbconductor._notebook import cell_kind

QUICKSTART = "notebooks/quickstart.ipynb"


def test_from_notebook_reads_the_quickstart(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = Pipeline.from_notebook(QUICKSTART, store=tmp_path / "s.sqlite")
    assert list(p.steps) == ["research", "draft", "translate", "stats"]
    assert p.steps["draft"].contexts == ["brand_voice"] and p.steps["draft"].rubric.threshold == 0.8
    assert p.steps["translate"].map == "lang in markets"
    assert p.namespace["markets"] == ["fr", "de", "ja"]
    assert p.graph.deps["stats"] == {"draft", "translate"}
    run = p.run({"topic": "Pricing pages", "markets": ["it"]}, targets=["translate"])
    assert run["translate"][0].startswith("[offline:fast] Translate into it")
    assert "stats" not in run.results


def test_cell_kinds():
    assert cell_kind("%%step a\nx") == "step"
    assert cell_kind("  %%rubric a --judge j\n- ok") == "rubric"
    assert cell_kind("%context v --file v.md") == "context"
    assert cell_kind("%load_ext nbconductor") == "load_ext"
    assert cell_kind("# comment\n%conductor graph") == "conductor"
    assert cell_kind("x = 1") == "code"


def test_helper_cells_are_executed_and_skip_export_is_not(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("n = 3", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("def double(x):\n    return 2 * x"),
        nbformat.v4.new_code_cell(
            "raise RuntimeError('exploration only')", metadata={"tags": ["skip-export"]}
        ),
        nbformat.v4.new_code_cell("%%step twice --python\ndouble(n)"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    p = Pipeline.from_notebook(path, store=tmp_path / "s.sqlite")
    assert p.run()["twice"] == 6
    assert p.run({"n": 5})["twice"] == 10


def test_cli_run_offline_never_calls_a_provider(tmp_path, monkeypatch):
    """`nbconductor run --offline` (README's first command) runs the quickstart offline even with keys set."""
    import shutil
    import subprocess
    import sys

    shutil.copy(QUICKSTART, tmp_path / "q.ipynb")
    env = {
        **__import__("os").environ,
        "ANTHROPIC_API_KEY": "not-a-real-key",
        "NBCONDUCTOR_STORE": str(tmp_path / "s.sqlite"),
    }
    env.pop("NBCONDUCTOR_OFFLINE", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbconductor",
            "run",
            str(tmp_path / "q.ipynb"),
            "--offline",
            "-o",
            str(tmp_path / "out.ipynb"),
            "-p",
            "topic",
            "Pricing pages",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = str([c.get("outputs") for c in nb.cells])
    assert "[offline:writer] Write a newsletter issue about Pricing pages" in text
    assert "anthropic:" not in text
