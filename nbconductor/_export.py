"""``%conductor export``: turn a working notebook into a clean, documented papermill job.

The job holds a header cell documenting the pipeline (graph, steps, models, parameters, how to
run it), the parameters cell (tagged ``parameters``), ``%load_ext nbconductor``, every context,
step and rubric cell (steps declared ``--lazy``), the user's helper code, and a final
``%conductor run``. Outputs, secrets, cells tagged ``skip-export``, exploratory magics
(``%conductor graph``, ``show``, ...) and cells that read step outputs before the run are left out.

The source is the notebook file when known (``JPY_SESSION_NAME``, or ``source_notebook``), else
the kernel's input history and the cells the magics recorded, else the pipeline's declarations.
Nothing here imports IPython: `export_pipeline` works from a plain `Pipeline`.
"""

from __future__ import annotations

import ast
import base64
import builtins
import datetime as _dt
import inspect
import json
import os
import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import OptionError
from ._notebook import cell_kind, parameter_values, split_magic
from ._redact import redact

JOB_TAG = "nbconductor-job"
SKIP_TAG = "skip-export"
# papermill's own cells: never part of a job.
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
KEEP_CONDUCTOR = {"alias"}  # %conductor subcommands that define the pipeline; the rest explore it
PYTHON_KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


@dataclass
class _Cell:
    kind: str  # markdown | params | load_ext | alias | context | step | rubric | code
    source: str
    tags: list[str] = field(default_factory=list)
    attachments: dict | None = None


@dataclass
class _Job:
    cells: list[_Cell]
    title: str
    intro: str
    source: str | None
    kernelspec: dict
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- public


def export_notebook(magics: Any, path: str | os.PathLike) -> Path:
    """Write the job for the pipeline declared in this kernel to ``path``; returns the path.

    Reads the notebook file (``magics.pipeline.notebook``) when it exists, else the kernel's
    input history. Raises `OptionError` for a bad path.
    """
    pipeline = magics.pipeline
    source = _notebook_file(pipeline.notebook)
    if source is not None:
        job = _job_from_file(source, declared=getattr(magics, "cells", {}), namespace=pipeline.namespace)
    else:
        job = _job_from_history(magics)
    out = _write(job, path, pipeline)
    for note in job.notes:
        print(f"nbconductor export: {note}")
    return out


def export_pipeline(pipeline: Any, path: str | os.PathLike, source_notebook: str | os.PathLike | None = None) -> Path:
    """Write a papermill job for ``pipeline`` to ``path``; returns the path. No IPython needed.

    With ``source_notebook`` (or a pipeline read by `Pipeline.from_notebook`) the job keeps that
    notebook's cells; otherwise it is generated from the declared steps, contexts and aliases.
    Raises `OptionError` for a bad path or a source notebook that does not exist.
    """
    if source_notebook is not None and not Path(source_notebook).is_file():
        raise OptionError(f"export: source notebook {str(source_notebook)!r} not found")
    source = Path(source_notebook) if source_notebook is not None else _notebook_file(pipeline.notebook)
    if source is not None:
        job = _job_from_file(source, namespace=pipeline.namespace)
    else:
        job = _job_from_pipeline(pipeline)
    return _write(job, path, pipeline)


# ------------------------------------------------------------------------------ from a file


def _notebook_file(name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name)
    return path if path.suffix == ".ipynb" and path.is_file() else None


def _job_from_file(path: Path, declared: dict[str, str] | None = None, namespace: dict | None = None) -> _Job:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    raw: list[tuple[str, str, list[str], dict | None]] = []
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if SKIP_TAG in tags or PAPERMILL_TAGS & set(tags) or cell.cell_type == "raw":
            continue
        raw.append((cell.cell_type, cell.source, tags, cell.get("attachments")))
    title, intro = _title(raw, path)
    job = _Job([], title, intro, path.name, dict(nb.metadata.get("kernelspec") or PYTHON_KERNEL))
    _classify(job, raw[1:] if intro is not None and raw and raw[0][0] == "markdown" else raw, path.parent)
    job.intro = intro or ""
    if declared:
        _add_unsaved(job, declared, path.parent)
    if not any(c.kind == "params" for c in job.cells):
        _promote_parameters(job, namespace or {})
    return job


