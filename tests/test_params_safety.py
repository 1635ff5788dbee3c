"""Parameter names are identifiers, parameter values are data (issue 9 §2).

Every injection attempt goes through every entry point that takes parameters: a batch CSV
header, YAML and JSON keys, ``nbconductor run -p``, papermill (Python API and its CLI),
`Pipeline.run`, `Pipeline.plan`, the intake form and ``%conductor form``. A bad name stops the
command before anything runs (exit 2, one line; a ValueError/UsageError in Python); values
with quotes, newlines and triple quotes arrive as the same strings. No payload ever creates
the marker file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill as pm
import pytest
from IPython.core.error import UsageError
from nbformat.v4 import new_code_cell, new_notebook

from nbconductor import Pipeline
from nbconductor._errors import ParameterError

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
MARK = 'open("MARKER", "w").close()'

# Names that would run code, or bind what they must not, if pasted into a cell.
BAD_NAMES = [
    'topic;import os;os.system("touch MARKER");z',
    f"x=1;{MARK};y",
    f"topic\n{MARK}\nz",
    f"topic\r{MARK}",
    f"topic #\n{MARK}",
    "topic=__import__('os').system('touch MARKER')#",
    f"({MARK})",
    "os.system('touch MARKER')",
    "__import__",
    "__builtins__",
    "import",
    "class",
    "None",
    "lambda",
    "1topic",
    "to pic",
    "",
]

# Values that would break out of papermill's quotes if pasted unescaped: they must arrive whole.
VALUES = [
    f'"; {MARK}; "',
    f"'; {MARK}; '",
    '"""',
    "'''",
    f'""" + {MARK} + """',
    f"line one\n{MARK}\nline three",
    f'\\"; {MARK} #',
    "back\\slash\\",
    f"tab\there\r\n{MARK}",
    "café ✓ \u2028 end",
]


