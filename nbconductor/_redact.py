"""Redaction of anything that looks like a provider key, before it is written anywhere."""

from __future__ import annotations

import os
import re

_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-proj-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9]{20,}"
    r"|(?<=[Bb]earer )[A-Za-z0-9_\-\.]{16,}|(?<=x-api-key: )[A-Za-z0-9_\-\.]{8,})"
)
_KEY_VARS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")
REDACTED = "[REDACTED]"


def env_secrets() -> list[str]:
    """The values of key variables in the environment (what `redact` replaces besides patterns)."""
    names = set(_KEY_VARS) | {k for k in os.environ if k.endswith(("_API_KEY", "_TOKEN", "_SECRET"))}
    return [v for k in names if len(v := os.environ.get(k, "")) >= 8]


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with provider keys (by pattern, and the values of key variables) replaced.

    ``secrets`` (from `env_secrets`) spares re-reading the environment when redacting many values.
    """
    if not text:
        return text
    for secret in env_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    # Every pattern needs one of these substrings; most text has none, and `in` is far cheaper.
    if "sk-" in text or "earer " in text or "x-api-key: " in text:
        return _PATTERNS.sub(REDACTED, text)
    return text
