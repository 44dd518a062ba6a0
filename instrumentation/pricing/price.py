"""A model's USD price per token, and what a price lookup found: the per-call cost is plain float arithmetic."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from spendwatch.instrumentation.pricing.units import UNITS, ancestors

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
    """USD per unit for one model: per token of input, output and cached input, and in ``per_unit`` per unit of
    every other unit the price lists, by :data:`~spendwatch.instrumentation.pricing.units.UNITS` name (per token of
    ``cache_write_tokens``, ``input_audio_tokens``...; per call of ``web_search_calls``; per ``requests``...).

    A part of a whole billed at its own price (cache writes of input, audio of output...) is priced at it instead of
    the whole's, as genai-prices does; a part without its own price is billed as the whole. ``tiers`` hold
    ``(threshold_input_tokens, Price)``: a tier replaces every price for the whole call when the call's input tokens
    (cached included) are ``>= threshold``, the last such tier winning. genai-prices' ``Tier(start=N)`` applies above
    N tokens, so it is stored here as threshold ``N + 1``. (A tier may also be given as ``(threshold, input, output,
    cache_read)``, keeping the other units' prices.)
    """

    model: str
    source: str
    input: float
    output: float
    cache_read: float
    tiers: tuple = ()
    per_unit: Mapping[str, float] = field(default_factory=dict)
    # What cost() adds per unit on top of the text-token formula, worked out once (see _rates).
    _cache_write: float = field(init=False, repr=False, compare=False, default=0.0)
    _input_audio: float = field(init=False, repr=False, compare=False, default=0.0)
    _output_audio: float = field(init=False, repr=False, compare=False, default=0.0)
    _input_image: float = field(init=False, repr=False, compare=False, default=0.0)
    _output_image: float = field(init=False, repr=False, compare=False, default=0.0)
    _reasoning: float = field(init=False, repr=False, compare=False, default=0.0)
    _per_request: float = field(init=False, repr=False, compare=False, default=0.0)
    _unit_rates: Mapping[str, float] = field(init=False, repr=False, compare=False, default_factory=dict)
    _extra: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "per_unit", MappingProxyType(dict(self.per_unit)))
        set_field(self, "tiers", tuple(self._tier(tier) for tier in self.tiers))
        rates = _rates({**self.per_unit, **self.token_prices()})
        for name, attribute in _SUBSET_FIELDS.items():
            set_field(self, attribute, rates.pop(name, 0.0))
        for name in _TEXT_UNITS:
            rates.pop(name, None)
        set_field(self, "_per_request", self.per_unit.get("requests", 0.0))
        set_field(self, "_unit_rates", MappingProxyType({name: rate for name, rate in rates.items() if rate}))
        # Units are priced only when a call reports some; the parts and a per-request charge apply to every call.
        extras = [getattr(self, attribute) for attribute in _SUBSET_FIELDS.values()]
        set_field(self, "_extra", any(extras) or bool(self._per_request))

    def __hash__(self) -> int:  # per_unit is a read-only mapping, which does not hash
        return hash((self.model, self.source, self.input, self.output, self.cache_read, self.tiers))

    def _tier(self, tier: tuple) -> tuple[int, Price]:
        if len(tier) == 2:
            return tier
        threshold, tier_input, tier_output, tier_cache_read = tier
        return threshold, Price(self.model, self.source, tier_input, tier_output, tier_cache_read, (), self.per_unit)

    def token_prices(self) -> dict[str, float]:
        """USD per token of input, output and cached input, by unit name."""
        return {"input_tokens": self.input, "cache_read_tokens": self.cache_read, "output_tokens": self.output}

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        *,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        output_image_tokens: int = 0,
        reasoning_tokens: int = 0,
        units: Mapping[str, float] | None = None,
    ) -> float:
        """USD for one call. ``input_tokens`` includes cache reads and writes and ``output_tokens`` includes reasoning
        tokens, as in the GenAI semantic conventions; the audio and image tokens are parts of them too. ``units``:
        other billed quantities by unit name (a unit this price does not list costs nothing)."""
        price = self
        if self.tiers:
            for threshold, tier in self.tiers:
                if input_tokens < threshold:
                    break
                price = tier
        usd = (
            (input_tokens - cache_read_tokens) * price.input
            + cache_read_tokens * price.cache_read
            + output_tokens * price.output
        )
        if price._extra:  # parts billed at their own rates, or a charge per request: most calls skip this
            usd += price._per_request
            if cache_write_tokens:
                usd += cache_write_tokens * price._cache_write
            if reasoning_tokens:
                usd += reasoning_tokens * price._reasoning
            if input_audio_tokens or output_audio_tokens or input_image_tokens or output_image_tokens:
                usd += (
                    input_audio_tokens * price._input_audio
                    + output_audio_tokens * price._output_audio
                    + input_image_tokens * price._input_image
                    + output_image_tokens * price._output_image
                )
        if units:
            usd += price._units_cost(units)
        return usd

    def _units_cost(self, units: Mapping[str, float]) -> float:
        rates = self._unit_rates
        usd = 0.0
        for name, quantity in units.items():
            rate = rates.get(name)
            if rate:
                usd += quantity * rate
        if "requests" in units:  # the call's own request, counted once in cost(), is among the requests given
            usd -= self._per_request
        return usd


# The Usage fields cost() takes besides the text tokens -> the Price attribute with their rate.
_SUBSET_FIELDS = {
    "cache_write_tokens": "_cache_write",
    "input_audio_tokens": "_input_audio",
    "output_audio_tokens": "_output_audio",
    "input_image_tokens": "_input_image",
    "output_image_tokens": "_output_image",
    "reasoning_tokens": "_reasoning",
}
_TEXT_UNITS = ("input_tokens", "output_tokens", "cache_read_tokens")


def _rates(prices: Mapping[str, float]) -> dict[str, float]:
    """What one unit of each kind adds to a call's cost, given each listed unit's price.

    genai-prices bills each listed unit for its own "leaf": its count less the counts billed by its listed parts
    (input tokens less the cached, the cache writes, the audio ones...). That is linear in the counts, so it is
    worked out here once as a rate per unit: a part's rate is its price less its whole's (cached input: 0.075 - 0.15
    per million on top of the input price every input token pays), with inclusion-exclusion where a part has two
    wholes (cached audio is cached input and audio input). Decimal, so the differences are exact.
    """
    listed = sorted(prices, key=lambda name: -len(UNITS[name].dimensions))  # the parts before their wholes
    leaves: dict[str, dict[str, Decimal]] = {}
    for name in listed:
        leaf = {name: Decimal(1)}
        for part, part_leaf in leaves.items():
            if name in ancestors(part):
                for counted, weight in part_leaf.items():
                    leaf[counted] = leaf.get(counted, Decimal(0)) - weight
        leaves[name] = leaf
    rates: dict[str, Decimal] = {}
    for name, leaf in leaves.items():
        price = Decimal(repr(float(prices[name])))
        for counted, weight in leaf.items():
            rates[counted] = rates.get(counted, Decimal(0)) + price * weight
    return {name: float(rate) for name, rate in rates.items()}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a lookup found, with the facts ``describe`` reports; ``valid_until`` is unix seconds."""

    price: Price | None
    valid_until: float = NEVER
    provider_id: str | None = None
    variant: str | None = None
    note: str | None = None
    uncounted: tuple[str, ...] = ()  # genai-prices price keys of the model that spendwatch counts no usage of
