"""Variants of a step: ``pipeline.variant``, ``%%variant``, export and `Pipeline.from_notebook`."""

from __future__ import annotations

import nbformat
import pytest
from IPython.core.error import UsageError
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor._errors import DefinitionError, OptionError
from nbconductor.cli import main
from nbconductor.handoff._export import export_pipeline


def newsletter(tmp_path) -> Pipeline:
    p = Pipeline(store=tmp_path / "store.sqlite", root=tmp_path, namespace={"topic": "queues"})
    p.step("research", "Notes on {{ topic }}", model="offline:notes")
    p.step("draft", "Write about {{ topic }} from {{ research }}", model="offline:writer")
    p.rubric("draft", "- under 100 words", judge="offline:judge")
    return p


def test_a_variant_changes_body_and_options_and_keeps_the_rest(tmp_path):
    p = newsletter(tmp_path)
    concise = p.variant("draft", "concise", "In 50 words: {{ topic }}", model="offline:fast")
    assert (concise.body, concise.model) == ("In 50 words: {{ topic }}", "offline:fast")
    assert concise.rubric == p.steps["draft"].rubric  # the rubric judges every variant
    warm = p.variant("draft", "warm", temperature=0.9, fallback="offline:other")
    assert warm.body == p.steps["draft"].body  # an empty body keeps the step's prompt
    assert (warm.temperature, warm.fallbacks) == (0.9, ["offline:other"])
    assert p.variant_names("draft") == ["base", "concise", "warm"]
    assert p.variant_step("draft", "base") is p.steps["draft"]
    # re-declaring the step carries its variants along
    p.step("draft", "Write a new draft on {{ topic }}", model="offline:v2")
    assert p.variant_step("draft", "warm").body == "Write a new draft on {{ topic }}"
    assert p.variant_step("draft", "concise").model == "offline:fast"


def test_variants_change_nothing_in_a_run(tmp_path):
    p = newsletter(tmp_path)
    before = p.run()["draft"]
    p.variant("draft", "concise", "Tiny: {{ topic }}", model="offline:fast")
    run = p.run()
    assert run["draft"] == before and run.results["draft"].cached


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("nope", "x"), {}, "no step named `nope`"),
        (("drat", "x"), {}, "did you mean `draft`"),
        (("draft", "base"), {}, "`base` is the step `draft` itself"),
        (("draft", "2fast"), {}, "not an identifier"),
        (("draft", "x"), {"after": ["research"]}, "`after` cannot differ between variants"),
        (("draft", "x"), {"temperature": 5}, "--temperature must be a number between 0 and 2"),
        (("draft", "x", "{{ broken"), {}, "step `draft`: template syntax error"),
    ],
)
def test_bad_variants_are_one_line_errors(tmp_path, args, kwargs, message):
    p = newsletter(tmp_path)
    with pytest.raises(DefinitionError, match=message):
        p.variant(*args, **kwargs)
    assert p.variants == {}


def test_unknown_variant_names_the_known_ones(tmp_path):
    p = newsletter(tmp_path)
    p.variant("draft", "concise", model="offline:fast")
    with pytest.raises(OptionError, match="did you mean `concise`"):
        p.variant_step("draft", "consise")


def test_variant_magic_declares_without_running(tmp_path, monkeypatch):
    ip = fresh_shell(tmp_path, monkeypatch)
    ip.run_cell("topic = 'queues'")
    ip.run_cell_magic("step", "draft --model offline:writer", "Write about {{ topic }}")
    magics = ip.user_ns["__nbconductor__"]
    runs = len(magics.pipeline.store.runs())
    ip.run_cell_magic(
        "variant", "draft concise --model offline:fast --temperature 0.3", "Tiny: {{ topic }}"
    )
    assert ip.run_cell(
        "%variant draft warm --system 'Be warm.'"
    ).success  # one line: the step's prompt
    assert len(magics.pipeline.store.runs()) == runs  # nothing ran
    concise = magics.pipeline.variant_step("draft", "concise")
    assert (concise.body, concise.model, concise.temperature) == (
        "Tiny: {{ topic }}",
        "offline:fast",
        0.3,
    )
    warm = magics.pipeline.variant_step("draft", "warm")
    assert (warm.body, warm.system) == ("Write about {{ topic }}", "Be warm.")
    assert "variant:draft:concise" in magics.cells
    for line, message in [
        ("nodraft x", "no step named `nodraft`"),
        ("draft", "needs a step and a name"),
        ("draft x --map 'a in b'", "unrecognized arguments"),
        ("draft x --retries lots", "invalid int value"),
    ]:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("variant", line)
    ip.run_line_magic("conductor", "run")  # unchanged: runs the step as declared
    assert ip.user_ns["draft"].startswith("[offline:writer]")


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


