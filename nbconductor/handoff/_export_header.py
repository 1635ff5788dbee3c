"""The header cell of an exported job: what the pipeline does and how to run it.

Markdown for whoever runs the job next: title and intro, the step graph (an SVG attachment, or
Mermaid without the widgets), a table of steps (kind, model, reads, gates, what happens when
they fail), context blocks, where each model alias comes from and which key it needs, the
parameters with their defaults and readers, how to run the job, and the export's notes. It
documents the job's own cells, read back into a `Pipeline` that never runs (`job_pipeline`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import shlex
from pathlib import Path
from typing import Any

from .._notebook import parameter_values
from .._states import PENDING
from ._export_cells import Job


def job_pipeline(job: Job, like: Any | None):
    """A pipeline declared from the job's own cells (nothing runs), with ``like``'s root and config."""
    from .._notebook import declare_cell
    from .._pipeline import Pipeline

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
            declare_cell(p, cell.kind, cell.source, read_files=False)
        except Exception as exc:  # noqa: BLE001 - the header documents what it can
            job.notes.append(f"could not read a {cell.kind} cell for the header: {exc}")
    return p


def header(job: Job, p: Any, path: Path) -> tuple[str, dict]:
    """(the header's Markdown, its attachments) for ``job`` written to ``path``; ``p`` is `job_pipeline`."""
    from .. import __version__

    attachments: dict = {}
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    src = f" from `{job.source}`" if job.source else ""
    lines = [f"# {job.title}", ""]
    if job.intro:
        lines += [job.intro, ""]
    lines += [
        f"*An nbconductor job, exported{src} on {when} (nbconductor {__version__}). "
        "It runs the whole pipeline once per set of parameters: see **How to run**.*",
        "",
    ]
    try:
        graph = p.graph
    except Exception as exc:  # noqa: BLE001
        graph = None
        job.notes.append(f"the step graph cannot be built: {exc}")
    if graph is not None and graph.steps:
        lines += ["## Pipeline", ""]
        picture, attachments = _graph_picture(p, graph)
        lines += [picture, ""]
        lines += _steps_table(graph)
        lines.append("")
        if p.contexts:
            ctx = ", ".join(f"`{n}` ({len(t):,} characters)" for n, t in p.contexts.items())
            lines += [
                f"**Context blocks** (put in the system prompt of the steps that attach them): {ctx}.",
                "",
            ]
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
            lines.append(
                f"| `{name}` | `{shown if len(shown) <= 60 else shown[:59] + '…'}` | {who} |"
            )
        lines.append("")
    else:
        lines += ["The job has no parameters.", ""]
    lines += _how_to_run(path.name, values, p)
    if job.notes:
        lines += ["## Notes from the export", ""] + [f"- {n}" for n in job.notes] + [""]
    return "\n".join(lines).rstrip() + "\n", attachments


def _graph_picture(p: Any, graph) -> tuple[str, dict]:
    try:
        from ..render._layout import render_svg, render_text
    except ImportError:
        render_svg = render_text = None
    snap = _static_snapshot(p, graph)
    if render_svg is not None:
        svg = render_svg(snap)
        text = render_text(snap)
        picture = (
            "![The step graph](attachment:pipeline.svg)\n\n<details><summary>as text</summary>\n\n"
            f"```text\n{text}\n```\n\n</details>"
        )
        return picture, {"pipeline.svg": {"image/svg+xml": base64.b64encode(svg.encode()).decode()}}
    mermaid = ["```mermaid", "graph LR"]
    mermaid += [f"  {n}" for n in graph.order() if not graph.deps[n] and not graph.dependents[n]]
    mermaid += [f"  {u} --> {v}" for u, v in graph.edges]
    return "\n".join(mermaid + ["```"]), {}


def _static_snapshot(p: Any, graph) -> dict:
    try:
        from ..render._snapshot import snapshot

        snap = snapshot(p, results={}, run={"status": "not run yet"})
        for node in snap[
            "nodes"
        ]:  # the model as written: what it resolves to depends on the keys set
            step = graph.steps.get(node["id"])
            if step is not None and step.kind in ("llm", "image"):
                node["model"] = step.model or "default"
        return snap
    except ImportError:
        nodes = [
            {
                "id": n,
                "label": n,
                "kind": graph.steps[n].kind,
                "state": PENDING,
                "model": graph.steps[n].model,
            }
            for n in graph.order()
        ]
        return {
            "nodes": nodes,
            "edges": [list(e) for e in graph.edges],
            "run": {"status": "not run yet"},
        }


def _steps_table(graph) -> list[str]:
    rows = ["| step | kind | model | reads | gates | when it fails |", "|---|---|---|---|---|---|"]
    for name in graph.order():
        s = graph.steps[name]
        kind = {"llm": "LLM", "python": "Python", "image": "image", "function": "Python"}[s.kind]
        extras = [
            x
            for x in (
                "JSON" if s.json else "",
                f"schema `{s.schema}`" if s.schema else "",
                f"map `{s.map}`" if s.map else "",
                f"when `{s.when}`" if s.when else "",
            )
            if x
        ]
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
        rows.append(
            f"| `{name}` | {kind} | {model} | {', '.join(f'`{r}`' for r in reads) or '—'} | "
            f"{', '.join(gates) or '—'} | {fails} |"
        )
    return rows


def _alias_lines(p: Any, graph) -> list[str]:
    specs = set()
    for s in graph.steps.values():
        if s.kind in ("llm", "image"):
            specs.update([s.model or p.config.default_model or "default", *s.fallbacks])
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
            target = p.aliases[spec]
            target = target if isinstance(target, str) else target.model
            out.append(f"`{spec}` is `{target}` (defined in the job).")
            providers.add(target.split(":", 1)[0])
        elif spec in p.config.aliases:
            target = p.config.aliases[spec]
            target = target if isinstance(target, str) else target.model
            out.append(
                f"`{spec}` is `{target}` (from {Path(p.config.source or 'nbconductor.toml').name}; "
                "keep that file beside the job)."
            )
            providers.add(target.split(":", 1)[0])
        else:
            builtin.append(f"`{spec}`")
            providers.update({"anthropic", "openai"})
    if builtin:
        are = "is a built-in alias" if len(builtin) == 1 else "are built-in aliases"
        out.append(
            f"{', '.join(builtin)} {are}: they use the provider whose key is set (Anthropic, then "
            "OpenAI), or the offline provider when none is."
        )
    keys = [
        f"`{v}`"
        for k, v in (("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY"))
        if k in providers
    ]
    if keys:
        out.append(f"Keys are read from the environment only: {' or '.join(keys)}.")
    return out


def _parameter_users(graph) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for name in graph.order():
        for ref in graph.external_names(name):
            users.setdefault(ref, []).append(name)
    return users


def _how_to_run(name: str, values: dict, p: Any) -> list[str]:
    example = next((k for k, v in values.items() if isinstance(v, str)), next(iter(values), None))
    p_arg = f' -p {example} "…"' if example else ""
    from ..store._base import shown

    store = shown(p.config.store or ".nbconductor/store.sqlite")  # a URL without its password
    return [
        "## How to run",
        "",
        "```bash",
        f"papermill {name} out.ipynb{p_arg}              # plain papermill, one kernel",
        f"nbconductor run {name}{p_arg} -o out.ipynb      # the same, in-process (no kernel start)",
        f"nbconductor batch {name} --params rows.csv --workers 4 --out runs/   # one run per row",
        f"nbconductor batch {name} --params rows.csv --dask tcp://scheduler:8786",
        "```",
        "",
        "Parameters go in with `-p NAME VALUE` (papermill's rules) or as the columns of a CSV / the keys "
        "of a YAML or JSON list of rows. Every step result is recorded in the run store "
        f"(`{store}` beside the job, or `$NBCONDUCTOR_STORE`). A step that fails with "
        "`--on-fail fail` stops the run and papermill exits non-zero, with the error cell marked; "
        "flagged outputs do not fail the run: they wait in `nbconductor review`, and "
        "`nbconductor report` shows yield, retries and cost per step.",
        "",
    ]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("`", "'")
