"""Third-party providers arrive through the `nbconductor.providers` entry-point group.

This file uses only public names, as a provider author would.
"""

import sys
import textwrap

import pytest

from nbconductor import DefinitionError, Pipeline
from nbconductor.providers import ProviderRegistry, registry


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path, as pip would install it, declaring a provider entry point."""
    (tmp_path / "echo_provider.py").write_text(
        textwrap.dedent("""
        from nbconductor.providers import Provider, Response, Usage

        class Echo(Provider):
            name = "echo"
            async def complete(self, request):
                return Response(f"echo/{self.ref.model}: {request.prompt}", Usage(1, 1), cost=0.0)
    """)
    )
    dist = tmp_path / "echo_provider-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-provider\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nbconductor.providers]\necho = echo_provider:Echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("echo_provider", None)


def test_entry_point_provider_is_found_and_used(installed_plugin, tmp_path, monkeypatch):
    fresh = ProviderRegistry()
    assert "echo" in fresh.names()
    assert fresh.get("echo").__name__ == "Echo"
    registry.register("echo", fresh.get("echo"))
    try:
        p = Pipeline(store=tmp_path / "s.sqlite")
        p.step("hello", "Hi {{ who }}", model="echo:v1")
        assert p.run({"who": "Ada"})["hello"] == "echo/v1: Hi Ada"
    finally:
        registry.unregister("echo")


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(
        DefinitionError, match="unknown provider `nope`: known providers are .*anthropic.*offline"
    ):
        ProviderRegistry().get("nope")
