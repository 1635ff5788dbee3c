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

    from ._errors import OptionError

    p = Path(path)
    if not p.is_file():
        raise OptionError(f"notebook {str(path)!r} not found")
    try:
        return nbformat.read(p, as_version=4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise OptionError(f"{p.name} is not a readable notebook: {exc}") from None


def choose_engine(nb, engine: str | None, *, register: bool = True) -> str | None:
    """The papermill engine name for ``nb`` (a dict will do): in-process for exported jobs by default."""
    from ._export import is_job
    from .engine import ENGINE_NAME

    if engine in (None, "", "auto"):
        engine = ENGINE_NAME if is_job(nb) else "nbclient"
    elif engine in KERNEL_NAMES:
        engine = "nbclient"
    if engine == ENGINE_NAME and register:
        from .engine import register as register_engine

        register_engine()  # in case the package was not reinstalled since the entry point was added
    return engine


def engine_label(engine: str | None) -> str:
    return "in-process" if engine == "nbconductor" else "kernel" if engine in (None, "nbclient") else engine


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
    """Redact provider keys in a written notebook (or log); returns whether anything changed."""
    from ._redact import redact

    p = Path(path)
    if not p.is_file():
        return False
    text = p.read_text(encoding="utf-8", errors="replace")
    clean = redact(text)
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
    first = (what.splitlines() or [""])[0]
    return f"cell {exc.cell_index}: {first}"


def _stderr_of(nb_path, cell_index: int) -> str | None:
    try:
        nb = json.loads(Path(nb_path).read_text())
        # papermill inserted two marker cells before the failing one when it wrote the file
        cells = [c for c in nb["cells"] if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
        outs = cells[cell_index].get("outputs", [])
    except (OSError, ValueError, IndexError, KeyError):
        return None
    for out in outs:
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            return text.strip()
    return None


def run_notebook(notebook: str, output: str | None, params: dict[str, str], *, engine: str | None = None) -> int:
    """Execute ``notebook`` with papermill; returns 0, 1 when a cell failed, 2 for bad input."""
    from ._errors import MissingDependency, missing_dependency

    try:
        missing_dependency("papermill", "test", "running notebooks")
    except MissingDependency as exc:
        print(f"nbconductor: {exc}", file=sys.stderr)
        return 2
    import papermill as pm
    from papermill.exceptions import PapermillException, PapermillExecutionError

    nb = read_notebook(notebook)
    engine_name = choose_engine(nb, engine)
    output = output or default_output(notebook)
    values = {k: parse_value(v) for k, v in params.items()}
    try:
        with environ({"JPY_SESSION_NAME": str(Path(notebook).resolve())}):
            pm.execute_notebook(
                notebook, output, parameters=values, engine_name=engine_name,
                cwd=str(Path(notebook).resolve().parent), progress_bar=False,
            )
    except PapermillExecutionError as exc:
        redact_file(output)
        print(f"nbconductor: {Path(notebook).name} failed in {failure_message(exc, output)}\n"
              f"  the executed notebook, with the error cell marked, is {output}", file=sys.stderr)
        return 1
    except PapermillException as exc:
        print(f"nbconductor: {exc} (engines: nbconductor, kernel)", file=sys.stderr)
        return 2
    redact_file(output)
    print(f"nbconductor: ran {notebook} → {output} ({engine_label(engine_name)} engine)")
    return 0
