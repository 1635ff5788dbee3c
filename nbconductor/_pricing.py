"""Prices (US dollars per million tokens, or per image) and the cost of a call.

`DEFAULT_PRICES` holds published list prices of current Anthropic and OpenAI models (standard
tier, short context; Anthropic cache writes at the 5-minute rate): the Anthropic models the
installed SDK still accepts without a deprecation warning, plus ``claude-opus-4-5`` until its
end of life (January 2027), so runs on it are still priced. Prices change: a model
missing here, or priced differently for your account, goes in the config. ``[prices."provider:model"]`` in the config
overrides or adds entries, e.g. for a model released after this table or a local server::

    [prices."anthropic:claude-sonnet-4-6"]
    input = 3.0
    output = 15.0
    cache_read = 0.3
    cache_write = 3.75

    [prices."openai-compatible:llama3.1"]   # a local model costs nothing
    input = 0
    output = 0

Calls sent through a provider's batch API (``nbconductor batch --provider-batch``) cost
``batch`` times these prices: 0.5 by default, the published batch discount of both
Anthropic (Message Batches) and OpenAI (Batch API) on every token kind; set ``batch = 0.6``
in a model's entry if your account is priced otherwise.

A model without a price has an unknown cost (None), never a made-up one. Dated model names
(``claude-haiku-4-5-20251001``, ``gpt-4.1-2025-04-14``) use the undated entry.
"""

from __future__ import annotations

import os
import re

from ._config import Config, ModelRef, Price
from ._limiter import is_loopback
from ._types import Usage


def _p(
    input: float,
    output: float,
    cache_read: float | None = None,
    cache_write: float | None = None,
    image: float | None = None,
) -> Price:
    return Price(
        input=input, output=output, cache_read=cache_read, cache_write=cache_write, image=image
    )


# Anthropic: cache reads cost 0.1x input, 5-minute cache writes 1.25x input.
# OpenAI: cached input at the listed discount; writing the cache costs nothing extra.
DEFAULT_PRICES: dict[str, Price] = {
    "anthropic:claude-opus-4-8": _p(5.0, 25.0, 0.50, 6.25),
    "anthropic:claude-opus-4-7": _p(5.0, 25.0, 0.50, 6.25),
    "anthropic:claude-opus-4-6": _p(5.0, 25.0, 0.50, 6.25),
    "anthropic:claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),  # deprecated: end of life 2027-01-22
    "anthropic:claude-sonnet-4-6": _p(3.0, 15.0, 0.30, 3.75),
    "anthropic:claude-haiku-4-5": _p(1.0, 5.0, 0.10, 1.25),
    "openai:gpt-5.5": _p(5.0, 30.0, 0.50, 5.0),
    "openai:gpt-5.4": _p(2.50, 15.0, 0.25, 2.50),
    "openai:gpt-5.4-mini": _p(0.75, 4.50, 0.075, 0.75),
    "openai:gpt-5.4-nano": _p(0.20, 1.25, 0.02, 0.20),
    "openai:gpt-5.2": _p(1.75, 14.0, 0.175, 1.75),
    "openai:gpt-5": _p(1.25, 10.0, 0.125, 1.25),
    "openai:gpt-5.1": _p(1.25, 10.0, 0.125, 1.25),
    "openai:gpt-5-mini": _p(0.25, 2.0, 0.025, 0.25),
    "openai:gpt-5-nano": _p(0.05, 0.40, 0.005, 0.05),
    "openai:gpt-4.1": _p(2.0, 8.0, 0.50, 2.0),
    "openai:gpt-4.1-mini": _p(0.40, 1.60, 0.10, 0.40),
    "openai:gpt-4.1-nano": _p(0.10, 0.40, 0.025, 0.10),
    "openai:gpt-4o": _p(2.50, 10.0, 1.25, 2.50),
    "openai:gpt-4o-mini": _p(0.15, 0.60, 0.075, 0.15),
    "openai:o3": _p(2.0, 8.0, 0.50, 2.0),
    "openai:o4-mini": _p(1.10, 4.40, 0.275, 1.10),
    "openai:o3-mini": _p(1.10, 4.40, 0.55, 1.10),
    # GPT image models bill tokens: text input, image output.
    "openai:gpt-image-1": _p(5.0, 40.0, 1.25, 5.0),
    "openai:gpt-image-1-mini": _p(2.0, 8.0, 0.20, 2.0),
    # DALL·E bills per image (standard quality, 1024x1024).
    "openai:dall-e-3": _p(0.0, 0.0, image=0.04),
    "openai:dall-e-2": _p(0.0, 0.0, image=0.02),
}

FREE = Price()  # a model served on this machine
_DATED = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)$")


def price_for(ref: ModelRef, config: Config, served: str | None = None) -> Price | None:
    """The price of ``ref``: the config's entry, else the default, trying the undated name too.

    ``served``: the ``provider:model`` the server says answered. When it is another model than
    the one asked for (a local server behind ``OPENAI_BASE_URL`` answers ``fast`` with its own
    model), that model is priced. A server on this machine (an alias's base URL; or
    ``OPENAI_BASE_URL`` serving another model) is not charged at list prices: its calls cost
    nothing unless ``[prices]`` says otherwise."""
    spec = ref.spec
    swapped = served is not None and _DATED.sub("", served) != _DATED.sub("", spec)
    if swapped:
        spec = served
    names = [spec]
    undated = _DATED.sub("", spec)
    if undated != spec:
        names.append(undated)
    env_url = os.environ.get("OPENAI_BASE_URL") if ref.provider == "openai" else None
    local = is_loopback(ref.base_url) or (swapped and is_loopback(env_url))
    for table in (config.prices,) if local else (config.prices, DEFAULT_PRICES):
        for name in names:
            if name in table:
                return table[name]
    return FREE if local else None


#: Anthropic Message Batches and the OpenAI Batch API both bill 50% of the standard price.
BATCH_SHARE = 0.5


def cost_of(
    ref: ModelRef,
    usage: Usage,
    config: Config,
    *,
    images: int = 0,
    batch: bool = False,
    served: str | None = None,
) -> float | None:
    """Dollars for one call (``images`` made, for per-image prices), or None when unknown.

    ``batch``: the call went through the provider's batch API, at its batch price.
    ``served``: the model the response names (`price_for`)."""
    if ref.provider == "offline":
        return 0.0
    price = price_for(ref, config, served)
    if price is None:
        return None
    share = (price.batch if price.batch is not None else BATCH_SHARE) if batch else 1.0
    if images and price.image is not None:
        return images * price.image * share
    if usage.input_tokens is None:
        return None
    cost = usage.input_tokens * price.input + (usage.output_tokens or 0) * price.output
    if usage.cache_read_tokens:
        cost += usage.cache_read_tokens * (
            price.cache_read if price.cache_read is not None else price.input
        )
    if usage.cache_write_tokens:
        cost += usage.cache_write_tokens * (
            price.cache_write if price.cache_write is not None else price.input
        )
    return cost * share / 1_000_000
