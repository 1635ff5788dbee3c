"""The export's job model, and the rules each cell follows on its way into a job.

A `Job` holds the cells a job notebook will carry between its header and its final
``%conductor run`` (`nbconductor.handoff._export` adds those). Here: which source cells are kept and
which dropped (help, ``%load_ext``, exploratory ``%conductor`` lines), how kept cells change
(steps made ``--lazy``, ``--file`` contexts inlined, secrets redacted), the parameters cell, and
the name analysis that decides which helper cells a job can keep.
"""

from __future__ import annotations

import ast
import builtins
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._notebook import cell_kind, parameter_values, split_magic
from .._redact import redact

SKIP_TAG = "skip-export"
KEEP_CONDUCTOR = {"alias"}  # %conductor subcommands that define the pipeline; the rest explore it
PYTHON_KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
_BUILTIN_NAMES = set(dir(builtins)) | {"history"}


@dataclass
class Cell:
    kind: str  # markdown | params | alias | context | step | rubric | variant | code
    source: str
    tags: list[str] = field(default_factory=list)
    attachments: dict | None = None


@dataclass
class Job:
    cells: list[Cell]
    title: str
    intro: str
    source: str | None
    kernelspec: dict
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- one cell


def code_cell(
    job: Job, source: str, tags: list[str], index: int, src_dir: Path | None
) -> list[Cell]:
    """What a notebook's code cell becomes in the job: nothing, or one cell."""
    kind = cell_kind(source)
    source = redact_note(job, source, index)
    if "parameters" in tags:
        return [Cell("params", source.strip(), ["parameters"])]
    if kind in ("step", "rubric", "context", "variant"):
        return [magic_cell(job, kind, source, src_dir)]
    if kind == "load_ext":
        return []
    text = source.strip()
    first = text.splitlines()[0] if text else ""
    if first.startswith("%") and first.endswith("?"):
        return []  # %%step? and friends: help, not code
    kept = filter_magic_lines(text)
    if not kept.strip():
        return []
    if kind == "conductor" or all(
        ln.strip().startswith("%conductor") for ln in kept.splitlines() if ln.strip()
    ):
        return [Cell("alias", kept)]
    return [Cell("code", kept, [t for t in tags if t != SKIP_TAG])]


def magic_cell(job: Job, kind: str, source: str, src_dir: Path | None) -> Cell:
    """The job's cell for a (redacted) ``%%step``, ``%%context`` or ``%%rubric`` cell."""
    if kind == "step":
        return Cell("step", lazy(source))
    if kind == "context":
        return Cell("context", _inline_context(job, source, src_dir))
    return Cell(kind, source.strip())  # a rubric or a variant: declared as written


def alias_cell(aliases: dict) -> Cell:
    from .._config import alias_text

    return Cell(
        "alias", "\n".join(f"%conductor alias {k} {alias_text(v)}" for k, v in aliases.items())
    )


def filter_magic_lines(text: str) -> str:
    """Drop ``%load_ext nbconductor`` and exploratory ``%conductor`` lines from a code cell."""
    kept = []
    for line in text.splitlines():
        bare = line.strip()
        if bare.startswith("%conductor"):
            words = _words(bare)
            if (len(words) >= 4 and words[1] in KEEP_CONDUCTOR) or words[1:2] == [
                "template-function"
            ]:
                kept.append(bare)  # template-function: what the job's templates may call
            continue
        if bare.startswith("%load_ext") and "nbconductor" in bare.split():
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n")


def lazy(source: str) -> str:
    """A ``%%step`` cell with ``--lazy`` added: the job declares steps, ``%conductor run`` runs them."""
    line, body = split_magic(source)
    if "--lazy" not in _words(line):
        line = f"{line} --lazy".strip()
    return f"%%step {line}\n{body.strip(chr(10))}"


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _inline_context(job: Job, source: str, src_dir: Path | None) -> str:
    """A ``--file`` context becomes an inline one, so the job does not depend on where it runs."""
    line, body = split_magic(source)
    try:
        words = shlex.split(line)
    except ValueError:
        return source.strip()
    if "--file" not in words or words.index("--file") + 1 >= len(words):
        return source.strip()
    i = words.index("--file")
    name = words[i + 1]
    file = Path(name)
    if not file.is_absolute() and src_dir is not None:
        file = src_dir / file
    if not file.is_file():
        job.notes.append(
            f"context `{words[0] if words else '?'}` reads {name!r}, which was not found at export time; "
            "the job needs it beside the job notebook"
        )
        return source.strip()
    text = redact(file.read_text())
    rest = words[:i] + words[i + 2 :]
    job.notes.append(
        f"context `{rest[0] if rest else '?'}` was read from {name} and is inlined in the job"
    )
    return f"%%context {shlex.join(rest)}\n{text.strip()}"


def redact_note(job: Job, source: str, index: int) -> str:
    """``source`` redacted; a note for the header when there was a secret in it."""
    clean = redact(source)
    if clean != source:
        job.notes.append(
            f"a secret in cell {index} was redacted: keys belong in the environment "
            "(ANTHROPIC_API_KEY, OPENAI_API_KEY), not in the notebook"
        )
    return clean


