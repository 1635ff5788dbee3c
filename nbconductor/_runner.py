"""``nbconductor run``: one papermill run of a notebook."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def parse_value(text: str) -> Any:
    """A ``-p`` value: YAML scalars and lists (numbers, booleans, [a, b]); anything else a string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None and text.strip() not in ("null", "~", "None") else value


def default_output(notebook: str) -> str:
    path = Path(notebook)
    return str(path.with_name(path.stem + ".out.ipynb"))


def run_notebook(notebook: str, output: str | None, params: dict[str, str], *, engine: str | None = None) -> int:
    """Execute ``notebook`` with papermill; returns 0, or 1 when a cell failed."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ._errors import missing_dependency

    if not Path(notebook).is_file():
        print(f"nbconductor: notebook {notebook!r} not found", file=sys.stderr)
        return 2
    missing_dependency("papermill", "test", "running notebooks")
    output = output or default_output(notebook)
    kwargs = {"engine_name": engine} if engine else {}
    try:
        pm.execute_notebook(
            notebook, output, parameters={k: parse_value(v) for k, v in params.items()},
            cwd=str(Path(notebook).resolve().parent), progress_bar=False, **kwargs,
        )
    except PapermillExecutionError as exc:
        print(f"nbconductor: {Path(notebook).name} failed in cell {exc.cell_index}: {exc.ename}: {exc.evalue}\n"
              f"  the executed notebook, with the error cell marked, is {output}", file=sys.stderr)
        return 1
    print(f"nbconductor: ran {notebook} → {output}")
    return 0