def notebook(folder: Path, names: list[str] | None = None) -> Path:
    """A notebook whose parameters cell sets ``names`` and whose last cell dumps them as JSON."""
    names = names or ["topic"]
    nb = new_notebook(metadata={"kernelspec": KERNEL})
    params = new_code_cell("\n".join(f"{n} = ''" for n in names))
    params.metadata["tags"] = ["parameters"]
    dump = f"import json\njson.dump([{', '.join(names)}], open('seen.json', 'w'))"
    nb.cells = [params, new_code_cell(dump)]
    path = folder / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def no_marker(folder: Path) -> bool:
    return not any(p.name.startswith("MARKER") for p in folder.rglob("*"))


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """``nbconductor ARGS`` in ``tmp_path``, returning exit status and output."""
    from nbconductor.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def one_line_exit_2(result: SimpleNamespace, name: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbconductor: "), result.stderr
    assert repr(name)[1:-1][:20] in lines[0] or name in lines[0], lines[0]


def test_bad_names_in_a_csv_header_yaml_and_json_stop_the_batch(tmp_path, cli):
    import yaml

    nb = notebook(tmp_path)
    for i, name in enumerate(BAD_NAMES):
        (tmp_path / f"rows{i}.json").write_text(json.dumps([{name: "x"}]))
        (tmp_path / f"rows{i}.yaml").write_text(yaml.safe_dump([{name: "x"}]))
        with (tmp_path / f"rows{i}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([[name, "topic"], ["x", "y"]])
        files = [f"rows{i}.json", f"rows{i}.yaml", f"rows{i}.csv"]
        for params in files:
            result = cli("batch", str(nb), "--params", params, "--workers", "1", "--out", "out")
            one_line_exit_2(result, name)
        # the Dask coordinator checks the same, before it connects anywhere
        one_line_exit_2(
            cli(
                "batch",
                str(nb),
                "--params",
                files[0],
                "--dask",
                "tcp://127.0.0.1:9",
                "--out",
                "out",
            ),
            name,
        )
    assert not (tmp_path / "out").exists()  # nothing ran: not even the output folder was made
    assert no_marker(tmp_path)


def test_bad_names_with_run_p_papermill_and_the_python_api(tmp_path, cli):
    nb = notebook(tmp_path)
    for name in BAD_NAMES:
        one_line_exit_2(cli("run", str(nb), "-p", name, "1", "-o", "out.ipynb"), name)
        for engine in ("nbconductor", None):  # the in-process engine and papermill's kernel engine
            with pytest.raises(ValueError, match="parameter name"):
                pm.execute_notebook(
                    str(nb),
                    str(tmp_path / "pm.ipynb"),
                    parameters={name: 1},
                    engine_name=engine,
                    progress_bar=False,
                    cwd=str(tmp_path),
                )
        p = Pipeline(store=":memory:")
        p.step("draft", "Write about {{ topic }}", model="offline:w")
        with pytest.raises(ValueError, match="parameter name"):
            p.run({"topic": "x", name: 1})
        with pytest.raises(ParameterError):
            p.plan({name: 1})
    assert not (tmp_path / "out.ipynb").exists() and not (tmp_path / "seen.json").exists()
    assert no_marker(tmp_path)


def test_plain_papermill_cli_refuses_a_bad_name(tmp_path):
    nb = notebook(tmp_path)
    name = BAD_NAMES[0]
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "o.ipynb"), "-p", name, "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode != 0 and "is not a Python identifier" in run.stderr
    assert not (tmp_path / "seen.json").exists() and no_marker(tmp_path)


def test_the_intake_form_refuses_bad_names(tmp_path, monkeypatch):
    from notebook_shell import fresh_shell

    from nbconductor.notebook.widgets.form import IntakeForm

    for name in BAD_NAMES:
        with pytest.raises(ValueError, match="parameter name"):
            IntakeForm({"topic": "x", name: "y"})
    shell = fresh_shell(tmp_path, monkeypatch)
    assert shell.run_cell("%%step draft --model offline:w --lazy\nWrite about {{ topic }}").success
    for name in BAD_NAMES:
        shell.user_ns["__parameters__"] = ["topic", name]
        with pytest.raises(UsageError, match="parameter name"):
            shell.run_line_magic("conductor", "form")
    assert no_marker(tmp_path)


def test_values_with_quotes_and_newlines_arrive_as_data(tmp_path, cli):
    names = [f"v{i}" for i in range(len(VALUES))]
    nb = notebook(tmp_path, names)
    seen = tmp_path / "seen.json"
    # nbconductor run -p, on both engines
    for engine in ("nbconductor", "kernel"):
        args = [a for n, v in zip(names, VALUES, strict=True) for a in ("-p", n, v)]
        result = cli("run", str(nb), *args, "-o", "out.ipynb", "--engine", engine)
        assert result.returncode == 0, result.stderr
        assert json.loads(seen.read_text()) == VALUES
        seen.unlink()
    # papermill's Python API with the in-process engine, values nested in lists and dicts too
    nested = {n: {"text": v, "list": [v]} for n, v in zip(names, VALUES, strict=True)}
    pm.execute_notebook(
        str(nb),
        str(tmp_path / "pm.ipynb"),
        parameters=nested,
        engine_name="nbconductor",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    assert json.loads(seen.read_text()) == [nested[n] for n in names]
    seen.unlink()
    # a batch from JSON and from CSV (one row each)
    (tmp_path / "rows.json").write_text(json.dumps([dict(zip(names, VALUES, strict=True))]))
    with (tmp_path / "rows.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([names, VALUES])
    for params, expected in (("rows.json", VALUES), ("rows.csv", VALUES)):
        result = cli(
            "batch",
            str(nb),
            "--params",
            params,
            "--workers",
            "1",
            "--out",
            "out",
            "--engine",
            "nbconductor",
        )
        assert result.returncode == 0, result.stderr + result.stdout
        assert json.loads(seen.read_text()) == expected
        seen.unlink()
    assert no_marker(tmp_path)


def test_values_that_are_not_data_are_refused_or_quoted(tmp_path, cli):
    nb = notebook(tmp_path)
    payload = f'"+{MARK}+"'
    yaml_rows = {
        "binary.yaml": "- topic: !!binary "
        + __import__("base64").b64encode(payload.encode()).decode()
        + "\n",
        "set.yaml": f"- topic: !!set {{'{payload}': null}}\n",
        "object.yaml": "- topic: !!python/object/apply:os.system ['touch MARKER']\n",
    }
    for name, text in yaml_rows.items():
        (tmp_path / name).write_text(text)
        result = cli("batch", str(nb), "--params", name, "--workers", "1", "--out", "out")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )
    # papermill's own Python API pastes str() of other types between quotes: now escaped
    pm.execute_notebook(
        str(nb),
        str(tmp_path / "pm.ipynb"),
        parameters={"topic": payload.encode()},
        engine_name="nbconductor",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    assert json.loads((tmp_path / "seen.json").read_text()) == [str(payload.encode())]
    assert no_marker(tmp_path)


def test_an_injected_cell_that_holds_code_does_not_run(tmp_path, cli):
    nb = nbformat.read(notebook(tmp_path), as_version=4)
    cell = new_code_cell(f"# Parameters\ntopic = 'x'\n{MARK}")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, cell)
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = cli("run", "nb.ipynb", "--engine", "nbconductor", "-o", "out.ipynb")
    assert result.returncode == 2 and "holds code" in result.stderr, result.stderr
    assert no_marker(tmp_path) and not (tmp_path / "seen.json").exists()


def test_exported_parameters_cell_is_literals(tmp_path):
    from nbconductor.handoff._export_cells import params_source

    assert (
        params_source({"topic": 'a"""b\n', "n": [1, {"k": None}]})
        == "topic = 'a\"\"\"b\\n'\nn = [1, {'k': None}]"
    )
    with pytest.raises(ParameterError):
        params_source({BAD_NAMES[0]: 1})
