"""``%conductor export``: turn a working notebook into a clean, documented papermill job.

The job holds a header cell documenting the pipeline (graph, steps, models, parameters, how to
run it), the parameters cell (tagged ``parameters``), ``%load_ext nbconductor``, every context,
step and rubric cell (steps declared ``--lazy``), the user's helper code, and a final
``%conductor run``. Outputs, secrets, cells tagged ``skip-export``, exploratory magics
(``%conductor graph``, ``show``, ...) and cells that read step outputs before the run are left out.

The source is the notebook file when known (``JPY_SESSION_NAME``, or ``source_notebook``), else
the kernel's input history and the cells the magics recorded, else the pipeline's declarations.
This module picks the source and writes the notebook; what each cell becomes is in
`nbconductor.handoff._export_cells`, the header in `nbconductor.handoff._export_header`.
Nothing here imports IPython: `export_pipeline` works from a plain `Pipeline`.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import inspect
import os
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

from .._errors import OptionError
from .._notebook import cell_kind
from .._redact import redact
from .._variants import variant_source
from ._export_cells import (
    KEEP_CONDUCTOR,
    PYTHON_KERNEL,
    SKIP_TAG,
    Cell,
    Job,
    add_unsaved,
    alias_cell,
    check_helpers,
    code_cell,
    filter_magic_lines,
    insert_parameters,
    lazy,
    magic_cell,
    only_literal_assignments,
    params_source,
    parse,
    promote_parameters,
    redact_note,
    top_level_reads,
)
from ._export_header import header, job_pipeline

__all__ = [
    "JOB_TAG",
    "KEEP_CONDUCTOR",
    "PAPERMILL_TAGS",
    "PYTHON_KERNEL",
    "SKIP_TAG",
    "export_notebook",
    "export_pipeline",
    "is_job",
    "step_cell",
]

JOB_TAG = "nbconductor-job"
# papermill's own cells: never part of a job.
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
# Top-level statements that make a history cell part of the job (expressions only look at results).
_DEFINING = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Import,
    ast.ImportFrom,
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
)


# ------------------------------------------------------------------------------------- public


def export_notebook(magics: Any, path: str | os.PathLike) -> Path:
    """Write the job for the pipeline declared in this kernel to ``path``; returns the path.

    Reads the notebook file (``magics.pipeline.notebook``) when it exists, else the kernel's
    input history. Raises `OptionError` for a bad path.
    """
    check_target(path)
    pipeline = magics.pipeline
    source = _notebook_file(pipeline.notebook)
    if source is not None:
        job = _job_from_file(
            source, declared=getattr(magics, "cells", {}), namespace=pipeline.namespace
        )
    else:
        job = _job_from_history(magics)
    out = _write(job, path, pipeline)
    for note in job.notes:
        print(f"nbconductor export: {note}")
    return out


def export_pipeline(
    pipeline: Any, path: str | os.PathLike, source_notebook: str | os.PathLike | None = None
) -> Path:
    """Write a papermill job for ``pipeline`` to ``path``; returns the path. No IPython needed.

    With ``source_notebook`` (or a pipeline read by `Pipeline.from_notebook`) the job keeps that
    notebook's cells; otherwise it is generated from the declared steps, contexts and aliases.
    Raises `OptionError` for a bad path or a source notebook that does not exist.
    """
    check_target(path)
    if source_notebook is not None and not Path(source_notebook).is_file():
        raise OptionError(f"export: source notebook {str(source_notebook)!r} not found")
    source = (
        Path(source_notebook) if source_notebook is not None else _notebook_file(pipeline.notebook)
    )
    if source is not None:
        job = _job_from_file(source, namespace=pipeline.namespace)
    else:
        job = _job_from_pipeline(pipeline)
    return _write(job, path, pipeline)


def is_job(nb: Any) -> bool:
    """Whether a notebook (a NotebookNode or dict) is a job written by `export_notebook`."""
    return bool((nb.get("metadata") or {}).get("nbconductor", {}).get("job"))


# ------------------------------------------------------------------------------ from a file


def _notebook_file(name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name)
    return path if path.suffix == ".ipynb" and path.is_file() else None


def _job_from_file(
    path: Path, declared: dict[str, str] | None = None, namespace: dict | None = None
) -> Job:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    raw: list[tuple[str, str, list[str], dict | None]] = []
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if SKIP_TAG in tags or PAPERMILL_TAGS & set(tags) or cell.cell_type == "raw":
            continue
        raw.append((cell.cell_type, cell.source, tags, cell.get("attachments")))
    title, intro = _title(raw, path)
    job = Job(
        [], title, intro or "", path.name, dict(nb.metadata.get("kernelspec") or PYTHON_KERNEL)
    )
    _classify(job, raw[1:] if intro is not None else raw, path.parent)
    if declared:
        add_unsaved(job, declared, path.parent)
    if not any(c.kind == "params" for c in job.cells):
        promote_parameters(job, namespace or {})
    return job


def _title(raw, path: Path) -> tuple[str, str | None]:
    """The notebook's title and first paragraph, when it opens with a ``# Title`` Markdown cell.

    The intro is None when there is no such cell (the first cell then stays in the job).
    """
    if raw and raw[0][0] == "markdown":
        lines = redact(raw[0][1]).strip().splitlines()
        if lines and lines[0].startswith("# "):
            rest = "\n".join(lines[1:]).strip().split("\n\n")[0]
            return lines[0][2:].strip(), rest
    return path.stem.replace("_", " ").replace("-", " "), None


def _classify(job: Job, raw, src_dir: Path | None) -> None:
    """Turn source cells into job cells, in order; markdown cells stay only before a kept cell."""
    pending_md: list[Cell] = []
    for index, (cell_type, source, tags, attachments) in enumerate(raw, 1):
        if cell_type == "markdown":
            pending_md.append(Cell("markdown", redact_note(job, source, index), [], attachments))
            continue
        cells = code_cell(job, source, tags, index, src_dir)
        if cells:
            job.cells.extend(pending_md)
        pending_md = []
        job.cells.extend(cells)


# --------------------------------------------------------------------------- from history


def _job_from_history(magics: Any) -> Job:
    shell = getattr(magics, "shell", None)
    history: list[str] = []
    if shell is not None:
        hm = getattr(shell, "history_manager", None)
        history = list(getattr(hm, "input_hist_raw", None) or shell.user_ns.get("In") or [])
    pipeline = magics.pipeline
    job = Job([], "nbconductor pipeline", "", None, dict(PYTHON_KERNEL))
    job.notes.append(
        "the notebook file is not known (JPY_SESSION_NAME is unset), so the job was built "
        "from this kernel's history"
    )
    steps = set(pipeline.steps)
    seen: set[str] = set()
    for index, source in enumerate(history):
        if not source or not source.strip() or cell_kind(source) != "code":
            continue
        kept = filter_magic_lines(source.strip())
        if not kept.strip() or kept in seen:
            continue
        if all(ln.strip().startswith("%") for ln in kept.splitlines() if ln.strip()):
            continue
        tree = parse(kept)
        if tree is None or not any(isinstance(n, _DEFINING) for n in tree.body):
            continue  # expressions look at results; they are not part of the job
        if only_literal_assignments(kept):
            continue  # parameters: the synthesized parameters cell carries their current values
        if top_level_reads(tree) & steps:
            continue
        seen.add(kept)
        job.cells.append(Cell("code", redact_note(job, kept, index)))
    aliases = getattr(pipeline, "aliases", {})
    if aliases:
        job.cells.append(alias_cell(aliases))
    declared = dict(getattr(magics, "cells", {}))
    for kind in ("context", "step", "rubric", "variant"):
        for source in declared.values():
            if cell_kind(source) == kind:
                job.cells.append(magic_cell(job, kind, redact(source), Path(pipeline.root)))
    add_unsaved(job, _pipeline_cells(pipeline, skip=set(declared)), None, note=False)
    insert_parameters(job, pipeline.namespace)
    return job


# -------------------------------------------------------------------------- from a pipeline


def _job_from_pipeline(pipeline: Any) -> Job:
    job = Job([], "nbconductor pipeline", "", None, dict(PYTHON_KERNEL))
    for step in pipeline.steps.values():
        if step.kind == "function" and step.fn is not None:
            try:
                src = textwrap.dedent(inspect.getsource(step.fn))
            except (OSError, TypeError):
                job.notes.append(
                    f"the source of function step `{step.name}` is not available; it was left out"
                )
                continue
            lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith("@")]
            # The step's output takes the step's name, so the function is renamed.
            new_name = _function_name(step)
            text = re.sub(
                rf"^(async\s+)?def\s+{re.escape(step.fn.__name__)}\s*\(",
                lambda m, name=new_name: f"{m.group(1) or ''}def {name}(",
                "\n".join(lines),
                count=1,
                flags=re.M,
            )
            job.cells.append(Cell("code", redact(text)))
    if pipeline.aliases:
        job.cells.append(alias_cell(pipeline.aliases))
    for source in _pipeline_cells(pipeline).values():
        kind = cell_kind(source)
        job.cells.append(
            Cell(kind, lazy(redact(source)) if kind == "step" else redact(source).strip())
        )
    insert_parameters(job, pipeline.namespace)
    return job


def _pipeline_cells(pipeline: Any, skip: set[str] | None = None) -> dict[str, str]:
    """Magic-cell sources for the pipeline's contexts, steps and rubrics."""
    skip = skip or set()
    out: dict[str, str] = {}
    for name, text in pipeline.contexts.items():
        if f"context:{name}" not in skip:
            out[f"context:{name}"] = f"%%context {name}\n{text}"
    for step in pipeline.steps.values():
        if step.name not in skip:
            out[step.name] = step_cell(step)
    for step in pipeline.steps.values():
        r = step.rubric
        if r is not None and f"rubric:{step.name}" not in skip:
            words = [step.name]
            if r.judge:
                words += ["--judge", r.judge]
            words += ["--threshold", f"{r.threshold:g}"]
            if r.retries is not None:
                words += ["--retries", str(r.retries)]
            if r.on_fail:
                words += ["--on-fail", r.on_fail]
            if r.max_tokens is not None:
                words += ["--max-tokens", str(r.max_tokens)]
            out[f"rubric:{step.name}"] = f"%%rubric {shlex.join(words)}\n{r.text}"
    for step_name, variants in getattr(pipeline, "variants", {}).items():
        for v in variants.values():
            if f"variant:{step_name}:{v.name}" not in skip:
                line = f"{shlex.join([step_name, v.name])} {variant_source(v)}".strip()
                out[f"variant:{step_name}:{v.name}"] = (
                    f"%%variant {line}\n{v.body}" if v.body else f"%variant {line}"
                )
    return out


