"""The options of ``%%step``, ``%%rubric`` and ``%%context``, each table defined once for the
magic (which stacks it the way IPython's ``script_args`` does, so ``%%step?`` documents it) and
for reading notebooks (`nbconductor._notebook`)."""

from __future__ import annotations

import argparse
import builtins
import keyword
import math
import re
import shlex

from ._errors import OptionError
from ._types import Step

STEP_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (
        ("name",),
        {"nargs": "?", "help": "the step's name; its output is bound to a variable of this name"},
    ),
    (
        ("--model", "-m"),
        {"help": "model SPEC: provider:model or an alias (fast, writer, judge, …)"},
    ),
    (
        ("--fallback",),
        {
            "action": "append",
            "default": [],
            "help": "a model to try when the main one fails (repeatable, in order)",
        },
    ),
    (
        ("--context",),
        {
            "action": "append",
            "default": [],
            "help": "a %%context block to put in the system prompt (repeatable)",
        },
    ),
    (("--system",), {"help": "system prompt text"}),
    (
        ("--after",),
        {"action": "append", "default": [], "help": "an explicit upstream step (repeatable)"},
    ),
    (("--json",), {"action": "store_true", "help": "ask for JSON; the output is parsed JSON"}),
    (
        ("--schema",),
        {
            "help": "the name of a pydantic model in the notebook; the output is a validated instance"
        },
    ),
    (
        ("--python",),
        {
            "action": "store_true",
            "help": "the body is Python; the last expression's value is the output",
        },
    ),
    (
        ("--image",),
        {
            "action": "store_true",
            "help": "an image-generation step (OpenAI Images); the output is a PNG",
        },
    ),
    (("--map",), {"help": 'run once per item: "VAR in EXPR"; the output is a list in input order'}),
    (
        ("--when",),
        {"help": "run only when this Python expression is true; otherwise the output is None"},
    ),
    (("--temperature",), {"type": float, "help": "sampling temperature"}),
    (("--max-tokens",), {"type": int, "help": "the most tokens the model may write"}),
    (
        ("--retries",),
        {
            "type": int,
            "default": 2,
            "help": "extra attempts per model on errors or failed gates (default 2)",
        },
    ),
    (
        ("--check",),
        {
            "action": "append",
            "default": [],
            "help": "a rule gate: max_words(400), contains('x'), regex(r'^#'), json, or a notebook function (repeatable)",
        },
    ),
    (
        ("--on-fail",),
        {
            "default": "review",
            "help": "when retries and fallbacks are spent: retry|fallback|review|fail (default review)",
        },
    ),
    (("--tools",), {"help": "comma-separated notebook functions offered to the model as tools"}),
    (
        ("--max-turns",),
        {"type": int, "default": 8, "help": "tool-use turns at most (with --tools)"},
    ),
    (
        ("--audit",),
        {
            "type": float,
            "help": "send this share (0..1] of outputs that passed every gate to review as audits",
        },
    ),
    (("--lazy",), {"action": "store_true", "help": "declare the step without running it"}),
    (
        ("--no-cache",),
        {"action": "store_true", "help": "always call the model; never reuse a cached result"},
    ),
]


RUBRIC_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("step",), {"nargs": "?", "help": "the step this rubric judges"}),
    (("--judge",), {"help": "the judge model SPEC (default: the `judge` alias)"}),
    (
        ("--threshold",),
        {"type": float, "default": 0.8, "help": "the lowest passing score, 0..1 (default 0.8)"},
    ),
    (("--retries",), {"type": int, "help": "re-runs of the step with the judge's feedback"}),
    (("--on-fail",), {"help": "after retries and fallbacks: retry|fallback|review|fail"}),
    (
        ("--max-tokens",),
        {"type": int, "help": "the most tokens the judge may write (default 1024)"},
    ),
    (
        ("--audit",),
        {"type": float, "help": "send this share (0..1] of passed outputs to review as audits"},
    ),
]

CONTEXT_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("name",), {"nargs": "?", "help": "the block's name, used with --context NAME"}),
    (("--file",), {"help": "read the block from this file instead of the cell body"}),
]


MAX_TOKENS = 128_000  # no provider lets a model write more in one answer
MAX_RETRIES = 100
MAX_TURNS = 100

# Names a notebook session needs: a step of that name would rebind it to the step's output.
_IPYTHON_NAMES = frozenset(
    {
        "get_ipython",
        "display",
        "In",
        "Out",
        "exit",
        "quit",
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_iii",
        "_ih",
        "_oh",
        "_dh",
        "__nbconductor__",
    }
)
_TEMPLATE_NAMES = frozenset(
    {
        "history",
        "loop",
        "range",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
        "namespace",
        "self",
        "caller",
        "varargs",
        "kwargs",
        "super",
    }
)
_HISTORY_NAME = re.compile(r"_(i|ii|iii|i\d+|\d+)$")