def _title(raw, path: Path | None) -> tuple[str, str | None]:
    """The notebook's title and first paragraph, when it opens with a ``# Title`` Markdown cell.

    The intro is None when there is no such cell (the first cell then stays in the job).
    """
    if raw and raw[0][0] == "markdown":
        lines = redact(raw[0][1]).strip().splitlines()
        if lines and lines[0].startswith("# "):
            rest = "\n".join(lines[1:]).strip().split("\n\n")[0]
            return lines[0][2:].strip(), rest
    return (path.stem.replace("_", " ").replace("-", " ") if path else "nbconductor pipeline"), None


def _classify(job: _Job, raw, src_dir: Path | None) -> None:
    """Turn source cells into job cells, in order; markdown cells stay only before a kept cell."""
    pending_md: list[_Cell] = []
    for index, (cell_type, source, tags, attachments) in enumerate(raw, 1):
        if cell_type == "markdown":
            pending_md.append(_Cell("markdown", _redact_note(job, source, index), [], attachments))
            continue
        cells = _code_cell(job, source, tags, index, src_dir)
        if cells and any(c.kind not in ("load_ext",) for c in cells):
            job.cells.extend(pending_md)
        pending_md = []
        job.cells.extend(cells)


def _code_cell(job: _Job, source: str, tags: list[str], index: int, src_dir: Path | None) -> list[_Cell]:
    kind = cell_kind(source)
    source = _redact_note(job, source, index)
    if "parameters" in tags:
        return [_Cell("params", source.strip(), ["parameters"])]
    if kind == "step":
        return [_Cell("step", _lazy(source))]
    if kind == "rubric":
        return [_Cell("rubric", source.strip())]
    if kind == "context":
        return [_Cell("context", _inline_context(job, source, src_dir))]
    if kind == "load_ext":
        return []
    text = source.strip()
    first = text.splitlines()[0] if text else ""
    if first.startswith("%") and first.endswith("?"):
        return []  # %%step? and friends: help, not code
    kept, dropped = _filter_magic_lines(text)
    if not kept.strip():
        return []
    if kind == "conductor" or all(ln.strip().startswith("%conductor") for ln in kept.splitlines() if ln.strip()):
        return [_Cell("alias", kept)]
    return [_Cell("code", kept, [t for t in tags if t != SKIP_TAG])]


def _filter_magic_lines(text: str) -> tuple[str, list[str]]:
    """Drop ``%load_ext nbconductor`` and exploratory ``%conductor`` lines from a code cell."""
    kept, dropped = [], []
    for line in text.splitlines():
        bare = line.strip()
        if bare.startswith("%conductor"):
            try:
                words = shlex.split(bare)
            except ValueError:
                words = bare.split()
            if len(words) > 1 and words[1] in KEEP_CONDUCTOR and len(words) == 4:
                kept.append(bare)
            else:
                dropped.append(bare)
            continue
        if bare.startswith("%load_ext") and "nbconductor" in bare.split():
            dropped.append(bare)
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n"), dropped


def _lazy(source: str) -> str:
    line, body = split_magic(source)
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if "--lazy" not in words:
        line = f"{line} --lazy".strip()
    return f"%%step {line}\n{body.strip(chr(10))}"


def _inline_context(job: _Job, source: str, src_dir: Path | None) -> str:
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
        job.notes.append(f"context `{words[0] if words else '?'}` reads {name!r}, which was not found at export time; "
                         "the job needs it beside the job notebook")
        return source.strip()
    text = redact(file.read_text())
    rest = words[:i] + words[i + 2:]
    job.notes.append(f"context `{rest[0] if rest else '?'}` was read from {name} and is inlined in the job")
    return f"%%context {shlex.join(rest)}\n{text.strip()}"


def _redact_note(job: _Job, source: str, index: int) -> str:
    clean = redact(source)
    if clean != source:
        job.notes.append(f"a secret in cell {index} was redacted: keys belong in the environment "
                         "(ANTHROPIC_API_KEY, OPENAI_API_KEY), not in the notebook")
    return clean


def _declared_names(cell: _Cell) -> str | None:
    """'step:x' / 'context:x' / 'rubric:x' for a magic cell."""
    if cell.kind not in ("step", "context", "rubric"):
        return None
    line, _ = split_magic(cell.source)
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if not words:
        return None
    return words[0] if cell.kind == "step" else f"{cell.kind}:{words[0]}"


