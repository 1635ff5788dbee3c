"""The in-process papermill engine: outputs like a kernel's, errors, isolation between notebooks."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from papermill.exceptions import PapermillExecutionError

from nbconductor.handoff._runner import parse_value

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def notebook(*sources: str, params: str | None = None):
    cells = [new_markdown_cell("# a job")]
    if params is not None:
        cell = new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells += [new_code_cell(s) for s in sources]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL})


def run(tmp_path, nb, engine="nbconductor", name="out.ipynb", **params):
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / name
    pm.execute_notebook(
        str(src),
        str(out),
        parameters=params or None,
        engine_name=engine,
        progress_bar=False,
        cwd=str(tmp_path),
    )
    return nbformat.read(out, as_version=4)


_VOLATILE = [
    (re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}"), "<run>"),  # run ids
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),  # widget model ids
    (re.compile(r"\d+(\.\d+)? ?(ms|s)\b"), "<t>"),  # durations
    (re.compile(r"0x[0-9a-f]+"), "<addr>"),
]


def comparable(nb) -> dict:
    """What must match between two runs of one notebook: cells, outputs, parameters metadata."""

    def norm(value):
        if isinstance(value, str):
            for pattern, repl in _VOLATILE:
                value = pattern.sub(repl, value)
            return value
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items() if k != "transient"}
        return value

    cells = []
    for cell in nb.cells:
        entry = {
            "type": cell.cell_type,
            "source": cell.source,
            "tags": cell.metadata.get("tags", []),
        }
        if cell.cell_type == "code":
            entry["count"] = cell.execution_count
            entry["status"] = cell.metadata.get("papermill", {}).get("status")
            outs = []
            for out in cell.outputs:
                o = dict(out)
                if o["output_type"] == "error":
                    o.pop("traceback")  # file paths and colours differ between processes
                if (
                    outs
                    and o["output_type"] == "stream"
                    and outs[-1]["output_type"] == "stream"
                    and outs[-1]["name"] == o["name"]
                ):
                    outs[-1]["text"] += o[
                        "text"
                    ]  # a kernel may flush one print in several messages
                    continue
                outs.append(o)
            entry["outputs"] = norm(outs)
        cells.append(entry)
    pm_meta = nb.metadata.get("papermill", {})
    return {
        "cells": cells,
        "parameters": pm_meta.get("parameters"),
        "default_parameters": pm_meta.get("default_parameters"),
        "language": nb.metadata.get("language_info", {}).get("name"),
    }


RICH = [
    "import sys\nfrom IPython.display import display, Markdown, Image, clear_output\nprint('hello', topic)",
    "print('to stderr', file=sys.stderr)\ndisplay(Markdown(f'**{topic}**'))\n21 * 2",
    "h = display(Markdown('first'), display_id=True)\nprint('between')\nh.update(Markdown('second'))",
    "print('gone')\nclear_output(wait=True)\nprint('kept')",
    "PNG = bytes.fromhex('89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000001010100186dd8d60000000049454e44ae426082')\nImage(PNG)",
    "x = 1;",
    "%load_ext nbconductor",
    "%%step greet --model offline:g\nHello {{ topic }}",
    "print(greet)",
]


def test_outputs_match_a_kernel_run(tmp_path):
    nb = notebook(*RICH, params="topic = 'x'")
    os.environ["NBCONDUCTOR_STORE"] = str(tmp_path / "k.sqlite")
    try:
        kernel = run(tmp_path, nb, engine=None, name="kernel.ipynb", topic="Pricing")
        os.environ["NBCONDUCTOR_STORE"] = str(tmp_path / "e.sqlite")
        engine = run(tmp_path, nb, name="engine.ipynb", topic="Pricing")
    finally:
        del os.environ["NBCONDUCTOR_STORE"]
    assert comparable(engine) == comparable(kernel)
    outputs = [c.outputs for c in engine.cells if c.cell_type == "code"][
        2:
    ]  # after both parameter cells
    assert outputs[0][0].text == "hello Pricing\n"
    assert [o.output_type for o in outputs[1]] == ["stream", "display_data", "execute_result"]
    assert outputs[1][2].data["text/plain"] == "42" and outputs[1][2].execution_count == 4
    assert outputs[2][0].data["text/markdown"] == "second" and outputs[2][1].text == "between\n"
    assert [o.text for o in outputs[3]] == ["kept\n"]
    assert outputs[4][0].data["image/png"].startswith("iVBORw0KGgo")
    assert outputs[5] == []
    assert "[offline:g] Hello Pricing" in outputs[-1][-1].text
    assert engine.metadata.language_info == kernel.metadata.language_info


def test_an_error_stops_the_run_and_marks_the_cell(tmp_path):
    nb = notebook("a = 1", "raise ValueError('boom')", "b = 2")
    with pytest.raises(PapermillExecutionError) as info:
        run(tmp_path, nb)
    assert info.value.ename == "ValueError" and info.value.evalue == "boom"
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "papermill-error-cell-tag" in out.cells[0].metadata["tags"]
    failing = next(c for c in out.cells if c.source == "raise ValueError('boom')")
    assert failing.metadata.papermill.exception is True and failing.outputs[0].ename == "ValueError"
    assert any("boom" in line for line in failing.outputs[0].traceback)
    assert out.cells[-1].execution_count is None  # never ran


def test_a_usage_error_fails_the_cell_with_its_message(tmp_path):
    nb = notebook("%load_ext nbconductor", "%%step draft --frobnicate\nHi")
    with pytest.raises(PapermillExecutionError) as info:
        run(tmp_path, nb)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    cell = next(c for c in out.cells if c.source.startswith("%%step"))
    assert cell.metadata.papermill.exception is True
    assert "UsageError" in cell.outputs[0].text and "--frobnicate" in cell.outputs[0].text
    assert info.value.cell_index == 2


def test_each_notebook_gets_a_fresh_shell_and_the_process_is_put_back(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "s.sqlite"))
    before = (
        InteractiveShell.initialized() and InteractiveShell.instance(),
        sys.stdout,
        sys.modules["__main__"],
    )
    first = run(
        tmp_path,
        notebook(
            "import os\nos.environ['LEAK'] = '1'\nleak = 'yes'\nget_ipython().execution_count"
        ),
    )
    second = run(
        tmp_path,
        notebook(
            "import os\nprint('leak' in globals(), os.environ.get('LEAK'))",
            "get_ipython().execution_count",
        ),
        name="out2.ipynb",
    )
    count = int(first.cells[1].outputs[0].data["text/plain"])  # 1 or 2, by IPython version
    assert second.cells[1].outputs[0].text == "False None\n"
    # counts restart with each notebook: the second notebook's second cell is one past the first's first
    assert int(second.cells[2].outputs[0].data["text/plain"]) == count + 1
    assert "LEAK" not in os.environ
    after = (
        InteractiveShell.initialized() and InteractiveShell.instance(),
        sys.stdout,
        sys.modules["__main__"],
    )
    assert after == before


def test_inside_a_running_ipython_shell_the_users_shell_is_untouched(tmp_path):
    from IPython import get_ipython
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()  # the one shell every test in this process shares
    ip.user_ns["mine"] = 41
    out = run(tmp_path, notebook("mine = 1\nprint(get_ipython().__class__.__name__)"))
    assert out.cells[1].outputs[0].text == "EngineShell\n"
    assert get_ipython() is ip and ip.user_ns["mine"] == 41


def test_outputs_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-" + "canary0000000000000000")
    out = run(
        tmp_path,
        notebook("import os\nprint(os.environ['OPENAI_API_KEY'])\nos.environ['OPENAI_API_KEY']"),
    )
    text = nbformat.writes(out)
    assert "canary" not in text and text.count("[REDACTED]") == 2


def test_a_cell_that_runs_too_long_fails(tmp_path):
    nb = notebook("import time\ntime.sleep(30)", "after = 1")
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(PapermillExecutionError) as info:
        pm.execute_notebook(
            str(src),
            str(tmp_path / "out.ipynb"),
            engine_name="nbconductor",
            progress_bar=False,
            execution_timeout=1,
        )
    assert info.value.ename == "_CellTimeout"


def test_engine_is_registered_and_papermill_default_is_unchanged():
    from papermill.engines import NBClientEngine, papermill_engines

    from nbconductor.handoff._engine import NBConductorEngine

    assert papermill_engines.get_engine("nbconductor") is NBConductorEngine
    assert papermill_engines.get_engine(None) is NBClientEngine


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("None", None),
        ("3", 3),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("yes", "yes"),
        ("[a, b]", "[a, b]"),
        ("2024-01-01", "2024-01-01"),
    ],
)
def test_p_values_follow_papermill(text, value):
    from papermill.cli import _resolve_type

    assert parse_value(text) == value == _resolve_type(text)


def test_nbconductor_run_picks_the_engine(tmp_path, capsys):
    from nbconductor.cli import main

    nb = notebook("print(topic * 2)", params="topic = 'a'")
    nbformat.write(nb, tmp_path / "plain.ipynb")
    assert (
        main(["run", str(tmp_path / "plain.ipynb"), "-p", "topic", "7", "--engine", "nbconductor"])
        == 0
    )
    out = nbformat.read(tmp_path / "plain.out.ipynb", as_version=4)
    assert out.cells[-1].outputs[0].text == "14\n"
    assert "in-process engine" in capsys.readouterr().out
    nbformat.write(notebook("1/0"), tmp_path / "bad.ipynb")
    assert main(["run", str(tmp_path / "bad.ipynb"), "--engine", "nbconductor"]) == 1
    assert "failed in cell 1: ZeroDivisionError: division by zero" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.ipynb")]) == 2


# ------------------------------------------- the same notebooks by a kernel and in-process

PARITY = {
    "logging": [
        "import logging, sys\nlogging.basicConfig(level=logging.INFO)\nlogger = logging.getLogger('test')\n"
        "logger.info('test text')\nlogger.warning('warned')",
        "logging.getLogger('other').error('second cell')\nprint('after')",
        "logging.getLogger().handlers[0].stream is sys.stderr",
    ],
    "streams_and_warnings": [
        "import sys, warnings\nwarnings.warn('careful')\nprint('x')",
        "print('a')\nprint('b', file=sys.stderr)\nprint('c')\nsys.stderr.write('d\\n')",
        "print('out')\nsys.stdout.flush()\nprint('err', file=sys.stderr)\nprint('out again')",
        "import time\nprint('early')\ntime.sleep(0.6)\nprint('late', file=sys.stderr)",
    ],
    "displays": [
        "from IPython.display import Markdown, clear_output, display, update_display\n"
        "h = display(Markdown('one'), display_id='d1')\nprint('below')",
        "update_display(Markdown('two'), display_id='d1')\nprint('updated')",
        "display(Markdown('three'), display_id='d1')\nh.update(Markdown('four'))",
        "print('gone')\nclear_output(wait=True)\ndisplay(Markdown('kept'))",
    ],
    "sys_exit": ["print('before')", "import sys\nsys.exit(3)", "print('never')"],
}


def _kernel_neutral(nb) -> dict:
    # a kernel's cells are files named after its process id
    return json_loads(re.sub(r"ipykernel_\d+", "ipykernel_<pid>", json_dumps(comparable(nb))))


def json_dumps(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def json_loads(text: str):
    import json

    return json.loads(text)


@pytest.mark.parametrize("name", list(PARITY))
def test_kernel_and_in_process_engine_record_the_same_outputs(tmp_path, name):
    """Logging, warnings, stdout/stderr order, display updates and sys.exit, cell by cell."""
    nb = notebook(*PARITY[name])
    outs = {}
    for engine in (None, "nbconductor"):
        try:
            outs[engine] = run(tmp_path, nb, engine=engine, name=f"{engine}.ipynb")
        except PapermillExecutionError:
            outs[engine] = nbformat.read(tmp_path / f"{engine}.ipynb", as_version=4)
    kernel, engine = _kernel_neutral(outs[None]), _kernel_neutral(outs["nbconductor"])
    for i, (k, e) in enumerate(zip(kernel["cells"], engine["cells"], strict=True)):
        assert e == k, f"cell {i} differs"
    assert engine == kernel


def test_a_notebook_gets_its_own_root_logger_and_the_process_keeps_its_own(tmp_path):
    import logging

    root = logging.getLogger()
    before = root.handlers[:], root.level
    assert before[0], "pytest's log capture handlers are installed, as in any process that logs"
    out = run(tmp_path, notebook(*PARITY["logging"]))
    cells = [c for c in out.cells if c.cell_type == "code"]
    assert cells[0].outputs[0].text == "INFO:test:test text\nWARNING:test:warned\n"
    assert cells[2].outputs[0].data["text/plain"] == "True"
    assert (root.handlers, root.level) == before
    assert logging.getLogger("test").handlers == [] and logging.getLogger("test").level == 0


PAPERMILL_NOTEBOOKS = Path(__file__).parent.parent / "fixtures" / "papermill"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("test_logging", {}),  # basicConfig + logger.info, then an ImportError
        ("sysexit0", {}),
        ("sysexit1", {}),
        ("line_magic_error", {}),
        ("simple_execute", {"msg": "Hello"}),
    ],
)
def test_papermills_own_notebooks_match_a_kernel_run(tmp_path, name, params):
    outs = {}
    for engine in (None, "nbconductor"):
        out = tmp_path / f"{engine}.ipynb"
        try:
            pm.execute_notebook(
                str(PAPERMILL_NOTEBOOKS / f"{name}.ipynb"),
                str(out),
                parameters=params or None,
                engine_name=engine,
                progress_bar=False,
                cwd=str(tmp_path),
            )
        except PapermillExecutionError:
            pass
        outs[engine] = _kernel_neutral(nbformat.read(out, as_version=4))
    assert outs["nbconductor"] == outs[None]
    if name == "test_logging":
        first = next(c for c in outs["nbconductor"]["cells"] if c["type"] == "code")
        assert first["outputs"][0]["text"] == "INFO:test:test text\n"