def declared_name(cell: Cell) -> str | None:
    """The key of a magic cell in the kernel's declarations: 'x' (a step), 'context:x', 'rubric:x',
    'variant:x:name'."""
    if cell.kind not in ("step", "context", "rubric", "variant"):
        return None
    line, _ = split_magic(cell.source)
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if not words:
        return None
    if cell.kind == "variant":
        return f"variant:{':'.join(words[:2])}"
    return words[0] if cell.kind == "step" else f"{cell.kind}:{words[0]}"


def add_unsaved(
    job: Job, declared: dict[str, str], src_dir: Path | None, *, note: bool = True
) -> None:
    """Steps declared in the kernel but absent from the saved file (an unsaved edit) still go in."""
    present = {declared_name(c) for c in job.cells}
    for key, source in declared.items():
        kind = cell_kind(source)
        if key in present or kind not in ("step", "context", "rubric", "variant"):
            continue
        cell = magic_cell(job, kind, redact(source), src_dir)
        if note:
            job.notes.append(
                f"`{key}` is declared in the kernel but not in the saved notebook; "
                "the job uses the kernel's version (save the notebook to keep them in step)"
            )
        if cell.kind in ("rubric", "variant"):
            job.cells.append(cell)
        else:  # before the first rubric, so a rubric never precedes its step
            at = next((i for i, c in enumerate(job.cells) if c.kind == "rubric"), len(job.cells))
            job.cells.insert(at, cell)


# ---------------------------------------------------------------------- the parameters cell


def promote_parameters(job: Job, namespace: dict) -> None:
    """No cell tagged ``parameters``: use the first cell of literal assignments, else make one."""
    for i, cell in enumerate(job.cells):
        if cell.kind == "code" and only_literal_assignments(cell.source):
            job.cells[i] = Cell("params", cell.source, ["parameters"])
            job.notes.append(
                "no cell was tagged `parameters`; the first cell of plain assignments became it"
            )
            return
    insert_parameters(job, namespace)


def insert_parameters(job: Job, namespace: dict) -> None:
    """A parameters cell first: the current values of the names steps read that no cell defines."""
    names = step_inputs(job) - defined_names(job)
    values = {
        n: namespace[n]
        for n in sorted(names)
        if n in namespace and _literal(namespace[n]) is not None
    }
    job.cells.insert(0, Cell("params", params_source(values), ["parameters"]))


def only_literal_assignments(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return (
        bool(tree.body)
        and len(parameter_values(source)) > 0
        and all(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in tree.body)
    )


def _literal(value: Any) -> str | None:
    text = repr(value)
    try:
        return text if ast.literal_eval(text) == value else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def params_source(values: dict[str, Any]) -> str:
    """A parameters cell assigning ``values``: checked names, literal values only."""
    from .._params import check_names

    if not values:
        return "# parameters (papermill -p NAME VALUE overrides them)"
    check_names(values, "export")
    lines = [(k, _literal(v)) for k, v in values.items()]
    return "\n".join(f"{k} = {text}" for k, text in lines if text is not None)


# ---------------------------------------------------------------------------- names


def parse(source: str) -> ast.Module | None:
    """The cell's syntax tree, or None when it is not Python."""
    # IPython syntax (magics, shell escapes) is masked so the rest can be analysed.
    masked = "\n".join(
        "pass" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()
    )
    try:
        return ast.parse(textwrap.dedent(masked))
    except SyntaxError:
        return None


def top_level_reads(tree: ast.Module) -> set[str]:
    """Names read when the cell runs (function bodies run later, so they do not count)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def step_inputs(job: Job) -> set[str]:
    """Names the job's steps read that are not steps: parameters, helpers, schemas."""
    from .._graph import free_names
    from .._options import parse_step_line

    names: set[str] = set()
    steps: set[str] = set()
    for cell in job.cells:
        if cell.kind == "step":
            line, body = split_magic(cell.source)
            try:
                step = parse_step_line(line, body)
                names |= free_names(step)
                steps.add(step.name)
                if step.schema:
                    names.add(step.schema)
            except Exception:  # noqa: BLE001
                continue
    return names - steps


def defined_names(job: Job) -> set[str]:
    """Names the job's parameters and helper cells define at top level."""
    names: set[str] = set()
    for cell in job.cells:
        if cell.kind not in ("code", "params"):
            continue
        tree = parse(cell.source)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            names.add(n.id)
    return names


def check_helpers(job: Job) -> None:
    """Leave out helper cells that read step outputs before the run; warn about missing names."""
    steps = {declared_name(c) for c in job.cells if c.kind == "step"}
    kept = []
    for cell in job.cells:
        if cell.kind == "code":
            tree = parse(cell.source)
            reads = top_level_reads(tree) & steps if tree is not None else set()
            if reads:
                job.notes.append(
                    f"left out a cell that reads step outputs before the run "
                    f"({', '.join(sorted(reads))}): {_first_line(cell.source)}"
                )
                # the markdown just before it described it
                while kept and kept[-1].kind == "markdown":
                    kept.pop()
                continue
        kept.append(cell)
    job.cells = kept
    missing = step_inputs(job) - defined_names(job) - _BUILTIN_NAMES
    for name in sorted(missing):
        job.notes.append(
            f"steps read `{name}`, which no parameter or helper cell of the job defines: "
            "pass it with -p or add it to the parameters cell"
        )


def _first_line(source: str) -> str:
    line = source.strip().splitlines()[0] if source.strip() else ""
    return line if len(line) <= 60 else line[:59] + "…"
