"""IPython magics: ``%%step``, ``%%context``, ``%%rubric`` and ``%conductor``.

A thin layer over `Pipeline`: it parses options, binds outputs to notebook variables, shows
them inline and turns nbconductor's definition errors into one-line ``UsageError``s.
"""

from __future__ import annotations

import os
import shlex
from contextlib import contextmanager

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import Markdown, display

from .._config import keys_available
from .._errors import ConductorError, DefinitionError
from .._options import (
    CONTEXT_OPTIONS,
    RUBRIC_OPTIONS,
    STEP_OPTIONS,
    check_step_name,
    step_from_args,
)
from .._pipeline import Pipeline
from .._states import CACHED, FLAGGED, PASSED, SKIPPED
from .._variants import VARIANT_OPTIONS, variant_from_args
from ._commands import SUBCOMMANDS, usage


@contextmanager
def usage_errors():
    """Turn a `DefinitionError` (a user's mistake) into a one-line `UsageError`."""
    try:
        yield
    except DefinitionError as exc:
        raise UsageError(str(exc)) from None


def _parse(fn, line: str):
    """Parse a magic's options POSIX-style (quotes group words), as a shell would."""
    name = fn.__name__
    try:
        return fn.parser.parse_args(shlex.split(line))
    except ValueError as exc:
        raise UsageError(f"%%{name}: cannot parse {line!r}: {exc}") from None
    except UsageError as exc:
        raise UsageError(f"%%{name}: {exc} (see %%{name}? for the options)") from None


def _step_options(fn, table=STEP_OPTIONS, name: str = "%step"):
    # The same option table the notebook reader uses; `%%step?` shows every option.
    for names, kwargs in reversed(table):
        kwargs = {**kwargs, "help": kwargs.get("help", "").replace("%%", "%%%%")}
        fn = argument(*names, **kwargs)(fn)
    return magic_arguments(name=name)(fn)  # IPython adds the second %


def _documented(doc: str):
    """Give a magic its docstring (what ``%conductor?`` shows), built from the declarations."""

    def set_doc(fn):
        fn.__doc__ = doc
        return fn

    return set_doc


def _options_of(table, name: str):
    """Stack one option table of `nbconductor._options` on a magic."""
    return lambda fn: _step_options(fn, table, name)


def _variant_options(fn):
    return _step_options(fn, VARIANT_OPTIONS, "%variant")


