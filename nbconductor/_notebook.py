"""Reading pipelines out of ``.ipynb`` files written with the magics."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Any

MAGIC_CELLS = ("%%step", "%%context", "%%rubric")


def cell_kind(source: str) -> str:
    """'step' | 'context' | 'rubric' | 'load_ext' | 'conductor' | 'code'."""
    text = source.lstrip()
    for magic in MAGIC_CELLS:
        if text.startswith(magic + " ") or text.startswith(magic + "\n") or text == magic:
            return magic[2:]
    if text.startswith("%context "):
        return "context"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if lines and all(ln.startswith("%load_ext") for ln in lines):
        return "load_ext"
    if lines and all(ln.startswith("%conductor") for ln in lines):
        return "conductor"
    return "code"


def split_magic(source: str) -> tuple[str, str]:
    """(the options line after the magic name, the body)."""
    text = source.lstrip()
    first, _, body = text.partition("\n")
    return first.split(None, 1)[1] if " " in first else "", body


def parameters_cell(nb) -> Any | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def parameter_values(source: str) -> dict[str, Any]:
    """Literal assignments of a parameters cell, by name, in order."""
    out: dict[str, Any] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return out
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and node.value is not None:
                    try:
                        out[t.id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
    return out


def current_parameters(shell) -> dict[str, Any]:
    """The parameters cell's names with their current values in the kernel."""
    import nbformat

    magics = shell.user_ns.get("__nbconductor__")
    path = magics.pipeline.notebook if magics else None
    names: list[str] = []
    if path and Path(path).is_file():
        cell = parameters_cell(nbformat.read(path, as_version=4))
        names = list(parameter_values(cell.source)) if cell else []
    if not names:
        names = shell.user_ns.get("__parameters__", [])
    return {n: shell.user_ns.get(n) for n in names}


def load_pipeline(cls, path: Path, *, run_code: bool = True, **kwargs: Any):
    """Build a `Pipeline` from a notebook: declare every step/context/rubric cell (lazily)."""
    import nbformat

    from ._errors import OptionError
    from ._template import python_names

    nb = nbformat.read(path, as_version=4)
    kwargs.setdefault("root", path.parent)
    kwargs.setdefault("notebook", str(path))
    pipeline = cls(**kwargs)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code_cells:
        kind = cell_kind(cell.source)
        if kind not in ("step", "context", "rubric"):
            continue
        line, body = split_magic(cell.source)
        words = shlex.split(line)
        if not words:
            raise OptionError(f"{path.name}: a %%{kind} cell has no name")
        if kind == "context":
            opts = _options(words[1:], {"--file": "file"})
            pipeline.context(words[0], body if "file" not in opts else None, **opts)
        elif kind == "rubric":
            opts = _options(words[1:], {"--judge": "judge", "--threshold": "threshold", "--retries": "retries",
                                        "--on-fail": "on_fail"})
            pipeline.rubric(words[0], body, **opts)
        else:
            pipeline.add(step_from_cell(words, body))
    if run_code:
        # The parameters cell and helper cells (functions, constants); cells that read step
        # outputs are exploration and are left out, as are cells tagged skip-export.
        for cell in code_cells:
            if cell_kind(cell.source) != "code" or "skip-export" in cell.get("metadata", {}).get("tags", []):
                continue
            try:
                if python_names(cell.source) & pipeline.steps.keys():
                    continue
            except OptionError:
                continue  # IPython syntax (%magics, !shell): not a helper cell
            exec(compile(cell.source, str(path), "exec"), pipeline.namespace)  # noqa: S102 - the notebook's code
    return pipeline


def _options(words: list[str], names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    it = iter(words)
    for w in it:
        key = names.get(w)
        if key is None:
            from ._errors import OptionError

            raise OptionError(f"unknown option {w}")
        value = next(it)
        out[key] = float(value) if key == "threshold" else int(value) if key == "retries" else value
    return out


def step_from_cell(words: list[str], body: str):
    """A lazily declared `Step` from a ``%%step`` line's words."""
    from ._options import parse_step_line

    return parse_step_line(shlex.join(words), body, lazy=True)
