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
