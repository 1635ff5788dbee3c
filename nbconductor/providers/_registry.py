"""The provider registry, after papermill's ``PapermillEngines``."""

from __future__ import annotations

from importlib.metadata import entry_points

from .._errors import OptionError

_BUILTIN = {
    "offline": "nbconductor.providers.offline:OfflineProvider",
    "anthropic": "nbconductor.providers.anthropic:AnthropicProvider",
    "openai": "nbconductor.providers.openai:OpenAIProvider",
    "openai-compatible": "nbconductor.providers.openai:OpenAICompatibleProvider",
}


class ProviderRegistry:
    """Maps a provider name (the part of a model spec before ``:``) to its adapter class."""

    def __init__(self) -> None:
        self._targets: dict[str, object] = dict(_BUILTIN)
        self._loaded_entry_points = False

    def register(self, name: str, provider: object) -> None:
        """Register a `Provider` subclass (or a ``"module:Class"`` string) under ``name``."""
        self._targets[name] = provider

    def unregister(self, name: str) -> None:
        """Forget the provider ``name`` (a no-op when it is not registered)."""
        self._targets.pop(name, None)

    def register_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group="nbconductor.providers"):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> set[str]:
        self.register_entry_points()
        return set(self._targets)

    def get(self, name: str) -> type:
        """The adapter class for ``name``; raises `OptionError` naming the known providers."""
        self.register_entry_points()
        target = self._targets.get(name)
        if target is None:
            raise OptionError(
                f"unknown provider `{name}`: known providers are {', '.join(sorted(self._targets))}"
            )
        if isinstance(target, str):
            import importlib

            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._targets[name] = target
        return target  # type: ignore[return-value]


registry = ProviderRegistry()
