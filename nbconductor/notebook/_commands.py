"""The ``%conductor`` subcommands. Each takes the magics object and the remaining words."""

from __future__ import annotations

import argparse
import json

from IPython.core.error import UsageError
from IPython.display import Markdown, display

from .._config import KEY_ENV, keys_available
from .._format import fmt_cost
from .._states import CACHED, FAILED, PASSED
from .._summary import preview
from ._display import footer, show_images, show_result

#: ``%conductor`` SUBCOMMAND -> its usage; `cmd_<name>` does it and its docstring says what it
#: does. `usage` builds ``%conductor?`` from these, so a new subcommand is documented by adding it.
SUBCOMMANDS = {
    "run": "run [STEP ...] [--force] [--dry-run]",
    "compare": "compare STEP --data FILE [--variants A,B] [--repeats N] [--pairwise SPEC] [--workers N]",
    "promote": "promote STEP NAME",
    "status": "status",
    "show": "show STEP",
    "alias": "alias [NAME SPEC [--base-url URL] [--api-key-env VAR]]",
    "models": "models",
    "graph": "graph",
    "timeline": "timeline",
    "trace": "trace [on|off|status]",
    "form": "form",
    "review": "review [--store PATH]",
    "report": "report [--store PATH] [--json]",
    "export": "export PATH.ipynb",
    "reset": "reset",
    "template-function": "template-function NAME [NAME ...]",
}


def usage() -> str:
    """``%conductor?``: one entry per subcommand, its usage and its command's docstring."""
    lines = ["%conductor SUBCOMMAND [options]", ""]
    for name, words in SUBCOMMANDS.items():
        fn = globals().get(f"cmd_{name.replace('-', '_')}")
        doc = " ".join((fn.__doc__ or "").split()) if fn is not None else ""
        lines += [f"  %conductor {words}", f"      {doc}" if doc else ""]
    return "\n".join(line for line in lines if line is not None)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"%conductor {self.prog}: {message}")


def _args(prog: str, words: list[str], *specs) -> argparse.Namespace:
    parser = _Parser(prog=prog, add_help=False)
    for names, kwargs in specs:
        parser.add_argument(*names, **kwargs)
    return parser.parse_args(words)


def cmd_run(m, words):
    """Run the graph (or targets and their upstream); ``--dry-run`` estimates and sends nothing."""
    a = _args(
        "run",
        words,
        (["steps"], {"nargs": "*"}),
        (["--force"], {"action": "store_true"}),
        (["--dry-run"], {"action": "store_true"}),
    )
    if a.dry_run:
        return _dry_run(m, a.steps or None)
    live = _live_graph(m, a.steps or None)
    try:
        run = m.run(
            a.steps or None, force=a.force, live=live.observe if live else None, raise_failed=False
        )
    finally:
        if live is not None:
            live.finish(m.pipeline)
    display(Markdown(run.summary()))
    show_images(run)  # a thumbnail per image step
    run.raise_for_status()  # after the summary, so a failed job still shows what ran
    return None


def _live_graph(m, targets):
    try:
        from .widgets.live import LiveGraph
    except ImportError:
        return None
    live = LiveGraph(m.pipeline, targets=targets)
    live.show()
    return live


def _dry_run(m, targets):
    from .._summary import text_table

    plan = m.pipeline.plan(None, targets)
    rows = [
        [
            p["step"],
            p["model"] or "—",
            CACHED if p["cached"] else "run",
            str(p["calls"]),
            f"{p['input_tokens']:,}",
            f"{p['output_tokens']:,}",
            fmt_cost(p["cost"]),
        ]
        for p in plan
    ]
    total_cost = (
        None
        if any(p["cost"] is None for p in plan)
        else sum(p["cost"] for p in plan if not p["cached"])
    )
    text = text_table(
        ["step", "model", "action", "calls", "est. input", "est. output", "est. cost"], rows
    )
    text += f"\n\ndry run: nothing was sent. Estimated cost: {fmt_cost(total_cost)}"
    print(text)
    return plan


def cmd_compare(m, words):
    """Compare a step's variants over a dataset (`nbconductor.notebook._compare_cmd`)."""
    from ._compare_cmd import cmd_compare as compare

    return compare(m, words)


def cmd_promote(m, words):
    """Make a variant the step; a new ``%%step`` cell with its source is put below."""
    from ._compare_cmd import cmd_promote as promote

    return promote(m, words)


