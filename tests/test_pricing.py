"""The price table names models the installed SDKs still accept."""

from __future__ import annotations

import typing

from anthropic._data import DEPRECATED_MODELS
from anthropic.types.model_param import ModelParam

from nbconductor._config import Config, ModelRef
from nbconductor._pricing import DEFAULT_PRICES, price_for


def _anthropic_models() -> set[str]:
    literal = next(a for a in typing.get_args(ModelParam) if typing.get_origin(a) is typing.Literal)
    return set(typing.get_args(literal))


def test_every_anthropic_price_is_for_a_model_the_sdk_knows():
    known = _anthropic_models()
    priced = {spec.split(":", 1)[1] for spec in DEFAULT_PRICES if spec.startswith("anthropic:")}
    assert priced and priced <= known, sorted(priced - known)
    # deprecated ones stay priced only while they can still be called
    assert priced & set(DEPRECATED_MODELS) <= {"claude-opus-4-5"}


def test_dated_names_use_the_undated_price():
    ref = ModelRef(provider="anthropic", model="claude-haiku-4-5-20251001")
    assert price_for(ref, Config()) == DEFAULT_PRICES["anthropic:claude-haiku-4-5"]
