"""Reading pipelines out of ``.ipynb`` files written with the magics."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Any

MAGIC_CELLS = ("%%step", "%%context", "%%rubric", "%%variant")


def cell_kind(source: str) -> str:
    """'step' | 'context' | 'rubric' | 'variant' | 'load_ext' | 'conductor' | 'code'."""
    text = source.lstrip()
    for magic in MAGIC_CELLS:
        if text.startswith(magic + " ") or text.startswith(magic + "\n") or text == magic:
            return magic[2:]
    if text.startswith("%context "):
        return "context"
    if text.startswith("%variant ") and "\n" not in text.strip():
        return "variant"
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
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
    """The notebook's parameters with their current values in the kernel (``{}`` if none found).

    The names come from, in order: the cell tagged ``parameters`` in the notebook file (the
    pipeline's notebook, i.e. ``JPY_SESSION_NAME`` as Jupyter sets it, found relative to the
    kernel's directory if need be); ``__parameters__`` in the namespace (a list of names); the
    latest executed cell made only of literal assignments to names the steps read (what a
    parameters cell is); else the names the steps read that hold plain values. A name not in
    the namespace takes the parameters cell's literal.
    """
    ns = shell.user_ns
    magics = ns.get("__nbconductor__")
    pipeline = getattr(magics, "pipeline", None)
    defaults: dict[str, Any] = {}
    path = _notebook_file(pipeline)
    if path is not None:
        try:
            import nbformat

            cell = parameters_cell(nbformat.read(path, as_version=4))
        except Exception:  # noqa: BLE001 - an unreadable file: fall back to the kernel
            cell = None
        if cell is not None:
            defaults = parameter_values(cell.source)
    names = list(defaults)
    if not names and isinstance(ns.get("__parameters__"), (list, tuple)):
        names = [str(n) for n in ns["__parameters__"]]
    if not names and pipeline is not None:
        used = _used_names(pipeline)
        for source in reversed(_history(shell)):
            values = _literal_cell(source)
            if values and used & values.keys():
                defaults, names = values, list(values)
                break
        if not names:
            names = sorted(n for n in used if _plain_value(ns.get(n, _MISSING)))
    return {n: ns.get(n, defaults.get(n)) for n in names}


_MISSING = object()


def _notebook_file(pipeline) -> Path | None:
    """The notebook file the kernel runs, if it can be found on disk."""
    import os

    name = getattr(pipeline, "notebook", None) or os.environ.get("JPY_SESSION_NAME")
    if not name:
        return None
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, Path.cwd() / path.name]
    if pipeline is not None and not path.is_absolute():
        candidates.insert(1, Path(pipeline.root) / path.name)
    return next((p for p in candidates if p.is_file()), None)


def _used_names(pipeline) -> set[str]:
    """Names the steps read that no step provides (parameters and notebook variables)."""
    try:
        graph = pipeline.graph
        return set().union(*(graph.external_names(n) for n in graph.steps)) - set(graph.steps)
    except Exception:  # noqa: BLE001 - a broken graph has no reliable names
        return set()


def _history(shell) -> list[str]:
    hm = getattr(shell, "history_manager", None)
    cells = list(getattr(hm, "input_hist_raw", None) or shell.user_ns.get("In") or [])
    return [c for c in cells if isinstance(c, str) and c.strip()]


def _literal_cell(source: str) -> dict[str, Any]:
    """The assignments of a cell made only of literal assignments (else ``{}``)."""
    if source.lstrip().startswith(("%", "!")):
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    if not tree.body or not all(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in tree.body):
        return {}
    values = parameter_values(source)
    assigned = sum(len(n.targets) if isinstance(n, ast.Assign) else 1 for n in tree.body)
    return values if len(values) == assigned else {}


def _plain_value(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (str, int, float, bool)) for v in value)
    return False


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
    variants = []
    for cell in code_cells:
        kind = cell_kind(cell.source)
        if kind == "variant":
            variants.append(cell)  # after every step: a variant may precede a re-declaration
            continue
        if kind not in ("step", "context", "rubric"):
            continue
        declare_cell(pipeline, kind, cell.source, where=f"{path.name}: ")
    for cell in variants:
        from ._variants import parse_variant_line

        line, body = split_magic(cell.source)
        v = parse_variant_line(line, body)
        pipeline.variant(v.step, v.name, v.body, **v.options)
    if run_code:
        # The parameters cell and helper cells (functions, constants); cells that read step
        # outputs are exploration and are left out, as are cells tagged skip-export.
        for cell in code_cells:
            if cell_kind(cell.source) != "code" or "skip-export" in cell.get("metadata", {}).get(
                "tags", []
            ):
                continue
            try:
                names = python_names(cell.source)
            except OptionError:
                continue  # IPython syntax (%magics, !shell): not a helper cell
            # A cell that reads step outputs, or names only a live kernel has, explores results.
            if names & pipeline.steps.keys() or any(n not in pipeline.namespace for n in names):
                continue
            exec(compile(cell.source, str(path), "exec", dont_inherit=True), pipeline.namespace)  # noqa: S102 - the notebook's code
    return pipeline


def declare_cell(
    pipeline, kind: str, source: str, *, where: str = "", read_files: bool = True
) -> None:
    """Declare one ``%%step`` (lazily), ``%%context`` or ``%%rubric`` cell on ``pipeline``, its
    options read by the magic's own table (`nbconductor._options`). ``read_files=False`` records
    a ``--file`` context by its path instead of reading it. Raises `OptionError`."""
    from ._errors import OptionError
    from ._options import CONTEXT_OPTIONS, RUBRIC_OPTIONS, parse_options

    line, body = split_magic(source)
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OptionError(f"{where}%%{kind}: cannot parse options {line!r}: {exc}") from None
    if not words:
        raise OptionError(f"{where}a %%{kind} cell has no name")
    if kind == "context":
        args = parse_options(CONTEXT_OPTIONS, "%%context", line)
        if args.file is not None and not read_files:
            pipeline.contexts[args.name] = f"(read from {args.file})"
        else:
            pipeline.context(args.name, body if args.file is None else None, file=args.file)
    elif kind == "rubric":
        args = parse_options(RUBRIC_OPTIONS, "%%rubric", line)
        pipeline.rubric(
            args.step,
            body,
            judge=args.judge,
            threshold=args.threshold,
            retries=args.retries,
            on_fail=args.on_fail,
            max_tokens=args.max_tokens,
            audit=args.audit,
        )
    else:
        pipeline.add(step_from_cell(words, body))


def step_from_cell(words: list[str], body: str):
    """A lazily declared `Step` from a ``%%step`` line's words."""
    from ._options import parse_step_line

    return parse_step_line(shlex.join(words), body, lazy=True)
