"""papermill's Python translator, made safe: names checked, every value quoted as a literal."""

from __future__ import annotations

from .._params import check_name

_TRANSLATOR: type | None = None


def install_translator() -> None:
    """Register a Python translator with papermill that checks names and escapes every value."""
    global _TRANSLATOR
    from papermill.translators import PythonTranslator, papermill_translators

    if _TRANSLATOR is None:

        class CheckedPythonTranslator(PythonTranslator):
            """papermill's Python translator, refusing bad names and quoting odd values safely."""

            @classmethod
            def translate_escaped_str(cls, str_val):
                # papermill pastes str() of a value of no JSON type between quotes, unescaped
                return super().translate_escaped_str(
                    str_val if isinstance(str_val, str) else str(str_val)
                )

            @classmethod
            def assign(cls, name, str_val):
                return super().assign(check_name(name, "papermill parameters"), str_val)

        _TRANSLATOR = CheckedPythonTranslator
    for language in ("python", "pysparkkernel"):
        if papermill_translators._translators.get(language) in (None, PythonTranslator):
            papermill_translators.register(language, _TRANSLATOR)
