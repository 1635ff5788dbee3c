"""Variants: other versions of a step (``%%variant STEP NAME [step options]``).

A variant keeps the step's shape (its inputs, kind, map, position in the graph) and changes what
a prompt experiment changes: the body and the model options. It is a spec applied to the step as
currently declared, so re-declaring the step carries its variants along. The step's own cell is
the variant ``base``. Variants change nothing until compared (`nbconductor._compare`) or promoted.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any

from ._errors import OptionError
from ._options import STEP_OPTIONS
from ._types import Step

BASE = "base"

#: `Step` fields a variant may change, and the ``%%step`` option each comes from.
VARIANT_FIELDS = {
    "model": "--model",
    "fallbacks": "--fallback",
    "contexts": "--context",
    "system": "--system",
    "temperature": "--temperature",
    "max_tokens": "--max-tokens",
    "retries": "--retries",
    "checks": "--check",
    "on_fail": "--on-fail",
    "json": "--json",
    "tools": "--tools",
    "max_turns": "--max-turns",
    "no_cache": "--no-cache",
}
_DEST = {"fallback": "fallbacks", "context": "contexts", "check": "checks"}
_OPTION_FIELD = {opt: f for f, opt in VARIANT_FIELDS.items()}

#: The options of ``%%variant``: the step and the variant's name, then the step options a
#: variant may change (from the one ``%%step`` table), each absent unless given.
VARIANT_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("step",), {"nargs": "?", "help": "the step this is a version of"}),
    (("name",), {"nargs": "?", "help": "the variant's name (`base` is the step's own cell)"}),
] + [
    (names, {**kwargs, "default": argparse.SUPPRESS})
    for names, kwargs in STEP_OPTIONS
    if names[0] in _OPTION_FIELD
]


@dataclass
class Variant:
    """Another version of ``step``: a body (None keeps the step's prompt) and option changes."""

    step: str
    name: str
    body: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def apply(self, base: Step) -> Step:
        """The step as this variant declares it (raises `OptionError` for a bad option)."""
        return base.replace(
            body=self.body if self.body and self.body.strip() else base.body, **self.options
        )


def normalize_options(step: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options by `Step` field (singular names as `Pipeline.step` takes them); raises `OptionError`."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        key = _DEST.get(key, key)
        if key not in VARIANT_FIELDS:
            allowed = ", ".join(sorted(VARIANT_FIELDS))
            raise OptionError(
                f"variant `{name}` of `{step}`: `{key}` cannot differ between variants (a variant "
                f"keeps the step's inputs and shape); it may change {allowed}"
            )
        if key in ("fallbacks", "contexts", "checks", "tools") and isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if key == "tools" else [value]
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def check_variant_name(step: str, name: str) -> None:
    if not name or not name.isidentifier():
        raise OptionError(
            f"variant name {name!r} of `{step}` is not an identifier: use letters, digits and _ "
            "(e.g. %%variant draft concise)"
        )
    if name == BASE:
        raise OptionError(
            f"`base` is the step `{step}` itself: give the variant another name, e.g. "
            f"%%variant {step} concise"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise OptionError(f"%%variant: {message} (see %%variant? for the options)")


def variant_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%%variant", add_help=False)
    for names, kwargs in VARIANT_OPTIONS:
        parser.add_argument(*names, **kwargs)
    return parser


def variant_from_args(args: argparse.Namespace, body: str | None) -> Variant:
    """A `Variant` from parsed ``%%variant`` options and the cell body."""
    given = vars(args)
    step, name = given.pop("step", None), given.pop("name", None)
    if not step or not name:
        raise OptionError("%%variant needs a step and a name: %%variant STEP NAME [step options]")
    options = {_DEST.get(k, k): v for k, v in given.items()}
    if "tools" in options:
        options["tools"] = [t.strip() for t in options["tools"].split(",") if t.strip()]
    body = body.strip("\n") if body and body.strip() else None
    return Variant(step, name, body, options)


def parse_variant_line(line: str, body: str | None) -> Variant:
    """A `Variant` from a ``%%variant`` line (without ``%%variant``) and body."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OptionError(f"%%variant: cannot parse options {line!r}: {exc}") from None
    return variant_from_args(variant_parser().parse_args(words), body)


def variant_source(variant: Variant) -> str:
    """The ``%%step``-style option words of a variant's options (for promote and export)."""
    words: list[str] = []
    for key, value in variant.options.items():
        opt = VARIANT_FIELDS[key]
        if isinstance(value, bool):
            if value:
                words.append(opt)
        elif isinstance(value, list):
            if key == "tools":
                words += [opt, ",".join(value)]
            else:
                for v in value:
                    words += [opt, str(v)]
        elif value is not None:
            words += [opt, str(value)]
    return shlex.join(words)