def _function_name(step: Any) -> str:
    return (
        f"{step.name}_fn"
        if getattr(step.fn, "__name__", step.name) == step.name
        else step.fn.__name__
    )


def step_cell(step: Any) -> str:
    """The ``%%step`` cell that declares ``step`` (a function step becomes a Python call)."""
    from .._types import Step

    default = Step(name=step.name)
    words = [step.name]
    body = step.body
    if step.kind == "python":
        words.append("--python")
    elif step.kind == "image":
        words.append("--image")
    elif step.kind == "function":
        words.append("--python")
        params = list(inspect.signature(step.fn).parameters) if step.fn is not None else []
        body = f"{_function_name(step)}({', '.join(params)})"
    flags = [
        ("model", "--model"),
        ("system", "--system"),
        ("schema", "--schema"),
        ("map", "--map"),
        ("when", "--when"),
        ("temperature", "--temperature"),
        ("max_tokens", "--max-tokens"),
        ("retries", "--retries"),
        ("on_fail", "--on-fail"),
        ("max_turns", "--max-turns"),
        ("audit", "--audit"),
    ]
    for attr, flag in flags:
        value = getattr(step, attr)
        if value is not None and value != getattr(default, attr):
            words += [flag, str(value)]
    for attr, flag in (
        ("fallbacks", "--fallback"),
        ("contexts", "--context"),
        ("after", "--after"),
        ("checks", "--check"),
    ):
        for value in getattr(step, attr):
            words += [flag, value]
    if step.tools:
        words += ["--tools", ",".join(step.tools)]
    if step.json:
        words.append("--json")
    if step.no_cache:
        words.append("--no-cache")
    return f"%%step {shlex.join(words)}\n{body}"


