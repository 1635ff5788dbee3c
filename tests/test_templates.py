import pytest

from nbconductor import Pipeline
from nbconductor.cli import main
from nbconductor.handoff._templates import available


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
    from nbconductor.handoff import _templates

    # the package's templates folder is the repository's templates/, so a wheel carries them
    assert _templates.TEMPLATES_DIR.parent.name == "nbconductor"
    assert (_templates.TEMPLATES_DIR / "newsletter.ipynb").resolve().parent.name == "templates"


def test_newsletter_checks_the_word_limit_it_asks_for(tmp_path):
    p = Pipeline.from_notebook("templates/newsletter.ipynb", store=tmp_path / "s.sqlite")
    draft = p.steps["draft"]
    assert draft.checks == ["max_words(word_limit)"]
    run = p.run({"word_limit": 3})  # the offline draft is longer than three words
    gate = next(g for g in run.results["draft"].gates if g.name == "max_words(word_limit)")
    assert not gate.passed and run.results["draft"].state == "flagged"
    run = Pipeline.from_notebook("templates/newsletter.ipynb", store=tmp_path / "t.sqlite").run()
    assert all(g.passed for g in run.results["draft"].gates if g.name.startswith("max_words"))


@pytest.mark.parametrize("name", ["content-factory", "newsletter", "support-triage"])
def test_json_steps_ask_for_an_object_and_templates_say_to_export_before_batch(name):
    import re

    import nbformat

    nb = nbformat.read(f"templates/{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "--json" in cell.source.splitlines()[0]:
            # --json is OpenAI's JSON mode, which always answers with an object (README)
            asked = re.search(r"JSON[^:]*:\s*(\S)", cell.source)
            assert asked and asked[1] == "{", cell.source
    intro = nb.cells[0].source
    assert "%conductor export jobs/" in intro and "nbconductor batch jobs/" in intro
