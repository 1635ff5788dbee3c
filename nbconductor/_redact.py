"""Redaction: the one mechanism every place that writes or shows text goes through.

What is replaced by ``[REDACTED]``:

- provider keys by their shape (``sk-ant-…``, ``sk-proj-…``, ``sk-…``, the token after
  ``Bearer `` or ``x-api-key: ``) and the password in a URL (``scheme://user:PASSWORD@host``);
- the value (8 characters or more) of every environment variable named like a secret: ending in
  ``_KEY``, ``_TOKEN``, ``_SECRET``, ``_PASSWORD``, or containing ``SECRET`` or ``PASSWORD``
  (``ANTHROPIC_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``MY_DB_PASSWORD``, ``GITHUB_TOKEN``) — also
  when it is echoed with its separators changed or dropped (``ab-cd_ef`` as ``ab cd ef``, ``abcdef``);
- what a ``[redact]`` config section adds: ``patterns`` (regular expressions) and ``variables``
  (more environment variables whose values are secrets), see `add_config`.

`redactor` gives the compiled `Redactor` for the current environment (cached per set of
secrets); `redact` and `redact_value` are the shortcuts the rest of the package uses.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"
MIN_LENGTH = 8  # shorter values would redact ordinary words
_MAX_SEPARATORS = 4  # how many separator characters may stand where the secret has one run of them

_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-proj-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9]{20,}"
    r"|(?<=[Bb]earer )[A-Za-z0-9_\-\.]{16,}|(?<=x-api-key: )[A-Za-z0-9_\-\.]{8,})"
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@\"']*:)[^/\s@\"']+(?=@)")
_SEPARATORS = re.compile(r"[\W_]+")
_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")

# Added by `add_config` (every [redact] section this process has read): redacting more is safe.
_extra_patterns: tuple[str, ...] = ()
_extra_variables: tuple[str, ...] = ()


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    upper = name.upper()
    return (
        upper.endswith(_SUFFIXES)
        or "SECRET" in upper
        or "PASSWORD" in upper
        or name in _extra_variables
    )


def env_secrets(environ: dict[str, str] | os._Environ | None = None) -> list[str]:
    """The values (8+ characters) of secret-named variables in the environment, longest first."""
    if environ is not None:
        return _secrets_of(environ.items(), _extra_variables)
    # Reading os.environ decodes every entry; its raw items are cheap to compare with the last look.
    raw = getattr(os.environ, "_data", None)
    key = (tuple(raw.items()) if raw is not None else tuple(os.environ.items()), _extra_variables)
    if _last_env[0] != key:
        _last_env[:] = [key, _secrets_of(os.environ.items(), _extra_variables)]
    return list(_last_env[1])


_last_env: list = [None, []]


def _secrets_of(items, extra_variables: tuple[str, ...]) -> list[str]:
    values = {
        v for k, v in items if len(v) >= MIN_LENGTH and (is_secret_name(k) or k in extra_variables)
    }
    return sorted(values, key=lambda v: (-len(v), v))


def add_config(
    patterns: list[str] | tuple[str, ...] = (), variables: list[str] | tuple[str, ...] = ()
) -> None:
    """Redact ``patterns`` (regexes) and the values of ``variables`` from now on, in this process.

    Raises `ValueError` naming a pattern that is not a valid regular expression.
    """
    global _extra_patterns, _extra_variables
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"`{pattern}` is not a regular expression: {exc}") from None
    _extra_patterns += tuple(p for p in patterns if p and p not in _extra_patterns)
    _extra_variables += tuple(v for v in variables if v and v not in _extra_variables)


def _longest_part(text: str) -> str:
    return max((p for p in _SEPARATORS.split(text) if p), key=len, default=text)


def _tolerant(secret: str) -> tuple[str, set[str]]:
    """(regex, needles): the secret with each separator run allowing 0..4 other separators; the
    needles are its longest alphanumeric part (of each form), which any echo contains verbatim."""
    parts = [p for p in _SEPARATORS.split(secret) if p]
    if not parts:
        return re.escape(secret), {secret}
    # Not `"`: a match never spans two strings of a JSON text, so redacting JSON keeps it JSON.
    regex = f'(?:[^\\w"]|_){{0,{_MAX_SEPARATORS}}}'.join(re.escape(p) for p in parts)
    # The secret as given and as JSON writes it (`"` and `\\` escaped, non-ASCII as \\uXXXX),
    # which the separator-tolerant form does not cover when the secret holds such characters.
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    if len(forms) > 1:
        regex = "|".join([*(re.escape(f) for f in sorted(forms, key=len, reverse=True)), regex])
    return regex, {_longest_part(f) for f in forms}


class Redactor:
    """Replaces secrets in text; build it with `redactor`, which caches one per set of secrets."""

    def __init__(self, secrets: tuple[str, ...], patterns: tuple[str, ...] = ()):
        self.secrets = secrets
        compiled = [_tolerant(s) for s in secrets]
        self._needles = tuple({needle for _, needles in compiled for needle in needles})
        self._compact = tuple(c for c in (_SEPARATORS.sub("", s) for s in secrets) if c)
        self._first_chars = frozenset(c[0] for c in self._compact)
        self._secret_re = re.compile("|".join(r for r, _ in compiled)) if compiled else None
        self._extra_re = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        #: how many trailing characters may be the start of a secret still arriving (see `preview`)
        self.holdback = max(
            (len(s) + _MAX_SEPARATORS * len(_SEPARATORS.findall(s)) for s in secrets), default=0
        )

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by ``[REDACTED]``."""
        if not text or not isinstance(text, str):
            return text
        if self._secret_re is not None and any(n in text for n in self._needles):
            text = self._secret_re.sub(REDACTED, text)
        # Every built-in pattern needs one of these substrings; `in` is far cheaper than a search.
        if "sk-" in text or "earer " in text or "x-api-key: " in text:
            text = _PATTERNS.sub(REDACTED, text)
        if "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(rf"\1{REDACTED}", text)
        if self._extra_re is not None:
            text = self._extra_re.sub(REDACTED, text)
        return text

    def may_hold_secret(self, text: str) -> bool:
        """False when ``text`` (or any JSON encoding of it) certainly holds nothing to redact."""
        return (
            self._extra_re is not None
            or any(n in text for n in self._needles)
            or any(s in text for s in ("sk-", "earer ", "x-api-key: ", "://"))
        )

    def preview(self, text: str) -> str:
        """Text still streaming in: redacted, and cut before a tail that may be the first part of
        a secret still arriving (the tail, separators aside, is a prefix of one)."""
        clean = self(text)
        if not self._compact:
            return clean
        start = max(0, len(clean) - self.holdback)
        for i in range(start, len(clean)):
            if clean[i] in self._first_chars:
                rest = _SEPARATORS.sub("", clean[i:])
                if any(c.startswith(rest) for c in self._compact):
                    return clean[:i]
        return clean

    def value(self, value: Any) -> Any:
        """A JSON-like value (str, list, tuple, dict, anything else) with its strings redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        return value

    def json_text(self, text: str) -> str:
        """A JSON document (a notebook, a manifest) redacted string by string, so the result is still
        valid JSON; text that is not JSON is redacted as text."""
        if not self.may_hold_secret(text):
            return text
        try:
            data = json.loads(text)
        except ValueError:
            return self(text)
        clean = self.value(data)
        if clean == data:
            return text  # nothing in it: keep the bytes as they were
        first = text.split("\n", 2)[1] if text.count("\n") >= 2 else ""
        indent = (len(first) - len(first.lstrip(" "))) or None
        return json.dumps(clean, indent=indent, ensure_ascii=False) + (
            "\n" if text.endswith("\n") else ""
        )


@lru_cache(maxsize=16)
def _cached(secrets: tuple[str, ...], patterns: tuple[str, ...]) -> Redactor:
    return Redactor(secrets, patterns)


def redactor(secrets: list[str] | None = None) -> Redactor:
    """The `Redactor` for ``secrets`` (default: `env_secrets` now) and the configured patterns."""
    return _cached(tuple(env_secrets() if secrets is None else secrets), _extra_patterns)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with provider keys and secret values replaced by ``[REDACTED]``.

    ``secrets`` (from `env_secrets`) spares re-reading the environment when redacting many values.
    """
    if not text:
        return text
    return redactor(secrets)(text)


def redact_value(value: Any) -> Any:
    """`redact` for every string inside a JSON-like value (dicts, lists, tuples)."""
    return redactor().value(value)