# ---------------------------------------------------------------------------------- write


def _write(job: Job, path: str | os.PathLike, like: Any | None) -> Path:
    import nbformat
    from nbformat import v4

    from .. import __version__

    out = check_target(path)
    if (
        job.source
        and like is not None
        and like.notebook
        and Path(like.notebook).resolve() == out.resolve()
    ):
        raise OptionError(f"export: {out} is the notebook being exported; choose another path")
    check_helpers(job)
    p = job_pipeline(job, like)
    text, attachments = header(job, p, out)
    cells = [v4.new_markdown_cell(redact(text), metadata={"tags": [JOB_TAG]})]
    if attachments:
        cells[0].attachments = attachments
    params = next((c.source for c in job.cells if c.kind == "params"), params_source({}))
    cells.append(v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    cells.append(v4.new_code_cell("%load_ext nbconductor"))
    for cell in job.cells:
        if cell.kind == "params":
            continue
        tags = {"tags": cell.tags} if cell.tags else {}
        if cell.kind == "markdown":
            md = v4.new_markdown_cell(cell.source, metadata=tags)
            if cell.attachments:
                md.attachments = cell.attachments
            cells.append(md)
        else:
            cells.append(v4.new_code_cell(cell.source, metadata=tags))
    cells.append(v4.new_code_cell("%conductor run", metadata={"tags": [f"{JOB_TAG}-run"]}))
    for cell in cells:  # one last pass: parameter values from the namespace may hold a secret too
        cell.source = redact(cell.source)
    nb = v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": job.kernelspec or dict(PYTHON_KERNEL),
            "language_info": {"name": "python"},
            "nbconductor": {
                "job": True,
                "version": __version__,
                "source": job.source,
                "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "steps": list(p.steps),
            },
        },
    )
    nbformat.validate(nb)
    tmp = out.with_name(out.name + ".tmp")
    try:
        nbformat.write(nb, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OptionError(
            f"export: cannot write {out}: {exc.strerror or exc}; choose another path"
        ) from None
    return out


def check_target(path: str | os.PathLike) -> Path:
    """The export path, if a job can be written there; raises `OptionError` (before any work)."""
    out = Path(path)
    if out.suffix != ".ipynb":
        raise OptionError(
            f"export: the job must be an .ipynb file, got {str(path)!r} (e.g. jobs/newsletter.ipynb)"
        )
    if out.is_dir():
        raise OptionError(
            f"export: {out} is a folder; give the job's file name (e.g. {out / 'job.ipynb'})"
        )
    if not out.parent.is_dir():
        # not created silently: a typo in the folder would hide the job somewhere unexpected
        raise OptionError(
            f"export: folder {str(out.parent)!r} does not exist; create it first (mkdir -p {out.parent})"
        )
    return out
