import pytest

from nbconductor import Pipeline
from nbconductor._templates import available
from nbconductor.cli import main


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_templates_exist():
    assert available() == ["content-factory", "newsletter", "support-triage"]


@pytest.mark.parametrize("name", ["content-factory", "newsletter", "support-triage"])
def test_new_copies_a_template_that_runs_offline(name, tmp_path, capsys):
    target = tmp_path / "mine.ipynb"
    assert main(["new", name, str(target)]) == 0
    assert "created" in capsys.readouterr().out
    run = Pipeline.from_notebook(target, store=tmp_path / "s.sqlite").run()
    assert run.status in ("passed", "flagged"), run.summary()
    assert main(["new", name, str(target)]) == 2  # never overwrites


def test_support_triage_routes_with_when(tmp_path):
    p = Pipeline.from_notebook("templates/support-triage.ipynb", store=tmp_path / "s.sqlite")
    run = p.run({"ticket": "The app crashes when I upload a file"})
    assert run.results["billing"].state == "skipped" and run.results["technical"].state == "passed"
    assert run["reply"] == run["technical"]


def test_unknown_template(capsys):
    assert main(["new", "nope", "x.ipynb"]) == 2
    assert "templates: content-factory, newsletter, support-triage" in capsys.readouterr().err


def test_templates_ship_inside_the_package():
    from nbconductor import _templates

    # the package's templates folder is the repository's templates/, so a wheel carries them
    assert _templates.TEMPLATES_DIR.parent.name == "nbconductor"
    assert (_templates.TEMPLATES_DIR / "newsletter.ipynb").resolve().parent.name == "templates"