def _add_unsaved(job: _Job, declared: dict[str, str], src_dir: Path | None, *, note: bool = True) -> None:
    """Steps declared in the kernel but absent from the saved file (an unsaved edit) still go in."""
    present = {_declared_names(c) for c in job.cells}
    for key, source in declared.items():
        if key in present:
            continue
        kind = cell_kind(source)
        if kind == "step":
            cell = _Cell("step", _lazy(redact(source)))
        elif kind == "context":
            cell = _Cell("context", _inline_context(job, redact(source), src_dir))
        elif kind == "rubric":
            cell = _Cell("rubric", redact(source).strip())
        else:
            continue
        if note:
            job.notes.append(f"`{key}` is declared in the kernel but not in the saved notebook; "
                             "the job uses the kernel's version (save the notebook to keep them in step)")
        _insert_magic(job, cell)


def _insert_magic(job: _Job, cell: _Cell) -> None:
    if cell.kind == "rubric":
        job.cells.append(cell)
        return
    # Before the first rubric, so a rubric never precedes its step.
    at = next((i for i, c in enumerate(job.cells) if c.kind == "rubric"), len(job.cells))
    job.cells.insert(at, cell)


def _promote_parameters(job: _Job, namespace: dict) -> None:
    """No cell tagged ``parameters``: use the first cell of literal assignments, else make one."""
    for i, cell in enumerate(job.cells):
        if cell.kind == "code" and _only_literal_assignments(cell.source):
            job.cells[i] = _Cell("params", cell.source, ["parameters"])
            job.notes.append("no cell was tagged `parameters`; the first cell of plain assignments became it")
            return
    names = _step_inputs(job) - _defined_names(job)
    values = {n: namespace[n] for n in sorted(names) if n in namespace and _literal(namespace[n]) is not None}
    job.cells.insert(0, _Cell("params", _params_source(values), ["parameters"]))


def _only_literal_assignments(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and len(parameter_values(source)) > 0 and all(
        isinstance(n, (ast.Assign, ast.AnnAssign)) for n in tree.body
    )


def _literal(value: Any) -> str | None:
    text = repr(value)
    try:
        return text if ast.literal_eval(text) == value else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _params_source(values: dict[str, Any]) -> str:
    if not values:
        return "# parameters (papermill -p NAME VALUE overrides them)"
    return "\n".join(f"{k} = {_literal(v)}" for k, v in values.items())


# --------------------------------------------------------------------------- from history


def _job_from_history(magics: Any) -> _Job:
    shell = getattr(magics, "shell", None)
    history: list[str] = []
    if shell is not None:
        hm = getattr(shell, "history_manager", None)
        history = list(getattr(hm, "input_hist_raw", None) or shell.user_ns.get("In") or [])
    pipeline = magics.pipeline
    job = _Job([], "nbconductor pipeline", "", None, dict(PYTHON_KERNEL))
    job.notes.append("the notebook file is not known (JPY_SESSION_NAME is unset), so the job was built "
                     "from this kernel's history")
    steps = set(pipeline.steps)
    seen: set[str] = set()
    helpers: list[_Cell] = []
    for index, source in enumerate(history):
        if not source or not source.strip() or cell_kind(source) != "code":
            continue
        kept, _ = _filter_magic_lines(source.strip())
        if not kept.strip() or kept in seen:
            continue
        if all(ln.strip().startswith("%") for ln in kept.splitlines() if ln.strip()):
            continue
        tree = _parse(kept)
        if tree is None or not any(isinstance(n, _DEFINING) for n in tree.body):
            continue  # expressions look at results; they are not part of the job
        if _only_literal_assignments(kept):
            continue  # parameters: the synthesized parameters cell carries their current values
        if _top_level_reads(tree) & steps:
            continue
        seen.add(kept)
        helpers.append(_Cell("code", _redact_note(job, kept, index)))
    job.cells.extend(helpers)
    aliases = getattr(pipeline, "aliases", {})
    if aliases:
        job.cells.append(_Cell("alias", "\n".join(f"%conductor alias {k} {v}" for k, v in aliases.items())))
    declared = dict(getattr(magics, "cells", {}))
    for kind in ("context", "step", "rubric"):
        for source in declared.values():
            if cell_kind(source) != kind:
                continue
            src = redact(source)
            if kind == "step":
                job.cells.append(_Cell("step", _lazy(src)))
            elif kind == "context":
                job.cells.append(_Cell("context", _inline_context(job, src, Path(pipeline.root))))
            else:
                job.cells.append(_Cell("rubric", src.strip()))
    _add_unsaved(job, _pipeline_cells(pipeline, skip=set(declared)), None, note=False)
    names = _step_inputs(job) - _defined_names(job)
    ns = pipeline.namespace
    values = {n: ns[n] for n in sorted(names) if n in ns and _literal(ns[n]) is not None}
    job.cells.insert(0, _Cell("params", _params_source(values), ["parameters"]))
    return job


_DEFINING = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
             ast.AnnAssign, ast.AugAssign)


