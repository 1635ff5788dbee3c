"""Prices (US dollars per million tokens) and the cost of a call."""

from __future__ import annotations

from ._config import Config, ModelRef, Price
from ._types import Usage

# Defaults for current models; `[prices."provider:model"]` in the config overrides them.
DEFAULT_PRICES: dict[str, Price] = {}


def price_for(ref: ModelRef, config: Config) -> Price | None:
    return config.prices.get(ref.spec) or DEFAULT_PRICES.get(ref.spec)


def cost_of(ref: ModelRef, usage: Usage, config: Config) -> float | None:
    """Dollars for one call, or None when the price or the token counts are unknown."""
    if ref.provider == "offline":
        return 0.0
    price = price_for(ref, config)
    if price is None or usage.input_tokens is None:
        return None
    cost = usage.input_tokens * price.input + (usage.output_tokens or 0) * price.output
    if usage.cache_read_tokens:
        cost += usage.cache_read_tokens * (price.cache_read if price.cache_read is not None else price.input)
    if usage.cache_write_tokens:
        cost += usage.cache_write_tokens * (price.cache_write if price.cache_write is not None else price.input)
    return cost / 1_000_000
