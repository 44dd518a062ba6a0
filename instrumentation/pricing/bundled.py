"""The price data bundled with ``genai-prices``: a model's price in force at a moment, with its tiers, and the next
date on which the data says it changes. Read offline from the installed package, loaded on first use (~120 ms)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendwatch.instrumentation.pricing.price import NEVER, Price, Resolution
from spendwatch.instrumentation.pricing.units import GENAI_ALIASES, UNITS

__all__ = [
    "OPENAI_COMPATIBLE",
    "bundled_data_mtime",
    "bundled_data_source",
    "price_context",
    "provider_at",
    "provider_known",
    "provider_models",
    "provider_name",
    "resolve_bundled",
    "resolve_openai_compatible",
]

# Semantic-convention provider names → genai-prices provider ids. Others are passed through unchanged.
_GENAI_PRICES_PROVIDER = {
    "azure.ai.openai": "azure",  # genai-prices' azure falls back to openai's prices
    "azure.ai.inference": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "aws.bedrock": "aws",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
}
# And back, the first semantic-convention name of an id winning (azure → azure.ai.openai, google → gcp.gemini).
_SEMCONV_PROVIDER = {genai_id: name for name, genai_id in reversed(_GENAI_PRICES_PROVIDER.items())}
_URL_ENDS = frozenset({"", "/", ":", "?", "#"})  # what may follow a provider's API URL prefix
# The price key of a call to an OpenAI-compatible host that is no known provider (a gateway, a proxy, a local server).
OPENAI_COMPATIBLE = "openai-compatible"


def provider_name(provider_id: str) -> str:
    """The semantic-convention name of a genai-prices provider (x-ai: x_ai); others are the same."""
    return _SEMCONV_PROVIDER.get(provider_id, provider_id)


def provider_at(api_url: str) -> str | None:
    """The semantic-convention name of the provider whose API URL pattern (genai-prices') matches ``api_url``, or
    None for a host no provider claims (a gateway, a proxy, a local server). Loads the bundled data."""
    for provider in _bundled_snapshot().providers:
        match = re.match(provider.api_pattern, api_url)
        # The patterns are not anchored at their end: "https://api.openai.com.example.org" is no OpenAI host.
        if match is not None and (match.group().endswith("/") or api_url[match.end() : match.end() + 1] in _URL_ENDS):
            return provider_name(provider.id)
    return None


def provider_known(provider: str) -> bool:
    """Whether the bundled data has a price list for ``provider`` (a semantic-convention name or a genai-prices id),
    or it is the openai-compatible price key. Loads the bundled data."""
    from genai_prices.data_snapshot import find_provider_by_id

    if provider == OPENAI_COMPATIBLE:
        return True
    return (
        find_provider_by_id(_bundled_snapshot().providers, _GENAI_PRICES_PROVIDER.get(provider, provider)) is not None
    )


def provider_models(provider: str) -> tuple[tuple[str, str], ...]:
    """``(provider, model id)`` of every model the bundled data lists for ``provider`` and the providers it falls
    back to; of every provider's models when the data does not know ``provider`` (an OpenAI-compatible host).
    Providers are named as the semantic conventions name them. Loads the bundled data (for the guard's bounds)."""
    providers = _bundled_snapshot().providers
    provider_id = _GENAI_PRICES_PROVIDER.get(provider, provider)
    own = next((candidate for candidate in providers if candidate.id == provider_id), None)
    if own is not None:
        lenders = set(own.fallback_model_providers or ())
        providers = [own, *(candidate for candidate in providers if candidate.id in lenders)]
    return tuple((provider_name(p.id), model.id) for p in providers for model in p.models)


def price_context(service_tier: str | None, batch: bool) -> dict[str, str]:
    context = {}
    if service_tier:
        context["service_tier"] = service_tier
    if batch:
        context["processing"] = "batch"
    return context


_snapshot_lock = threading.Lock()
_snapshot: Any = None


def _bundled_snapshot() -> Any:
    """Our own DataSnapshot over the data shipped in the wheel, loaded once. Not ``genai_prices.get_snapshot()``:
    that returns whatever ``UpdatePrices`` fetched, if anything in the process started it."""
    global _snapshot
    if _snapshot is None:
        with _snapshot_lock:  # one thread pays the ~120 ms load; the others wait for it instead of repeating it
            if _snapshot is None:
                from genai_prices.data import providers
                from genai_prices.data_snapshot import DataSnapshot

                _snapshot = DataSnapshot(providers=providers, from_auto_update=False)
    return _snapshot


@functools.cache  # the data loaded in this process does not change, even if pip upgrades the package under it
def bundled_data_source() -> str:
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


@functools.cache
def bundled_data_mtime() -> float:
    from importlib.util import find_spec

    spec = find_spec("genai_prices")  # locates the package without importing its data
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("genai-prices is not installed")
    return os.path.getmtime(os.path.join(next(iter(spec.submodule_search_locations)), "data.py"))


def resolve_bundled(model: str, provider: str, context: dict[str, str], now: datetime) -> Resolution:
    provider_id = _GENAI_PRICES_PROVIDER.get(provider, provider)
    try:
        found_provider, model_info = _bundled_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return Resolution(None, note=f"no price for {model!r} (provider {provider_id!r}) in the bundled data")
    own_model = any(candidate is model_info for candidate in found_provider.models)
    # Mirrors ModelInfo.calc_price: a model borrowed from a fallback provider (azure → openai) is priced without
    # the lender's tier and batch variants, which are not the borrower's prices.
    applied_context = context if own_model else {}
    model_price = model_info.get_prices(now, applied_context)
    price, uncounted = _price_from_model_price(model_info.id, model_price, bundled_data_source())
    if price is None:
        listed = ", ".join(uncounted)
        return Resolution(None, note=f"{model_info.id!r} is priced by {listed} in the bundled data, not counted here")
    return Resolution(
        price,
        valid_until=_next_price_change(model_info, now),
        provider_id=found_provider.id,
        variant=_variant_text(model_info, context, applied_context, now),
        note=None if own_model else _fallback_note(found_provider, model_info, context),
        uncounted=uncounted,
    )


def resolve_openai_compatible(model: str, context: dict[str, str], now: datetime) -> Resolution:
    """OpenAI's price when OpenAI lists the model; else the price of the one provider that lists it (or the one price
    every provider listing it agrees on); else unpriced."""
    resolution = resolve_bundled(model, "openai", context, now)
    if resolution.price is not None:
        return resolution
    name = model.lower()
    listing = [provider.id for provider in _bundled_snapshot().providers if provider.find_model(name) is not None]
    priced = [found for found in (resolve_bundled(model, pid, context, now) for pid in listing) if found.price]
    if len({_comparable(found.price) for found in priced}) != 1:
        who = f"{len(priced)} providers list it at different prices ({', '.join(listing)})" if priced else "none does"
        return Resolution(None, note=f"OpenAI does not list {model!r} and {who}")
    found = priced[0]
    others = f"the {len(priced)} providers listing it agree on" if len(priced) > 1 else "the one provider listing it"
    note = f"OpenAI does not list it: the price of {found.provider_id}, {others}"
    return dataclasses.replace(found, note=note if found.note is None else f"{note}; {found.note}")


def _comparable(price: Price) -> tuple:
    tiers = tuple((threshold, _comparable(tier)) for threshold, tier in price.tiers)
    return price.input, price.output, price.cache_read, tuple(sorted(price.per_unit.items())), tiers


def _variant_text(model_info: Any, context: dict[str, str], applied_context: dict[str, str], now: datetime) -> str:
    requested = ", ".join(f"{key}={value}" for key, value in context.items())
    if not context:
        return "standard"
    if not applied_context:
        return f"standard ({requested} not applied, see the note)"
    matched = [
        ", ".join(f"{key}={value}" for key, value in variant.when.items())
        for variant in model_info.price_variants or ()
        if all(applied_context.get(key) == value for key, value in variant.when.items())
        and (variant.constraint is None or variant.constraint.active(now))
        and any(value is not None for value in variant.prices.__dict__.values())
    ]
    if not matched:
        return f"standard ({requested} has no separate price for this model)"
    return " + ".join(matched)


def _fallback_note(found_provider: Any, model_info: Any, context: dict[str, str]) -> str:
    lender = next(
        (
            candidate.id
            for candidate in _bundled_snapshot().providers
            if candidate.id in (found_provider.fallback_model_providers or ())
            and any(lent is model_info for lent in candidate.models)
        ),
        "another provider",
    )
    note = f"{found_provider.id} has no price of its own for it; using {lender}'s"
    return note + (", without service-tier or batch variants" if context else "")


def _price_from_model_price(model_id: str, model_price: Any, source: str) -> tuple[Price | None, tuple[str, ...]]:
    """The model's price over the units spendwatch counts, and the genai-prices price keys it also lists that
    spendwatch counts no usage of (document pages, video tokens...)."""
    from genai_prices.types import TieredPrices

    listed = {key: value for key, value in model_price.__dict__.items() if value is not None and key[0] != "_"}
    by_unit, used = {}, set()
    for unit in UNITS.values():
        keys = [key for key in (unit.genai_price_key, *GENAI_ALIASES.get(unit.name, ())) if key in listed]
        if keys:  # the unit's own key first; an alias (input audio hours for audio hours) is the same usage
            by_unit[unit.name] = (listed[keys[0]], unit.per)
            used.update(keys)
    uncounted = tuple(sorted(set(listed) - used))
    if not by_unit and uncounted:
        return None, uncounted  # billed only by what spendwatch does not count: not a price of $0
    starts = sorted(
        {tier.start for value, _ in by_unit.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )
    base = _price_at_tier(model_id, source, by_unit, None)
    tiers = tuple((start + 1, _price_at_tier(model_id, source, by_unit, start)) for start in starts)
    return Price(base.model, source, base.input, base.output, base.cache_read, tiers, base.per_unit), uncounted


def _price_at_tier(model_id: str, source: str, by_unit: dict[str, tuple[Any, int]], tier_start: int | None) -> Price:
    per_unit = {name: _per_unit(_price_at(value, tier_start), per) for name, (value, per) in by_unit.items()}
    # A model listed without an input or output price bills none (an embedding model's output); without a
    # cache-read price, genai-prices bills cached tokens as input tokens.
    input_price = per_unit.pop("input_tokens", 0.0)
    output_price = per_unit.pop("output_tokens", 0.0)
    cache_read_price = per_unit.pop("cache_read_tokens", input_price)
    return Price(model_id, source, input_price, output_price, cache_read_price, (), per_unit)


def _price_at(value: Any, tier_start: int | None) -> Decimal:
    """Per-million price of ``value`` for a call just above ``tier_start`` input tokens (None: below every tier)."""
    from genai_prices.types import TieredPrices

    if not isinstance(value, TieredPrices):
        return value
    applicable = value.base
    for tier in value.tiers:  # ascending; genai-prices applies the highest tier whose start is exceeded
        if tier_start is not None and tier_start >= tier.start:
            applicable = tier.price
    return applicable


def _per_unit(price: Decimal, per: int) -> float:
    return float(price / per)  # Decimal division first, so 0.15/MTok is the float nearest 1.5e-7


def _next_price_change(model_info: Any, now: datetime) -> float:
    """Unix seconds of the next moment after ``now`` at which any of the model's price constraints flips."""
    constraints = [conditional.constraint for conditional in _conditional_prices(model_info)]
    constraints += [variant.constraint for variant in model_info.price_variants or ()]
    changes = (_next_change(constraint, now) for constraint in constraints if constraint is not None)
    return min(changes, default=NEVER)


def _conditional_prices(model_info: Any) -> Iterable[Any]:
    from genai_prices.types import ModelPrice

    return () if isinstance(model_info.prices, ModelPrice) else model_info.prices


def _next_change(constraint: Any, now: datetime) -> float:
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)  # naive means UTC, as in genai-prices
    start_date = getattr(constraint, "start_date", None)
    if start_date is not None:
        start = _utc_midnight(start_date)
        return start.timestamp() if start > now else NEVER
    # A time-of-day window (off-peak prices) flips at its start and end time every day.
    flips = []
    for moment in (constraint.start_time, constraint.end_time):
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        today = datetime.combine(now.date(), moment).astimezone(UTC)
        flips += [today, today + timedelta(days=1), today - timedelta(days=1)]
    return min(flip for flip in flips if flip > now).timestamp()


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