def _parse(source: str) -> ast.Module | None:
    # IPython syntax (magics, shell escapes) is masked so the rest can be analysed.
    masked = "\n".join("pass" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())
    try:
        return ast.parse(textwrap.dedent(masked))
    except SyntaxError:
        return None


def _top_level_reads(tree: ast.Module) -> set[str]:
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


# -------------------------------------------------------------------------- from a pipeline


def _job_from_pipeline(pipeline: Any) -> _Job:
    job = _Job([], "nbconductor pipeline", "", None, dict(PYTHON_KERNEL))
    helpers = []
    for step in pipeline.steps.values():
        if step.kind == "function" and step.fn is not None:
            try:
                src = textwrap.dedent(inspect.getsource(step.fn))
            except (OSError, TypeError):
                job.notes.append(f"the source of function step `{step.name}` is not available; it was left out")
                continue
            lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith("@")]
            # The step's output takes the step's name, so the function is renamed.
            new_name = _function_name(step)
            text = re.sub(rf"^(async\s+)?def\s+{re.escape(step.fn.__name__)}\s*\(",
                          lambda m, name=new_name: f"{m.group(1) or ''}def {name}(", "\n".join(lines), count=1,
                          flags=re.M)
            helpers.append(_Cell("code", redact(text)))
    job.cells.extend(helpers)
    if pipeline.aliases:
        job.cells.append(_Cell("alias", "\n".join(f"%conductor alias {k} {v}" for k, v in pipeline.aliases.items())))
    for source in _pipeline_cells(pipeline).values():
        kind = cell_kind(source)
        cell = _Cell(kind, _lazy(redact(source)) if kind == "step" else redact(source).strip())
        job.cells.append(cell)
    names = _step_inputs(job) - _defined_names(job)
    ns = pipeline.namespace
    values = {n: ns[n] for n in sorted(names) if n in ns and _literal(ns[n]) is not None}
    job.cells.insert(0, _Cell("params", _params_source(values), ["parameters"]))
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
            out[f"rubric:{step.name}"] = f"%%rubric {shlex.join(words)}\n{r.text}"
    return out


def _function_name(step: Any) -> str:
    return f"{step.name}_fn" if getattr(step.fn, "__name__", step.name) == step.name else step.fn.__name__


def step_cell(step: Any) -> str:
    """The ``%%step`` cell that declares ``step`` (a function step becomes a Python call)."""
    from ._types import Step

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
    flags = [("model", "--model"), ("system", "--system"), ("schema", "--schema"), ("map", "--map"),
             ("when", "--when"), ("temperature", "--temperature"), ("max_tokens", "--max-tokens"),
             ("retries", "--retries"), ("on_fail", "--on-fail"), ("max_turns", "--max-turns")]
    for attr, flag in flags:
        value = getattr(step, attr)
        if value is not None and value != getattr(default, attr):
            words += [flag, str(value)]
    for attr, flag in (("fallbacks", "--fallback"), ("contexts", "--context"), ("after", "--after"),
                       ("checks", "--check")):
        for value in getattr(step, attr):
            words += [flag, value]
    if step.tools:
        words += ["--tools", ",".join(step.tools)]
    if step.json:
        words.append("--json")
    if step.no_cache:
        words.append("--no-cache")
    return f"%%step {shlex.join(words)}\n{body}"


# ------------------------------------------------------------------------------- analysis