CELLS = [
    "topic = 'queues'",
    "%load_ext nbconductor",
    "%%step draft --model offline:writer\nWrite about {{ topic }}",
    "%%variant draft concise --model offline:fast --max-tokens 200\nIn 50 words: {{ topic }}",
    "%%rubric draft --judge offline:judge\n- under 100 words",
    "%variant draft same --temperature 0.5",
]


def test_from_notebook_reads_variants(tmp_path):
    _notebook(tmp_path / "nb.ipynb", CELLS)
    p = Pipeline.from_notebook(tmp_path / "nb.ipynb", store=":memory:")
    assert p.variant_names("draft") == ["base", "concise", "same"]
    concise = p.variant_step("draft", "concise")
    assert (concise.body, concise.model, concise.max_tokens) == (
        "In 50 words: {{ topic }}",
        "offline:fast",
        200,
    )
    assert concise.rubric is not None and concise.rubric.judge == "offline:judge"
    assert p.variant_step("draft", "same").temperature == 0.5


def test_variants_travel_with_the_exported_job(tmp_path, monkeypatch):
    p = newsletter(tmp_path)
    p.variant(
        "draft",
        "concise",
        "In 50 words: {{ topic }}",
        model="offline:fast",
        checks=["max_words(80)"],
    )
    p.variant("draft", "warm", system="Be warm.")
    job = export_pipeline(p, tmp_path / "job.ipynb")
    sources = [c.source for c in nbformat.read(job, as_version=4).cells]
    assert (
        "%%variant draft concise --model offline:fast --check 'max_words(80)'\nIn 50 words: {{ topic }}"
        in sources
    )
    assert "%variant draft warm --system 'Be warm.'" in sources
    again = Pipeline.from_notebook(job, store=":memory:")
    assert again.variant_step("draft", "concise").checks == ["max_words(80)"]
    assert again.variant_step("draft", "warm").system == "Be warm."
    # and the job still runs as before: variants change nothing in a run
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "job-store.sqlite"))
    assert main(["run", str(job), "-o", str(tmp_path / "out.ipynb")]) == 0


def test_promote_makes_the_variant_the_step_and_puts_its_cell_below(tmp_path, monkeypatch):
    ip = fresh_shell(tmp_path, monkeypatch)
    ip.run_cell("topic = 'queues'")
    ip.run_cell_magic("step", "draft --model offline:writer --lazy", "Write about {{ topic }}")
    ip.run_cell_magic("rubric", "draft --judge offline:judge", "- short")
    ip.run_cell_magic(
        "variant", "draft concise --model offline:fast --temperature 0.2", "Tiny: {{ topic }}"
    )
    monkeypatch.setattr(ip, "rl_next_input", None, raising=False)
    ip.run_line_magic("conductor", "promote draft concise")
    magics = ip.user_ns["__nbconductor__"]
    step = magics.pipeline.steps["draft"]
    assert (step.body, step.model, step.temperature) == ("Tiny: {{ topic }}", "offline:fast", 0.2)
    assert step.rubric is not None and magics.pipeline.variant_names("draft") == ["base"]
    source = "%%step draft --model offline:fast --temperature 0.2\nTiny: {{ topic }}"
    assert ip.rl_next_input == source and magics.cells["draft"] == source
    ip.run_line_magic("conductor", "run")
    assert ip.user_ns["draft"].startswith("[offline:fast] Tiny: queues")
    for line, message in [
        ("promote draft", "needs a step and a variant"),
        ("promote draft concise", "has no variant `concise`"),
        ("promote draft base", "`base` is already the step"),
    ]:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("conductor", line)
