"""The public surface: what `__all__` exports is what the README documents (the httpx way),
and a provider author needs nothing private."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nbconductor
import nbconductor.providers

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _documented(lead: str) -> set[str]:
    """The backticked names of the README paragraph that starts with ``lead``."""
    start = README.index(lead)
    paragraph = README[start : README.find("\n\n", start)]
    return set(re.findall(r"`([A-Za-z][A-Za-z0-9_]*)`", paragraph[len(lead) :]))


def test_nbconductor_all_is_what_the_readme_documents():
    assert set(nbconductor.__all__) == _documented("Public names of `nbconductor`:")


def test_providers_all_is_what_the_readme_documents():
    lead = "Everything an adapter needs is public in `nbconductor.providers`:"
    assert set(nbconductor.providers.__all__) == _documented(lead)


def test_providers_exports_every_public_member_and_only_those():
    # httpx's test_exported_members: each public name is in __all__, and each is defined
    public = {n for n in dir(nbconductor.providers) if not n.startswith("_")}
    submodules = {"anthropic", "openai", "offline"}  # adapters: imported by the registry, by name
    assert public - submodules == set(nbconductor.providers.__all__)
    for name in nbconductor.providers.__all__:
        assert getattr(nbconductor.providers, name).__module__.startswith("nbconductor")


def test_export_and_batch_are_public_and_cheap():
    code = (
        "import sys, nbconductor; nbconductor.export, nbconductor.batch; import nbconductor.providers; "
        "print(','.join(m for m in ('anthropic', 'openai', 'IPython', 'ipywidgets', 'papermill', "
        "'nbformat', 'dask') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert nbconductor.export.__name__ == "export_pipeline"
    assert callable(nbconductor.batch)


def test_the_plugin_test_uses_only_public_names():
    path = ROOT / "tests" / "providers" / "test_registry.py"
    tree = ast.parse(path.read_text())
    sources = [tree] + [  # the plugin module the test writes, as a provider author would
        ast.parse(__import__("textwrap").dedent(node.value))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value
    ]
    private = []
    for source in sources:
        for node in ast.walk(source):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nbconductor"):
                names = [node.module, *(a.name for a in node.names)]
                private += [n for n in names if any(p.startswith("_") for p in n.split("."))]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                private.append(node.attr)
    assert private == []


def test_export_then_batch_from_python(tmp_path, monkeypatch):
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    p = nbconductor.Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("size", "len(draft)", python=True)
    job = nbconductor.export(p, tmp_path / "job.ipynb")
    store = tmp_path / "runs.sqlite"
    result = nbconductor.batch(
        job, [{"topic": "alpha"}, {"topic": "beta"}], workers=1, out=tmp_path / "out", store=store
    )
    assert [r["status"] for r in result.rows] == ["passed", "passed"]
    assert result.failed == 0 and result.store == str(store) and store.is_file()
    assert (tmp_path / "out" / "job-001.ipynb").is_file()
    assert "2 rows: 2 passed, 0 flagged, 0 failed" in result.summary()
    # bad input is one error before anything runs; nothing is written for it
    with pytest.raises(nbconductor.DefinitionError, match="row 1"):
        nbconductor.batch(job, [{"topic": "x"}, {"not a name": 1}], out=tmp_path / "bad")
    with pytest.raises(nbconductor.DefinitionError, match="workers"):
        nbconductor.batch(job, [{"topic": "x"}], workers=0)
    assert not (tmp_path / "bad").exists()