def cmd_status(m, words):
    """One line per declared step: kind, model, upstream, last state, whether the next run calls
    its model again (its definition or an upstream output changed), output preview."""
    from .._errors import DefinitionError
    from .._summary import text_table

    graph = m.pipeline.graph
    note = ""
    try:
        plan = {p["step"]: p for p in m.pipeline.plan()}
    except DefinitionError as exc:
        plan, note = {}, f"\nnext run: cannot tell yet: {exc}"
    rows = []
    for name in graph.order():
        step = graph.steps[name]
        r = m.pipeline.results.get(name)
        model = "—" if step.kind in ("python", "function") else (step.model or "default")
        p = plan.get(name)
        nxt = (
            "—"
            if step.kind in ("python", "function") or p is None
            else (CACHED if p["cached"] else f"calls model ×{p['calls']}")
        )
        rows.append(
            [
                name,
                step.kind,
                model,
                ", ".join(sorted(graph.deps[name])) or "—",
                r.state if r else "not run",
                nxt,
                preview(r.output if r else None, 50),
            ]
        )
    print(
        text_table(["step", "kind", "model", "upstream", "last state", "next run", "output"], rows)
        + note
    )


def cmd_show(m, words):
    """Everything about one step's last result: prompt, output, model, attempts, gates, cost."""
    a = _args("show", words, (["step"], {}))
    r = m.pipeline.results.get(a.step)
    if r is None:
        if a.step not in m.pipeline.steps:
            raise UsageError(f"%conductor show: no step named `{a.step}`")
        raise UsageError(
            f"%conductor show: step `{a.step}` has not run yet: %conductor run {a.step}"
        )
    lines = [f"### {a.step}", "", footer(r), ""]
    if r.prompt:
        lines += ["**Prompt**", "", "```text", r.prompt, "```", ""]
    for i, att in enumerate(r.attempts, 1):
        lines.append(
            f"- attempt {i}: {att.model} — {att.outcome}" + (f" ({att.error})" if att.error else "")
        )
    for g in r.gates:
        lines.append(
            f"- gate {g.name}: {PASSED if g.passed else FAILED}"
            + (f", score {g.score:.2f}" if g.score is not None else "")
            + (f" — {g.feedback}" if g.feedback else "")
        )
    if r.error:
        lines += ["", f"**Error**: {r.error}"]
    display(Markdown("\n".join(lines)))
    show_result(r)


ALIAS_OPTIONS = {
    "--base-url": "base_url",
    "--api-key-env": "api_key_env",
    "--structured": "structured",
    "--concurrency": "concurrency",
    "--api": "api",
}
ALIAS_USAGE = (
    "%conductor alias NAME SPEC [--base-url URL] [--api-key-env VAR] "
    "[--structured json_schema|json_object|prompt] [--concurrency N] [--api chat|responses], e.g. "
    "%conductor alias fast anthropic:claude-haiku-4-5 or "
    "%conductor alias tiny openai-compatible:gemma3 --base-url http://localhost:8080/v1"
)


def cmd_alias(m, words):
    """``alias NAME SPEC [--base-url URL] …`` defines a model alias; ``alias`` alone lists them."""
    if not words:
        return cmd_models(m, [])
    if len(words) < 2 or len(words) % 2:
        raise UsageError(ALIAS_USAGE)
    options = {}
    for flag, value in zip(words[2::2], words[3::2], strict=True):
        key = ALIAS_OPTIONS.get(flag)
        if key is None:
            raise UsageError(f"%conductor alias: unknown option {flag}: {ALIAS_USAGE}")
        options[key] = value
    m.pipeline.alias(words[0], words[1], **options)
    ref = m.pipeline.pool.resolve(words[0])
    where = f" at {ref.base_url}" if ref.base_url else ""
    print(f"alias {words[0]} → {ref.spec}{where}")


def cmd_models(m, words):
    """Aliases and what they resolve to, and which provider keys are set."""
    from .._summary import text_table

    pool = m.pipeline.pool
    names = sorted(
        set(m.pipeline.config.aliases) | set(m.pipeline.aliases) | {"fast", "writer", "judge"}
    )
    rows = []
    for name in names:
        try:
            ref = pool.resolve(name)
            rows.append([name, ref.spec, ref.base_url or "—"])
        except Exception as exc:  # noqa: BLE001
            rows.append([name, f"error: {exc}", "—"])
    used = sorted({s.model for s in m.pipeline.steps.values() if s.model and ":" in s.model})
    rows += [[spec, spec, "—"] for spec in used]
    print(text_table(["model", "resolves to", "base url"], rows))
    keys = keys_available()
    local = sorted({r[2] for r in rows if r[2] != "—"})
    if keys:
        said = ", ".join(KEY_ENV[k] for k in keys)
    elif local:
        said = f"none (aliases with a base url need none unless their api_key_env says so: {', '.join(local)})"
    else:
        said = "none (built-in aliases use the offline provider)"
    print("\nkeys set: " + said)


def cmd_graph(m, words):
    """The step graph widget: nodes coloured by state; click one for its prompt, output, gates."""
    _args("graph", words)
    from .widgets.live import graph_widget

    return graph_widget(m.pipeline)


