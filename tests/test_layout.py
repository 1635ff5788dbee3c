"""The import rules the package's folders stand for, checked on every import statement.

Every ``import`` in the package (top-level or inside a function) is resolved to an absolute
module name, and the rules below say which folders may import what. A new import that
crosses a boundary fails here, naming the file, the line and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "nbconductor"

# (what is imported, which modules may import it, why)
RULES = [
    (
        ("IPython", "ipywidgets", "anywidget", "traitlets", "ipykernel"),
        (
            "nbconductor.notebook",
            "nbconductor.handoff._engine",
            "nbconductor.handoff._engine_outputs",
            "nbconductor.handoff._engine_process",
        ),
        "only the notebook layer (and the in-process papermill engine) imports IPython and widgets",
    ),
    (
        ("papermill", "nbclient", "dask", "distributed"),
        ("nbconductor.handoff",),
        "only handoff/ imports papermill, nbclient and Dask",
    ),
    (
        ("anthropic",),
        ("nbconductor.providers.anthropic",),
        "an SDK is imported only by its adapter",
    ),
    (("openai",), ("nbconductor.providers.openai",), "an SDK is imported only by its adapter"),
    (
        ("nbconductor.notebook",),
        ("nbconductor.notebook", "nbconductor.__init__", "nbconductor.review"),
        "nothing imports the notebook layer (but `%load_ext nbconductor` and the public review facade)",
    ),
    (("nbconductor.cli",), ("nbconductor.__main__",), "nothing imports the CLI"),
    (
        ("nbconductor.handoff",),
        (
            "nbconductor.handoff",
            "nbconductor.notebook",
            "nbconductor.cli",
            "nbconductor.engine",
            "nbconductor.__init__",  # the public face: `nbconductor.export` and `batch`, lazily
        ),
        "the engine core and the store do not reach out to export and batch",
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement in one file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from . import _commands` imports a module too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        importer = (
            _module_name(path) if path.name != "__init__.py" else _module_name(path) + ".__init__"
        )
        for line, imported in _imports(path):
            for targets, allowed, why in RULES:
                if _within(imported, targets) and not _within(importer, allowed):
                    out.append(f"{path.relative_to(PKG.parent)}:{line} imports {imported}: {why}")
    return sorted(set(out))


def test_import_rules_hold():
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself: a store module that imports IPython is reported."""
    bad = PKG / "store" / "_layout_probe_tmp.py"
    bad.write_text("def f():\n    from IPython.display import display\n")
    try:
        found = _violations()
    finally:
        bad.unlink()
    assert any("_layout_probe_tmp.py:2 imports IPython.display" in v for v in found)


@pytest.mark.parametrize("folder", ["gates", "store", "render", "notebook", "handoff", "providers"])
def test_every_folder_says_what_lives_there(folder):
    doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text()))
    assert doc and len(doc) > 20


# State names are constants (`nbconductor._states`, re-exported by `store._base`): a literal
# "passed" outside store/ is a second spelling of a state that drifts. The same words that are
# not a step's state, per file: how many there are and why (a new one changes the count).
NOT_A_STATE = {
    ("nbconductor/providers/_openai_batch.py", "failed"): (
        1,
        "an OpenAI batch's status (the API's word)",
    ),
    ("nbconductor/providers/_batch.py", "failed"): (1, "the type of a provider batch result line"),
    ("nbconductor/providers/_responses.py", "failed"): (
        1,
        "a Responses API status (the API's word)",
    ),
    ("nbconductor/handoff/_batch.py", "flagged"): (1, "the summary table's column header"),
}


def _not_state_nodes(tree: ast.AST) -> set[int]:
    """Constants that are no state value: docstrings, field names of records (subscripts,
    ``.get(KEY)``, the keys of a dict unless all its keys are states, like a glyph table),
    prose in f-strings, and the values a `Literal[...]` type spells out."""
    from nbconductor._states import ALL_STATES

    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if isinstance(k, ast.Constant)]
            if not all(k.value in ALL_STATES for k in keys):
                skip.update(id(k) for k in keys)
        elif isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id == "Literal":
                skip.update(id(n) for n in ast.walk(node.slice))
            skip.add(id(node.slice))
        elif isinstance(node, ast.Call) and node.args:
            if isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                skip.add(id(node.args[0]))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
    return skip


def _state_literals() -> list[str]:
    from nbconductor._states import ALL_STATES

    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).as_posix()
        if rel.startswith("nbconductor/store/") or rel == "nbconductor/_states.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        skip = _not_state_nodes(tree)
        hits: dict[str, list[int]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ALL_STATES and id(node) not in skip:
                hits.setdefault(node.value, []).append(node.lineno)
        for value, lines in sorted(hits.items()):
            allowed = NOT_A_STATE.get((rel, value), (0, ""))[0]
            if len(lines) != allowed:
                where = ",".join(map(str, sorted(lines)))
                found.append(f"{rel}:{where} {value!r}: use nbconductor._states")
    return found


def test_no_state_literals_outside_the_store():
    assert _state_literals() == []


def test_the_state_check_sees_a_literal():
    probe = PKG / "_state_probe_tmp.py"
    probe.write_text('"""Doc: passed."""\n\ndef f(r):\n    return r.state == "flagged"\n')
    try:
        found = _state_literals()
    finally:
        probe.unlink()
    assert found == ["nbconductor/_state_probe_tmp.py:4 'flagged': use nbconductor._states"]


def test_one_set_of_state_names():
    """The store's names are the core's, and the step type's `Literal` spells the same states."""
    from typing import get_args

    from nbconductor import _states
    from nbconductor._types import State
    from nbconductor.store import _base

    assert set(get_args(State)) == set(_states.STEP_STATES)
    for name in ("PASSED", "FLAGGED", "ACCEPTED", "SERVED", "COUNTED", "UNFINISHED"):
        assert getattr(_base, name) is getattr(_states, name)
