"""Every SDK client of a process shares one TLS context (the HTTP library's own default).

Building a context loads the CA bundle (~19 ms); without sharing, each new client paid it:
per client, per event loop, per batch row.
"""

from __future__ import annotations

import ssl

from nbconductor import Pipeline
from nbconductor._config import ModelRef
from nbconductor.providers.anthropic import AnthropicProvider
from nbconductor.providers.openai import OpenAIProvider


def test_new_clients_load_the_ca_bundle_once_per_process(monkeypatch, fake_api):
    loads = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self, *args, **kwargs):
        loads.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    for _ in range(5):
        AnthropicProvider(ModelRef("anthropic", "claude-haiku-4-5"))._new_client()
        OpenAIProvider(ModelRef("openai", "gpt-4.1-mini"))._new_client()
    assert len(loads) <= 1  # once for the process (none if an earlier test built it)


def test_clients_on_the_shared_context_still_answer(fake_api):
    from fakeapi import Text

    fake_api.set_default(lambda body: Text("hello", input_tokens=3, output_tokens=1))
    p = Pipeline(store=":memory:")
    p.step("a", "Say hi", model="anthropic:claude-haiku-4-5")
    p.step("b", "Say {{ a }}", model="openai:gpt-4.1-mini")
    for _ in range(2):  # two runs: two event loops, new clients each
        result = p.run(force=True)
        assert (result["a"], result["b"]) == ("hello", "hello")
    p.close()