def cmd_timeline(m, words):
    """When each step of the last run started and ended, one bar per attempt."""
    _args("timeline", words)
    last = m.pipeline.last_run
    if last is None:
        raise UsageError(
            "%conductor timeline: nothing has run yet: run a %%step cell or %conductor run"
        )
    from ..render._snapshot import snapshot
    from ..render.timeline import TimelineView

    return TimelineView(snapshot(m.pipeline, last.results, steps=list(last.results)))


def cmd_trace(m, words):
    """Export runs as OpenTelemetry traces (``on``), stop (``off``), or say where they go."""
    from .. import _trace

    args = _args("trace", words, (["state"], {"nargs": "?", "choices": ["on", "off", "status"]}))
    if args.state == "on" and not _trace.available():
        raise UsageError(
            "%conductor trace on: OpenTelemetry is not installed: pip install 'nbconductor[otel]'"
        )
    if args.state in ("on", "off"):
        _trace.switch(args.state == "on")
    print(_trace.describe(m.pipeline.pool.config))


def cmd_form(m, words):
    """An intake form built from the parameters cell; its Run button runs the pipeline."""
    _args("form", words)
    from IPython.display import clear_output

    from .._errors import ConductorError
    from .._notebook import current_parameters
    from .widgets.form import IntakeForm

    params = current_parameters(m.shell)
    if not params:
        raise UsageError(
            "%conductor form: no parameters found: tag the cell that sets them `parameters` "
            "(papermill's convention) and save the notebook, or set __parameters__ = ['topic', ...]"
        )

    def on_run(values):
        if not m.pipeline.steps:
            raise UsageError("no steps declared yet: run the %%step cells first")
        m.shell.user_ns.update(values)
        live = None
        try:
            live = _live_graph(m, None)
            run = m.run(None, live=live.observe if live else None)
        except ConductorError as exc:  # a bad name, a failed step: one line, not a traceback
            raise UsageError(str(exc)) from None
        finally:
            if live is not None:
                live.finish(m.pipeline)
                # The form's Output widget ignores display updates, so the streamed-text
                # preview would stay: redraw the area with just the finished graph.
                clear_output(wait=True)
                display(live.widget)
        return Markdown(run.summary())

    return IntakeForm(params, on_run)


def cmd_review(m, words):
    """The review queue: flagged outputs (this kernel's, or a store's) to approve, edit, reject."""
    a = _args("review", words, (["--store"], {}), (["--pairwise"], {"metavar": "EXPERIMENT"}))
    if a.pairwise:  # blind pairwise review of a compare (`_pairwise_widget`)
        from ._pairwise_widget import pairwise_review

        m.shell.user_ns["_pairwise_review"] = pairwise_review(m, a.pairwise)
        return None
    from ._review_widget import review_widget

    return review_widget(m, a.store)


def cmd_report(m, words):
    """Per-step first-pass and final yield, retries, fallbacks, edits, tokens, cost, latency."""
    a = _args("report", words, (["--store"], {}), (["--json"], {"action": "store_true"}))
    from ..store._report import report
    from ._report_display import show_report

    rep = report(m.pipeline.store if not a.store else a.store)
    if a.json:
        print(json.dumps(rep, indent=2))
        return None
    return show_report(rep)


def cmd_export(m, words):
    """Write this pipeline as a clean, documented papermill job."""
    a = _args("export", words, (["path"], {}))
    from ..handoff._export import export_notebook

    path = export_notebook(m, a.path)
    print(
        f"exported to {path}: run it with `papermill {path} out.ipynb -p NAME VALUE` or `nbconductor run {path}`"
    )


def cmd_template_function(m, words):
    """``template-function NAME ...``: let templates call these notebook functions, as
    decorating them with ``@nbconductor.template_function`` does (for functions you import,
    e.g. ``from textwrap import shorten``, and built-ins)."""
    from .._sandbox import template_function

    if not words:
        raise UsageError(
            "%conductor template-function NAME [NAME ...]: the notebook functions templates may call"
        )
    for name in words:
        if name not in m.shell.user_ns:
            raise UsageError(
                f"%conductor template-function: no function `{name}` in the notebook: define it, or "
                f"import it by name first (from textwrap import shorten)"
            )
        value = m.shell.user_ns[name]
        if not callable(value):
            kind = "a module" if type(value).__name__ == "module" else f"a {type(value).__name__}"
            raise UsageError(
                f"%conductor template-function: `{name}` is {kind}, not a function: name a function "
                "(from textwrap import shorten; %conductor template-function shorten)"
            )
        template_function(value)
    print(f"templates may call: {', '.join(words)}")


def cmd_reset(m, words):
    """Forget declared steps, contexts and results in this kernel (the store keeps everything)."""
    m.pipeline.reset()
    m.cells.clear()
    print("pipeline reset")
