"""``nbconductor run``: one papermill run of a notebook.

Exported jobs run on nbconductor's in-process engine by default (no kernel to start); other
notebooks on papermill's kernel engine. ``--engine`` picks either (``nbconductor``, ``kernel``)
or any engine registered with papermill. ``-p`` values follow papermill's rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KERNEL_NAMES = ("kernel", "nbclient")


def parse_value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: True/False/None, an int, a float, else the string."""
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def default_output(notebook: str) -> str:
    path = Path(notebook)
    return str(path.with_name(path.stem + ".out.ipynb"))


def read_notebook(path: str | os.PathLike):
    """The notebook at ``path``; raises `OptionError` naming the problem."""
    import nbformat

    from .._errors import OptionError

    p = Path(path)
    if not p.is_file():
        raise OptionError(f"notebook {str(path)!r} not found")
    try:
        return nbformat.read(p, as_version=4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise OptionError(f"{p.name} is not a readable notebook: {exc}") from None


def choose_engine(nb, engine: str | None, *, register: bool = True) -> str | None:
    """The papermill engine name for ``nb`` (a dict will do): in-process for exported jobs by default."""
    from ._engine import ENGINE_NAME
    from ._export import is_job

    if engine in (None, "", "auto"):
        engine = ENGINE_NAME if is_job(nb) else "nbclient"
    elif engine in KERNEL_NAMES:
        engine = "nbclient"
    if engine == ENGINE_NAME and register:
        from ._engine import register as register_engine

        register_engine()  # in case the package was not reinstalled since the entry point was added
    return engine


def engine_label(engine: str | None) -> str:
    return (
        "in-process"
        if engine == "nbconductor"
        else "kernel"
        if engine in (None, "nbclient")
        else engine
    )


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by a kernel too) for the duration."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def redact_file(path: str | os.PathLike) -> bool:
    """Redact secrets in a written notebook, manifest (string by string: it stays JSON) or log;
    returns whether anything changed."""
    from .._redact import redactor

    p = Path(path)
    if not p.is_file():
        return False
    text = p.read_text(encoding="utf-8", errors="replace")
    clean = redactor().json_text(text) if p.suffix in (".ipynb", ".json") else redactor()(text)
    if clean == text:
        return False
    p.write_text(clean, encoding="utf-8")
    return True


def failure_message(exc, nb_path: str | os.PathLike | None = None) -> str:
    """One line for a `PapermillExecutionError`: the cell, and what went wrong in it."""
    what = f"{exc.ename}: {exc.evalue}".strip().rstrip(":") if exc.evalue else exc.ename
    if exc.ename == "CellExecutionError" and nb_path is not None:
        # No error output (e.g. an IPython UsageError): its message went to stderr.
        what = _stderr_of(nb_path, exc.cell_index) or what
    from .._redact import redact

    first = (redact(what).splitlines() or [""])[0]  # redacted whole, before the cut
    return f"cell {exc.cell_index}: {first}"


def _stderr_of(nb_path, cell_index: int) -> str | None:
    try:
        nb = json.loads(Path(nb_path).read_text())
        # papermill inserted two marker cells before the failing one when it wrote the file
        cells = [
            c
            for c in nb["cells"]
            if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])
        ]
        outs = cells[cell_index].get("outputs", [])
    except (OSError, ValueError, IndexError, KeyError):
        return None
    for out in outs:
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            return text.strip()
    return None


def check_output(output: str, notebook: str) -> None:
    """Raise `OptionError` unless ``-o`` names a file that can be written in an existing folder."""
    from .._errors import OptionError

    out = Path(output)
    if out.is_dir():
        raise OptionError(
            f"-o {output}: that is a folder; give the output notebook's file name "
            f"(e.g. -o {out / Path(notebook).name})"
        )
    if not out.parent.is_dir():
        raise OptionError(
            f"-o {output}: folder {str(out.parent)!r} does not exist; create it first "
            f"(mkdir -p {out.parent})"
        )
    if out.resolve() == Path(notebook).resolve():
        raise OptionError(f"-o {output} is the notebook being run; choose another output file")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OptionError(
            f"-o {output}: cannot write there (permission denied); choose another path"
        )


