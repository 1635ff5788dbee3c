"""The options of ``%%step``, defined once for the magic and for reading notebooks."""

from __future__ import annotations

import argparse
import shlex

from ._errors import OptionError
from ._types import Step

STEP_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("name",), {"nargs": "?", "help": "the step's name; its output is bound to a variable of this name"}),
    (("--model", "-m"), {"help": "model SPEC: provider:model or an alias (fast, writer, judge, …)"}),
    (("--fallback",), {"action": "append", "default": [], "help": "a model to try when the main one fails (repeatable, in order)"}),
    (("--context",), {"action": "append", "default": [], "help": "a %%context block to put in the system prompt (repeatable)"}),
    (("--system",), {"help": "system prompt text"}),
    (("--after",), {"action": "append", "default": [], "help": "an explicit upstream step (repeatable)"}),
    (("--json",), {"action": "store_true", "help": "ask for JSON; the output is parsed JSON"}),
    (("--schema",), {"help": "the name of a pydantic model in the notebook; the output is a validated instance"}),
    (("--python",), {"action": "store_true", "help": "the body is Python; the last expression's value is the output"}),
    (("--image",), {"action": "store_true", "help": "an image-generation step (OpenAI Images); the output is a PNG"}),
    (("--map",), {"help": 'run once per item: "VAR in EXPR"; the output is a list in input order'}),
    (("--when",), {"help": "run only when this Python expression is true; otherwise the output is None"}),
    (("--temperature",), {"type": float, "help": "sampling temperature"}),
    (("--max-tokens",), {"type": int, "help": "the most tokens the model may write"}),
    (("--retries",), {"type": int, "default": 2, "help": "extra attempts per model on errors or failed gates (default 2)"}),
    (("--check",), {"action": "append", "default": [], "help": "a rule gate: max_words(400), contains('x'), regex(r'^#'), json, or a notebook function (repeatable)"}),
    (("--on-fail",), {"default": "review", "help": "when retries and fallbacks are spent: retry|fallback|review|fail (default review)"}),
    (("--tools",), {"help": "comma-separated notebook functions offered to the model as tools"}),
    (("--max-turns",), {"type": int, "default": 8, "help": "tool-use turns at most (with --tools)"}),
    (("--lazy",), {"action": "store_true", "help": "declare the step without running it"}),
    (("--no-cache",), {"action": "store_true", "help": "always call the model; never reuse a cached result"}),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise OptionError(f"%%step: {message} (see %%step? for the options)")


def step_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%%step", add_help=False)
    for names, kwargs in STEP_OPTIONS:
        parser.add_argument(*names, **kwargs)
    return parser


def step_from_args(args: argparse.Namespace, body: str, *, lazy: bool | None = None) -> Step:
    """A `Step` from parsed ``%%step`` options and the cell body."""
    if not args.name:
        raise OptionError("%%step needs a step name: %%step NAME [options] (see %%step?)")
    if args.python and args.image:
        raise OptionError(f"step `{args.name}`: --python and --image cannot be combined")
    kind = "python" if args.python else "image" if args.image else "llm"
    return Step(
        name=args.name, body=body.strip("\n"), kind=kind, model=args.model, fallbacks=args.fallback,
        contexts=args.context, system=args.system, after=args.after, json=args.json, schema=args.schema,
        map=args.map, temperature=args.temperature, max_tokens=args.max_tokens, retries=args.retries,
        checks=args.check, on_fail=args.on_fail, when=args.when,
        tools=[t.strip() for t in args.tools.split(",") if t.strip()] if args.tools else [],
        max_turns=args.max_turns, lazy=args.lazy if lazy is None else lazy, no_cache=args.no_cache,
    )


def parse_step_line(line: str, body: str, *, lazy: bool | None = None) -> Step:
    """A `Step` from a ``%%step`` line (without ``%%step``) and body."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OptionError(f"%%step: cannot parse options {line!r}: {exc}") from None
    return step_from_args(step_parser().parse_args(words), body, lazy=lazy)