@magics_class
class ConductorMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        notebook = os.environ.get("JPY_SESSION_NAME") or None
        self.pipeline = Pipeline(namespace=shell.user_ns, notebook=notebook)
        self.cells: dict[str, str] = {}  # step/context/rubric name -> the cell that declared it
        self._shown: dict[str, tuple] = {}  # step -> (footer display handle, result) of its cell
        self._rubric_added: set[str] = set()  # steps shown before a rubric was attached to them
        self._said_offline = False

    # %%step ------------------------------------------------------------------------------------
    @_step_options
    @cell_magic
    def step(self, line: str, cell: str):
        """Declare a pipeline step and run it (with any stale upstream steps).

        The body is a Jinja2 prompt template: ``{{ name }}`` of another step makes it an
        upstream dependency; other names come from the notebook (parameters, variables).
        Its output is shown inline and bound to a variable named after the step.
        """
        args = _parse(self.step, line)
        with usage_errors():
            step = step_from_args(args, cell)
            check_step_name(step.name, self.shell.user_ns, self.pipeline.steps)
            step = self.pipeline.add(step)  # checks the graph; a cycle leaves it as it was
        self.cells[step.name] = f"%%step {line}\n{cell}"
        if not step.lazy:
            self.run([step.name], show=[step.name])

    # %%variant ---------------------------------------------------------------------------------
    @_variant_options
    @line_cell_magic
    def variant(self, line: str, cell: str | None = None):
        """Declare another version of a step: a new body and/or options (``%variant STEP NAME
        [options]``, one line, keeps the step's prompt). Runs nothing; ``%conductor compare STEP --data FILE`` compares the variants
        (the step's own cell is ``base``), ``%conductor promote STEP NAME`` keeps one.
        """
        args = _parse(self.variant, line)
        with usage_errors():
            v = variant_from_args(args, cell)
            self.pipeline.variant(v.step, v.name, v.body, **v.options)
        self.cells[f"variant:{v.step}:{v.name}"] = (
            f"%%variant {line}\n{cell}" if cell is not None else f"%variant {line}"
        )
        changed = ", ".join(["body"] * bool(v.body) + [k.replace("_", "-") for k in v.options])
        display(
            Markdown(
                f"*variant `{v.name}` of `{v.step}` ({changed or 'no changes'}): compare with "
                f"`%conductor compare {v.step} --data FILE`*"
            )
        )

    # %%context ---------------------------------------------------------------------------------
    @_options_of(CONTEXT_OPTIONS, "%context")
    @line_cell_magic
    def context(self, line: str, cell: str | None = None):
        """Store a named context block; steps attach it with ``--context NAME``.

        ``%%context NAME`` takes the cell body; ``%context NAME --file PATH`` reads a file.
        """
        args = _parse(self.context, line)
        if not args.name:
            raise UsageError("%%context needs a name: %%context NAME [--file PATH]")
        with usage_errors():
            self.pipeline.context(args.name, cell if not args.file else None, file=args.file)
        self.cells[f"context:{args.name}"] = (
            f"%%context {line}\n{cell}" if cell is not None else f"%context {line}"
        )

    # %%rubric ----------------------------------------------------------------------------------
    @_options_of(RUBRIC_OPTIONS, "%rubric")
    @cell_magic
    def rubric(self, line: str, cell: str):
        """Attach an LLM-judge gate to a step; the cell body is the rubric."""
        args = _parse(self.rubric, line)
        if not args.step:
            raise UsageError("%%rubric needs a step name: %%rubric STEP --judge SPEC --threshold X")
        with usage_errors():
            self.pipeline.rubric(
                args.step,
                cell,
                judge=args.judge or "judge",
                threshold=args.threshold,
                retries=args.retries,
                on_fail=args.on_fail,
                max_tokens=args.max_tokens,
                audit=args.audit,
            )
        self.cells[f"rubric:{args.step}"] = f"%%rubric {line}\n{cell}"
        if args.step in self._shown:  # its cell shows an output the rubric has not judged
            from ._display import mark_stale

            handle, result = self._shown[args.step]
            mark_stale(
                handle,
                result,
                f"a rubric was added: the next cell that needs `{args.step}` re-runs it",
            )
            self._rubric_added.add(args.step)

    # %conductor --------------------------------------------------------------------------------
    @line_magic
    @_documented(usage())
    def conductor(self, line: str):
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(
                f"%conductor: cannot parse {line!r}: {exc} (check the quotes)"
            ) from None
        if not words:
            raise UsageError(f"%conductor needs a subcommand: {', '.join(SUBCOMMANDS)}")
        sub, rest = words[0], words[1:]
        if sub not in SUBCOMMANDS:
            import difflib

            close = difflib.get_close_matches(sub, SUBCOMMANDS, n=1)
            hint = (
                f"did you mean `{close[0]}`?" if close else f"use one of {', '.join(SUBCOMMANDS)}"
            )
            raise UsageError(f"%conductor: unknown subcommand `{sub}`: {hint}")
        from . import _commands

        with usage_errors():
            return getattr(_commands, f"cmd_{sub.replace('-', '_')}")(self, rest)

    # running -----------------------------------------------------------------------------------
    def run(
        self,
        targets: list[str] | None,
        *,
        force=False,
        show: list[str] | None = None,
        live=None,
        raise_failed: bool = True,
    ):
        """Run ``targets`` (None: every step) with a live progress line; bind the outputs to
        notebook variables; show the ``show`` steps' outputs; returns the `RunResult`. With
        ``raise_failed``, raises `StepFailed` for a failed step (so papermill marks the cell).
        ``live`` also receives every event (the live graph)."""
        from ._display import LiveText, show_result

        self._say_offline(targets)
        stream = LiveText()

        def observer(event, step, payload):
            stream(event, step, payload)
            if live is not None:
                live(event, step, payload)

        try:
            with usage_errors():
                run = self.pipeline.run(None, targets, force=force, observer=observer, stream=True)
        finally:
            stream.close()
        for name, result in run.results.items():
            if result.state in (PASSED, CACHED, FLAGGED, SKIPPED):
                self.shell.user_ns[name] = result.output
        for name in show or []:
            if name in run.results:
                self._shown[name] = (show_result(run.results[name]), run.results[name])
                self._rubric_added.discard(name)
        self._said_reran(run, show or [])
        if raise_failed:
            run.raise_for_status()
        return run

    def _said_reran(self, run, shown: list[str]) -> None:
        """One line for a step that re-ran here because a rubric was added after its cell ran."""
        from ._display import mark_stale

        for name in sorted(self._rubric_added):
            result = run.results.get(name)
            if result is None or result.state == CACHED or name in shown:
                continue
            print(f"{name} re-ran: a rubric was added")
            self._rubric_added.discard(name)
            handle, old = self._shown.get(name, (None, None))
            mark_stale(handle, old, f"`{name}` re-ran in a later cell (a rubric was added)")

    def _say_offline(self, targets) -> None:
        if self._said_offline or keys_available():
            return
        try:
            graph = self.pipeline.graph
            names = graph.upstream(targets) if targets else graph.steps
            refs = [
                self.pipeline.pool.resolve(graph.steps[n].model)
                for n in names
                if graph.steps[n].kind in ("llm", "image")
            ]
        except ConductorError:
            return
        implicit = [r for r in refs if r.provider == "offline" and r.alias]
        if implicit:
            self._said_offline = True
            display(
                Markdown(
                    "*nbconductor: no `ANTHROPIC_API_KEY` or `OPENAI_API_KEY` is set, so steps without an "
                    "explicit model use the **offline** provider (deterministic, no network). Set a key to "
                    "use real models.*"
                )
            )


def load(ipython) -> None:
    from ._display import install_shell_redaction

    install_shell_redaction(ipython)
    magics = ConductorMagics(ipython)
    ipython.register_magics(magics)
    ipython.user_ns["__nbconductor__"] = magics


def unload(ipython) -> None:
    ipython.user_ns.pop("__nbconductor__", None)
