"""Each magic's options are declared once (`nbconductor._options`): the magic, its ``?`` help and
the notebook reader all come from the same table; ``%conductor?`` documents every subcommand."""

from __future__ import annotations

import nbformat
import pytest
from IPython.core.error import UsageError

from nbconductor import Pipeline
from nbconductor._errors import OptionError
from nbconductor._options import CONTEXT_OPTIONS, RUBRIC_OPTIONS, STEP_OPTIONS
from nbconductor.notebook import _commands

RUBRIC = "%%rubric draft --judge offline:j --threshold 0.6 --retries 1 --on-fail fail --max-tokens 300\n- Is it short?"


@pytest.fixture
def ip(tmp_path, monkeypatch):
    from notebook_shell import fresh_shell

    return fresh_shell(tmp_path, monkeypatch)


def _magic(ip, kind: str, name: str):
    finder = ip.find_line_magic if kind == "line" else ip.find_cell_magic
    return finder(name).__self__


@pytest.mark.parametrize(
    ("magic", "table"),
    [("step", STEP_OPTIONS), ("rubric", RUBRIC_OPTIONS), ("context", CONTEXT_OPTIONS)],
)
def test_the_help_lists_every_option_of_the_table(ip, magic, table):
    doc = " ".join(getattr(_magic(ip, "cell", magic), magic).__doc__.split()).replace("%%", "%")
    for names, kwargs in table:
        assert names[0] in doc
        assert " ".join(kwargs["help"].replace("%%", "%").split()[:4]) in doc


def test_conductor_help_documents_every_subcommand(ip):
    doc = _magic(ip, "line", "conductor").conductor.__doc__
    commands = {n[4:].replace("_", "-") for n in dir(_commands) if n.startswith("cmd_")}
    assert commands == set(_commands.SUBCOMMANDS)
    for name, words in _commands.SUBCOMMANDS.items():
        assert f"%conductor {words}" in doc
        first = " ".join(getattr(_commands, f"cmd_{name.replace('-', '_')}").__doc__.split())
        assert first[:40] in doc
    with pytest.raises(UsageError, match="did you mean `report`"):
        ip.run_line_magic("conductor", "reprt")


def _notebook(tmp_path, *sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_reader_and_the_magic_read_a_rubric_and_a_context_alike(ip, tmp_path):
    (tmp_path / "voice.md").write_text("Warm and direct.")
    cells = (
        "%context voice --file voice.md",
        "%%step draft --lazy --context voice\nWrite.",
        RUBRIC,
    )
    p = Pipeline.from_notebook(_notebook(tmp_path, *cells), store=tmp_path / "s.sqlite")
    ip.run_line_magic("context", "voice --file voice.md")
    for source in cells[1:]:
        first, _, body = source.partition("\n")
        magic, _, line = first[2:].partition(" ")
        ip.run_cell_magic(magic, line, body)
    m = _magic(ip, "cell", "step")
    assert p.steps["draft"].rubric == m.pipeline.steps["draft"].rubric
    assert p.steps["draft"].rubric.threshold == 0.6 and p.steps["draft"].rubric.max_tokens == 300
    assert p.steps["draft"].on_fail == m.pipeline.steps["draft"].on_fail == "fail"
    assert p.contexts == m.pipeline.contexts == {"voice": "Warm and direct."}


def test_the_reader_names_an_unknown_option_like_the_magic(tmp_path):
    path = _notebook(tmp_path, "%%step draft --lazy\nWrite.", "%%rubric draft --treshold 0.5\n- ok")
    with pytest.raises(OptionError, match=r"%%rubric: unrecognized arguments: --treshold"):
        Pipeline.from_notebook(path, store=tmp_path / "s.sqlite")