def _job_pipeline(job: _Job, like: Any | None):
    """A pipeline declared from the job's own cells (nothing runs), for the header."""
    from ._notebook import _options, step_from_cell
    from ._pipeline import Pipeline

    root = getattr(like, "root", None)
    config = getattr(like, "config", None)
    p = Pipeline(store=":memory:", root=root, config=config)
    for cell in job.cells:
        try:
            if cell.kind == "alias":
                for line in cell.source.splitlines():
                    words = shlex.split(line)
                    if len(words) == 4 and words[1] == "alias":
                        p.alias(words[2], words[3])
                continue
            if cell.kind not in ("step", "context", "rubric"):
                continue
            line, body = split_magic(cell.source)
            words = shlex.split(line)
            if cell.kind == "context":
                if "--file" in words:
                    p.contexts[words[0]] = f"(read from {words[words.index('--file') + 1]})"
                else:
                    p.context(words[0], body)
            elif cell.kind == "rubric":
                opts = _options(words[1:], {"--judge": "judge", "--threshold": "threshold",
                                            "--retries": "retries", "--on-fail": "on_fail"})
                p.rubric(words[0], body, **opts)
            else:
                p.add(step_from_cell(words, body))
        except Exception as exc:  # noqa: BLE001 - the header documents what it can
            job.notes.append(f"could not read a {cell.kind} cell for the header: {exc}")
    return p


def _step_inputs(job: _Job) -> set[str]:
    from ._graph import free_names
    from ._options import parse_step_line

    names: set[str] = set()
    steps: set[str] = set()
    for cell in job.cells:
        if cell.kind == "step":
            line, body = split_magic(cell.source)
            try:
                step = parse_step_line(line, body)
                names |= free_names(step)
                steps.add(step.name)
                names |= {s for s in (step.schema,) if s}
            except Exception:  # noqa: BLE001
                continue
    return names - steps


def _defined_names(job: _Job) -> set[str]:
    names: set[str] = set()
    for cell in job.cells:
        if cell.kind not in ("code", "params"):
            continue
        tree = _parse(cell.source)
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


def _check_helpers(job: _Job) -> None:
    """Leave out helper cells that read step outputs before the run; warn about missing names."""
    steps = {_declared_names(c) for c in job.cells if c.kind == "step"}
    kept = []
    for cell in job.cells:
        if cell.kind == "code":
            tree = _parse(cell.source)
            reads = _top_level_reads(tree) & steps if tree is not None else set()
            if reads:
                job.notes.append(f"left out a cell that reads step outputs before the run "
                                 f"({', '.join(sorted(reads))}): {_first_line(cell.source)}")
                # the markdown just before it described it
                while kept and kept[-1].kind == "markdown":
                    kept.pop()
                continue
        kept.append(cell)
    job.cells = kept
    missing = _step_inputs(job) - _defined_names(job) - _BUILTIN_NAMES
    for name in sorted(missing):
        job.notes.append(f"steps read `{name}`, which no parameter or helper cell of the job defines: "
                         "pass it with -p or add it to the parameters cell")


_BUILTIN_NAMES = set(dir(builtins)) | {"history"}


def _first_line(source: str) -> str:
    line = source.strip().splitlines()[0] if source.strip() else ""
    return line if len(line) <= 60 else line[:59] + "…"


# --------------------------------------------------------------------------------- header


def _header(job: _Job, p: Any, path: Path) -> tuple[str, dict]:
    from . import __version__

    attachments: dict = {}
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    src = f" from `{job.source}`" if job.source else ""
    lines = [f"# {job.title}", ""]
    if job.intro:
        lines += [job.intro, ""]
    lines += [f"*An nbconductor job, exported{src} on {when} (nbconductor {__version__}). "
              "It runs the whole pipeline once per set of parameters: see **How to run**.*", ""]
    try:
        graph = p.graph
    except Exception as exc:  # noqa: BLE001
        graph = None
        job.notes.append(f"the step graph cannot be built: {exc}")
    if graph is not None and graph.steps:
        lines += ["## Pipeline", ""]
        picture, attachments = _graph_picture(p, graph)
        lines += [picture, ""]
        lines += _steps_table(p, graph)
        lines.append("")
        if p.contexts:
            ctx = ", ".join(f"`{n}` ({len(t):,} characters)" for n, t in p.contexts.items())
            lines += [f"**Context blocks** (put in the system prompt of the steps that attach them): {ctx}.", ""]
        aliases = _alias_lines(p, graph)
        if aliases:
            lines += ["**Models.** " + " ".join(aliases), ""]
    params_cell = next((c for c in job.cells if c.kind == "params"), None)
    values = parameter_values(params_cell.source) if params_cell else {}
    lines += ["## Parameters", ""]
    if values:
        users = _parameter_users(graph) if graph is not None else {}
        lines += ["| name | default | read by |", "|---|---|---|"]
        for name, value in values.items():
            shown = _md(json.dumps(value, ensure_ascii=False, default=repr))
            who = ", ".join(f"`{s}`" for s in users.get(name, [])) or "—"
            lines.append(f"| `{name}` | `{shown if len(shown) <= 60 else shown[:59] + '…'}` | {who} |")
        lines.append("")
    else:
        lines += ["The job has no parameters.", ""]
    lines += _how_to_run(path.name, values, p, graph)
    if job.notes:
        lines += ["## Notes from the export", ""] + [f"- {n}" for n in job.notes] + [""]
    return "\n".join(lines).rstrip() + "\n", attachments