def cell_text(cell: dict) -> str:
    """A notebook cell's source as one string (nbformat JSON keeps it as a list of lines or a string)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def notebook_parameters(nb) -> set[str] | None:
    """Names the notebook's ``parameters`` cell assigns; None when it has none (or it is not Python)."""
    from .._params import assigned_names

    for cell in nb["cells"]:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get(
            "tags", []
        ):
            return assigned_names(cell_text(cell))
    return None


def check_cli_params(pairs, nb) -> dict[str, Any]:
    """``-p NAME VALUE`` pairs as values; raises `ParameterError` for a bad, repeated or unknown name."""
    from .._errors import ParameterError
    from .._params import check_known, check_name

    items = list(pairs.items()) if isinstance(pairs, dict) else [tuple(p) for p in pairs or []]
    values: dict[str, Any] = {}
    for name, text in items:
        check_name(name, "-p")
        if name in values:
            raise ParameterError(f"-p {name} is given twice: give each parameter once", name=name)
        values[name] = parse_value(text) if isinstance(text, str) else text
    known = notebook_parameters(nb)
    if known is not None:  # without a parameters cell papermill puts the values at the top
        check_known(values, known, "-p")
    return values


@contextlib.contextmanager
def _quiet_kernel_death() -> Iterator[None]:
    """Drop nbclient's own "Kernel died while waiting…" log line: our one line says it."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "Kernel died" not in str(record.msg)

    logger = logging.getLogger("papermill")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _died(exc: BaseException, output: str) -> str:
    """One line for a run that stopped without a cell error (e.g. the kernel died)."""
    what = f"{type(exc).__name__}: {exc}".strip().rstrip(":").splitlines()[0]
    try:
        cells = json.loads(Path(output).read_text())["cells"]
        started = [
            i
            for i, c in enumerate(cells)
            if (c.get("metadata", {}).get("papermill") or {}).get("start_time")
        ]
    except (OSError, ValueError, KeyError, TypeError):
        started = []
    where = f" in cell {started[-1]}" if started else ""
    if type(exc).__name__ == "DeadKernelError":
        return f"failed{where}: the kernel died ({what})"
    return f"failed{where}: {what}"


def run_notebook(notebook: str, output: str | None, params, *, engine: str | None = None) -> int:
    """Execute ``notebook`` with papermill; returns 0, 1 when a cell failed, 2 for bad input.

    ``params`` is a mapping or a list of ``(NAME, VALUE)`` pairs (``-p``); values as papermill
    reads them. Raises `OptionError`/`ParameterError`/`ConfigError` for bad input, before running.
    """
    from .._config import load_config
    from .._redact import redact
    from ._engine_outputs import redacting_every_write

    nb = read_notebook(notebook)
    values = check_cli_params(params, nb)
    output = output or default_output(notebook)
    check_output(output, notebook)
    load_config(
        start=Path(notebook).resolve().parent
    )  # a config error is exit 2 here, not a failed cell
    import papermill as pm
    from papermill.exceptions import PapermillException, PapermillExecutionError

    from ._translator import install_translator

    install_translator()
    engine_name = choose_engine(nb, engine)
    try:
        with (
            environ({"JPY_SESSION_NAME": str(Path(notebook).resolve())}),
            _quiet_kernel_death(),
            redacting_every_write(),
        ):
            pm.execute_notebook(
                notebook,
                output,
                parameters=values,
                engine_name=engine_name,
                cwd=str(Path(notebook).resolve().parent),
                progress_bar=False,
            )
    except PapermillExecutionError as exc:
        redact_file(output)
        print(
            f"nbconductor: {Path(notebook).name} failed in {failure_message(exc, output)}\n"
            f"  the executed notebook, with the error cell marked, is {output}",
            file=sys.stderr,
        )
        return 1
    except PapermillException as exc:
        print(redact(f"nbconductor: {exc} (engines: nbconductor, kernel)"), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a dead kernel and the like: one line, not nbclient's traceback
        redact_file(output)
        where = (
            f"\n  the executed notebook, as far as it ran, is {output}"
            if Path(output).is_file()
            else ""
        )
        print(
            redact(f"nbconductor: {Path(notebook).name} {_died(exc, output)}{where}"),
            file=sys.stderr,
        )
        return 1
    redact_file(output)
    print(f"nbconductor: ran {notebook} → {output} ({engine_label(engine_name)} engine)")
    return 0
