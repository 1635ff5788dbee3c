"""One formatting vocabulary (`nbconductor._format`) used by every surface."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from nbconductor._format import GLYPHS, clip, fmt_cost, fmt_tokens, md_cell, md_table, strip_fence
from nbconductor._types import GateResult, StepResult, Usage
from nbconductor.render._layout import PALETTE

ROOT = Path(__file__).resolve().parent.parent


def test_the_glyphs_are_the_readmes_and_the_widgets():
    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("coloured by state — ") + 20 :].split("(")[0]
    documented = dict((s, g) for s, g in re.findall(r"(\w+) (\S)[,\s]", sentence))
    assert documented == GLYPHS
    assert {state: c["glyph"] for state, c in PALETTE.items()} == GLYPHS


def test_a_footer_speaks_the_same_glyphs():
    from nbconductor.notebook._display import footer

    result = StepResult("draft", "failed", None, usage=Usage(3, 4), cost=0.0031)
    result.gates = [GateResult("rubric", False, 0.5, "too long")]
    text = footer(result)
    assert text.startswith(f"{GLYPHS['failed']} draft · failed")
    assert "rubric ✕ 0.50" in text


@pytest.mark.parametrize(
    ("cost", "text"),
    [
        (None, "?"),
        (0, "$0"),
        (0.0031, "$0.0031"),
        (0.25, "$0.25"),
        (12.4, "$12.40"),
        (1.23456, "$1.23"),
    ],
)
def test_fmt_cost(cost, text):
    assert fmt_cost(cost) == text
    assert fmt_cost(None, unknown="") == ""


def test_tokens_clip_and_markdown():
    assert fmt_tokens(12345) == "12,345" and fmt_tokens(None) == "?"
    assert fmt_tokens(12345, short=True) == "12.3k tok" and fmt_tokens(532, short=True) == "532 tok"
    assert clip("abcdef", 4) == "abc…" and clip("abc", 4) == "abc"
    assert md_cell("a|b $1 and $2\nnext") == "a\\|b \\$1 and \\$2 next"
    assert md_table(["x"], [["a|b"]]) == ["| x |", "|---|", "| a\\|b |"]


@pytest.mark.parametrize(
    "text", ['{"a": 1}', '```json\n{"a": 1}\n```', '  ```\n{"a": 1}\n```  ', '```{"a": 1}```']
)
def test_strip_fence(text):
    import json

    assert json.loads(strip_fence(text) or '{"a": 1}') == {"a": 1}


def test_one_of_each_formatter():
    """No module but `_format` defines a cost/token/duration formatter or a fence stripper."""
    names = {"fmt_cost", "fmt_tokens", "_fmt_tokens", "fmt_seconds", "strip_fence", "md_cell"}
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path in (ROOT / "nbconductor").rglob("*.py")
        if path.name != "_format.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name in names
    ]
    assert found == []
    fences = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "nbconductor").rglob("*.py")
        if p.name != "_format.py"
        and re.search(r"startswith\(\"```\"\)", p.read_text())
        and "graph.py" not in p.name  # the inspector's Markdown renderer opens code blocks
    ]
    assert fences == []