def _graph_picture(p: Any, graph) -> tuple[str, dict]:
    try:
        from .widgets._layout import render_svg, render_text
    except ImportError:
        render_svg = render_text = None
    snap = _static_snapshot(p, graph)
    if render_svg is not None:
        svg = render_svg(snap)
        text = render_text(snap)
        picture = ("![The step graph](attachment:pipeline.svg)\n\n<details><summary>as text</summary>\n\n"
                   f"```text\n{text}\n```\n\n</details>")
        return picture, {"pipeline.svg": {"image/svg+xml": base64.b64encode(svg.encode()).decode()}}
    mermaid = ["```mermaid", "graph LR"]
    mermaid += [f"  {n}" for n in graph.order() if not graph.deps[n] and not graph.dependents[n]]
    mermaid += [f"  {u} --> {v}" for u, v in graph.edges]
    return "\n".join(mermaid + ["```"]), {}


def _static_snapshot(p: Any, graph) -> dict:
    try:
        from ._snapshot import snapshot

        snap = snapshot(p, results={}, run={"status": "not run yet"})
        for node in snap["nodes"]:  # the model as written: what it resolves to depends on the keys set
            step = graph.steps.get(node["id"])
            if step is not None and step.kind in ("llm", "image"):
                node["model"] = step.model or "default"
        return snap
    except ImportError:
        nodes = [{"id": n, "label": n, "kind": graph.steps[n].kind, "state": "pending",
                  "model": graph.steps[n].model} for n in graph.order()]
        return {"nodes": nodes, "edges": [list(e) for e in graph.edges], "run": {"status": "not run yet"}}


def _steps_table(p: Any, graph) -> list[str]:
    rows = ["| step | kind | model | reads | gates | when it fails |", "|---|---|---|---|---|---|"]
    for name in graph.order():
        s = graph.steps[name]
        kind = {"llm": "LLM", "python": "Python", "image": "image", "function": "Python"}[s.kind]
        extras = [x for x in ("JSON" if s.json else "", f"schema `{s.schema}`" if s.schema else "",
                              f"map `{s.map}`" if s.map else "", f"when `{s.when}`" if s.when else "") if x]
        if extras:
            kind += " (" + ", ".join(extras) + ")"
        model = "—"
        if s.kind in ("llm", "image"):
            model = f"`{s.model}`" if s.model else "default"
            if s.fallbacks:
                model += ", then " + ", ".join(f"`{f}`" for f in s.fallbacks)
        reads = sorted(graph.deps[name]) + sorted(graph.external_names(name))
        gates = [f"`{_md(c)}`" for c in s.checks]
        if s.rubric is not None:
            gates.append(f"rubric ≥ {s.rubric.threshold:g} (judge `{s.rubric.judge or 'judge'}`)")
        fails = f"{s.on_fail}, after {s.retries} retr{'y' if s.retries == 1 else 'ies'}"
        rows.append(f"| `{name}` | {kind} | {model} | {', '.join(f'`{r}`' for r in reads) or '—'} | "
                    f"{', '.join(gates) or '—'} | {fails} |")
    return rows