def reserved_name(name: str) -> str | None:
    """Why ``name`` cannot name a step (it would hide what the session or templates need), or None."""
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if name.startswith("__") and name.endswith("__") and name != "__nbconductor__":
        return "is a special Python name"
    if name in _IPYTHON_NAMES or _HISTORY_NAME.match(name):
        return f"would hide IPython's `{name}`, which the notebook session needs"
    if hasattr(builtins, name):
        return f"would hide Python's built-in `{name}`"
    if name in _TEMPLATE_NAMES:
        return f"would hide `{name}`, which templates use"
    return None


def check_step_name(name: str, namespace: dict | None = None, steps=()) -> None:
    """Raise `OptionError` when a step named ``name`` would shadow something the session needs:
    a keyword, a built-in, an IPython name, a template global, or (in ``namespace``) an imported
    module or a function that is not one of ``steps``."""
    why = reserved_name(name)
    if why is None and namespace is not None and name not in steps and name in namespace:
        import types

        value = namespace[name]
        if isinstance(value, types.ModuleType):
            why = f"would replace the module `{value.__name__}` imported in the notebook"
        elif isinstance(value, (types.FunctionType, type)):
            why = f"would replace the {'class' if isinstance(value, type) else 'function'} `{name}` defined in the notebook"
    if why is not None:
        better = f"{name.strip('_') or 'my'}_step"
        raise OptionError(f"step name `{name}` {why}: choose another name, e.g. %%step {better}")


def check_numbers(
    where: str,
    *,
    retries: int | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    threshold: float | None = None,
    max_turns: int | None = None,
) -> None:
    """Raise `OptionError` for a numeric option outside its range; ``where`` names the cell."""
    if retries is not None and not 0 <= retries <= MAX_RETRIES:
        raise OptionError(f"{where}: --retries must be between 0 and {MAX_RETRIES}, got {retries}")
    if max_tokens is not None and not 1 <= max_tokens <= MAX_TOKENS:
        raise OptionError(
            f"{where}: --max-tokens must be 1 or more and at most {MAX_TOKENS:,} (the most any "
            f"provider allows), got {max_tokens}"
        )
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise OptionError(
            f"{where}: --temperature must be a number between 0 and 2, got {temperature}"
        )
    if threshold is not None and not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise OptionError(f"{where}: --threshold must be a number between 0 and 1, got {threshold}")
    if max_turns is not None and not 1 <= max_turns <= MAX_TURNS:
        raise OptionError(
            f"{where}: --max-turns must be between 1 and {MAX_TURNS}, got {max_turns}"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise OptionError(f"{self.prog}: {message} (see {self.prog}? for the options)")


def options_parser(table: list[tuple[tuple[str, ...], dict]], prog: str) -> argparse.ArgumentParser:
    """A parser for one option table whose errors are `OptionError`s naming ``prog``."""
    parser = _Parser(prog=prog, add_help=False)
    for names, kwargs in table:
        parser.add_argument(*names, **kwargs)
    return parser


def parse_options(
    table: list[tuple[tuple[str, ...], dict]], prog: str, line: str
) -> argparse.Namespace:
    """A magic's options line (without the magic's name) parsed POSIX-style by ``table``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OptionError(f"{prog}: cannot parse options {line!r}: {exc}") from None
    return options_parser(table, prog).parse_args(words)


def step_parser() -> argparse.ArgumentParser:
    return options_parser(STEP_OPTIONS, "%%step")


def step_from_args(args: argparse.Namespace, body: str, *, lazy: bool | None = None) -> Step:
    """A `Step` from parsed ``%%step`` options and the cell body."""
    if not args.name:
        raise OptionError("%%step needs a step name: %%step NAME [options] (see %%step?)")
    if args.python and args.image:
        raise OptionError(f"step `{args.name}`: --python and --image cannot be combined")
    check_step_name(args.name)
    check_numbers(
        f"step `{args.name}`",
        retries=args.retries,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        max_turns=args.max_turns,
    )
    kind = "python" if args.python else "image" if args.image else "llm"
    return Step(
        name=args.name,
        body=body.strip("\n"),
        kind=kind,
        model=args.model,
        fallbacks=args.fallback,
        contexts=args.context,
        system=args.system,
        after=args.after,
        json=args.json,
        schema=args.schema,
        map=args.map,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        retries=args.retries,
        checks=args.check,
        on_fail=args.on_fail,
        when=args.when,
        tools=[t.strip() for t in args.tools.split(",") if t.strip()] if args.tools else [],
        max_turns=args.max_turns,
        lazy=args.lazy if lazy is None else lazy,
        no_cache=args.no_cache,
        audit=args.audit,
    )


def parse_step_line(line: str, body: str, *, lazy: bool | None = None) -> Step:
    """A `Step` from a ``%%step`` line (without ``%%step``) and body."""
    return step_from_args(parse_options(STEP_OPTIONS, "%%step", line), body, lazy=lazy)
