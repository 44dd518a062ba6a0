"""A model's USD price per token, and what a price lookup found: the per-call cost is plain float arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NEVER", "PER_MILLION", "USD_DECIMALS", "Price", "Resolution", "rounded_usd"]

# Money leaves spendwatch (span attributes, CSV, JSON, /metrics) rounded to a billionth of a dollar: finer than any
# price, and without float noise such as 0.00013000000000000002. The ledger keeps the unrounded value.
USD_DECIMALS = 9


def rounded_usd(amount: float) -> float:
    """``amount`` in USD as machine-readable output shows it: rounded to :data:`USD_DECIMALS` decimal places."""
    return round(amount, USD_DECIMALS)


PER_MILLION = 1_000_000
NEVER = math.inf  # a price that never changes is valid until then


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for one model; ``tiers`` hold ``(threshold_input_tokens, input, output, cache_read)``.

    A tier replaces all three prices for the whole call when the call's input tokens (cached included) are
    ``>= threshold``, the last such tier winning. genai-prices' ``Tier(start=N)`` applies above N tokens, so it is
    stored here as threshold ``N + 1``.
    """

    model: str
    source: str
    input: float
    output: float
    cache_read: float
    tiers: tuple = ()

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0) -> float:
        """USD for one call. ``input_tokens`` includes ``cache_read_tokens`` and ``output_tokens`` includes
        reasoning tokens, as in the GenAI semantic conventions."""
        input_price, output_price, cache_read_price = self.input, self.output, self.cache_read
        if self.tiers:
            for threshold, tier_input, tier_output, tier_cache_read in self.tiers:
                if input_tokens < threshold:
                    break
                input_price, output_price, cache_read_price = tier_input, tier_output, tier_cache_read
        return (
            (input_tokens - cache_read_tokens) * input_price
            + cache_read_tokens * cache_read_price
            + output_tokens * output_price
        )


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a lookup found, with the facts ``describe`` reports; ``valid_until`` is unix seconds."""

    price: Price | None
    valid_until: float = NEVER
    provider_id: str | None = None
    variant: str | None = None
    note: str | None = None