def _alias_lines(p: Any, graph) -> list[str]:
    specs = set()
    for s in graph.steps.values():
        if s.kind in ("llm", "image"):
            specs.update([s.model or "default", *s.fallbacks])
        if s.rubric is not None:
            specs.add(s.rubric.judge or "judge")
    out = []
    providers = set()
    builtin = []
    for spec in sorted(specs):
        if ":" in spec:
            providers.add(spec.split(":", 1)[0])
            continue
        if spec in p.aliases:
            out.append(f"`{spec}` is `{p.aliases[spec]}` (defined in the job).")
            providers.add(p.aliases[spec].split(":", 1)[0])
        elif spec in p.config.aliases:
            target = p.config.aliases[spec]
            target = target if isinstance(target, str) else target.model
            out.append(f"`{spec}` is `{target}` (from {Path(p.config.source or 'nbconductor.toml').name}; "
                       "keep that file beside the job).")
            providers.add(target.split(":", 1)[0])
        else:
            builtin.append(f"`{spec}`")
            providers.update({"anthropic", "openai"})
    if builtin:
        are = "is a built-in alias" if len(builtin) == 1 else "are built-in aliases"
        out.append(f"{', '.join(builtin)} {are}: they use the provider whose key is set (Anthropic, then "
                   "OpenAI), or the offline provider when none is.")
    keys = [f"`{v}`" for k, v in (("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY"))
            if k in providers]
    if keys:
        out.append(f"Keys are read from the environment only: {' or '.join(keys)}.")
    return out


def _parameter_users(graph) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for name in graph.order():
        for ref in graph.external_names(name):
            users.setdefault(ref, []).append(name)
    return users


def _how_to_run(name: str, values: dict, p: Any, graph) -> list[str]:
    example = next((k for k, v in values.items() if isinstance(v, str)), next(iter(values), None))
    p_arg = f' -p {example} "…"' if example else ""
    store = p.config.store or ".nbconductor/store.sqlite"
    return [
        "## How to run", "",
        "```bash",
        f"papermill {name} out.ipynb{p_arg}              # plain papermill, one kernel",
        f"nbconductor run {name}{p_arg} -o out.ipynb      # the same, in-process (no kernel start)",
        f"nbconductor batch {name} --params rows.csv --workers 4 --out runs/   # one run per row",
        f"nbconductor batch {name} --params rows.csv --dask tcp://scheduler:8786",
        "```", "",
        "Parameters go in with `-p NAME VALUE` (papermill's rules) or as the columns of a CSV / the keys "
        "of a YAML or JSON list of rows. Every step result is recorded in the run store "
        f"(`{store}` beside the job, or `$NBCONDUCTOR_STORE`). A step that fails with "
        "`--on-fail fail` stops the run and papermill exits non-zero, with the error cell marked; "
        "flagged outputs do not fail the run: they wait in `nbconductor review`, and "
        "`nbconductor report` shows yield, retries and cost per step.", "",
    ]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("`", "'")


# ---------------------------------------------------------------------------------- write


def _write(job: _Job, path: str | os.PathLike, like: Any | None) -> Path:
    import nbformat
    from nbformat import v4

    from . import __version__

    out = Path(path)
    if out.suffix != ".ipynb":
        raise OptionError(f"export: the job must be an .ipynb file, got {str(path)!r} (e.g. jobs/newsletter.ipynb)")
    if job.source and like is not None and like.notebook and Path(like.notebook).resolve() == out.resolve():
        raise OptionError(f"export: {out} is the notebook being exported; choose another path")
    _check_helpers(job)
    p = _job_pipeline(job, like)
    header, attachments = _header(job, p, out)
    cells = [v4.new_markdown_cell(redact(header), metadata={"tags": [JOB_TAG]})]
    if attachments:
        cells[0].attachments = attachments
    params = next((c for c in job.cells if c.kind == "params"), _Cell("params", _params_source({}), ["parameters"]))
    cells.append(v4.new_code_cell(params.source, metadata={"tags": ["parameters"]}))
    cells.append(v4.new_code_cell("%load_ext nbconductor"))
    for cell in job.cells:
        if cell is params or cell.kind == "params":
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
    graph_steps = list(p.steps)
    nb = v4.new_notebook(cells=cells, metadata={
        "kernelspec": job.kernelspec or dict(PYTHON_KERNEL),
        "language_info": {"name": "python"},
        "nbconductor": {"job": True, "version": __version__, "source": job.source,
                        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "steps": graph_steps},
    })
    nbformat.validate(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return out


def is_job(nb: Any) -> bool:
    """Whether a notebook (a NotebookNode or dict) is a job written by `export_notebook`."""
    return bool((nb.get("metadata") or {}).get("nbconductor", {}).get("job"))
