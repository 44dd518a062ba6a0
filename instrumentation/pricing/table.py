"""The price table: each model's price resolved once (overrides first, then the bundled data) and cached until the
data says it changes, so a call's lookup is a dict read; and its human-readable description."""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from spendwatch.instrumentation.pricing.bundled import (
    OPENAI_COMPATIBLE,
    bundled_data_mtime,
    bundled_data_source,
    price_context,
    provider_name,
    resolve_bundled,
    resolve_openai_compatible,
)
from spendwatch.instrumentation.pricing.overrides import PRICES_FILE_ENV, load_overrides
from spendwatch.instrumentation.pricing.price import NEVER, PER_MILLION, Price, Resolution
from spendwatch.instrumentation.pricing.units import UNITS

__all__ = ["PriceTable", "price_table_from_env"]

# Unbounded distinct model names (a typo loop, a proxy passing user input) must not grow memory without limit.
_MAX_CACHED_LOOKUPS = 4096

# OpenAI snapshot suffixes: an override for "my-model" also prices "my-model-2025-01-01" and "my-model-20250101".
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


class PriceTable:
    """Prices by model, from overrides first and then the bundled genai-prices data.

    Lookups are cached per ``(model, provider, service_tier, batch)`` until the next date on which the data says the
    price changes, so a long-running process switches to a new price on its start date. The bundled data is loaded
    on the first lookup that needs it (~120 ms), not at import. Safe to share between threads: racing lookups may
    resolve the same model twice, with the same result.
    """

    def __init__(
        self, overrides: Mapping[str, Price] | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._overrides = {name.lower(): price for name, price in (overrides or {}).items()}
        # lookup_call asks this for both names of every call: cached, so the date-suffix regex runs once per name.
        self._find_override = functools.lru_cache(maxsize=_MAX_CACHED_LOOKUPS)(self._match_override)
        self._clock = clock or _utc_now
        # The cache check runs on every call: a float clock keeps it to a compare.
        self._now_seconds: Callable[[], float] = time.time if clock is None else (lambda: clock().timestamp())
        self._cache: dict[tuple[str, str, str | None, bool], Resolution] = {}

    def lookup(
        self, model: str, *, provider: str = "openai", service_tier: str | None = None, batch: bool = False
    ) -> Price | None:
        """The price in force now, or None when the model is unpriced (its calls are counted, not free)."""
        key = (model, provider, service_tier, batch)
        resolution = self._cache.get(key)
        if resolution is None or (resolution.valid_until != NEVER and self._now_seconds() >= resolution.valid_until):
            resolution = self._resolve_and_cache(key)
        return resolution.price

    def lookup_call(
        self,
        response_model: str | None,
        request_model: str,
        provider: str,
        service_tier: str | None = None,
        batch: bool = False,
    ) -> Price | None:
        """The price of a call known by two names. The response model names what was billed (a dated snapshot, an
        Azure deployment's model); the request model is what the user chose (an alias, a deployment name). An
        override for either name wins over the bundled data, the response model's first; then the bundled price of
        the response model, then of the request model. It runs on every instrumented call: without overrides it is
        the cached lookups alone."""
        if self._overrides:
            override = self._find_override(response_model) or self._find_override(request_model)
            if override is not None:
                return override
        if response_model:
            # lookup()'s cache check, inlined: the usual call is priced by its response model's cached price.
            resolution = self._cache.get((response_model, provider, service_tier, batch))
            if resolution is not None and resolution.price is not None and resolution.valid_until == NEVER:
                return resolution.price
            price = self.lookup(response_model, provider=provider, service_tier=service_tier, batch=batch)
            if price is not None:
                return price
        return self.lookup(request_model, provider=provider, service_tier=service_tier, batch=batch)

    def describe(
        self, model: str, *, provider: str = "openai", service_tier: str | None = None, batch: bool = False
    ) -> str:
        """Human-readable price in force for ``model``: every unit's price, tiers, source and matched model."""
        resolution = self._resolve_and_cache((model, provider, service_tier, batch))
        return _describe(model, provider, resolution, self.data_version)

    def details(
        self, model: str, *, provider: str = "openai", service_tier: str | None = None, batch: bool = False
    ) -> dict:
        """``describe`` as JSON-ready data (see :func:`price_details`)."""
        resolution = self._resolve_and_cache((model, provider, service_tier, batch))
        return price_details(model, provider, resolution)

    @property
    def data_version(self) -> str:
        """The bundled price data's version, e.g. ``"genai-prices 0.2.3"``."""
        return bundled_data_source()

    @property
    def data_timestamp(self) -> float:
        """Unix seconds of the bundled price data.

        genai-prices records no date for its data, so this is the modification time of its ``data.py``: when that
        copy of the data was written to disk (installation time under pip).
        """
        return bundled_data_mtime()

    def _resolve_and_cache(self, key: tuple[str, str, str | None, bool]) -> Resolution:
        resolution = self._resolve(*key)
        if len(self._cache) >= _MAX_CACHED_LOOKUPS:
            self._cache.clear()
        self._cache[key] = resolution
        return resolution

    def _resolve(self, model: str, provider: str, service_tier: str | None, batch: bool) -> Resolution:
        if not model or not isinstance(model, str):
            return Resolution(None, note="no model name")
        override = self._find_override(model)
        if override is not None:
            return Resolution(override)
        context = price_context(service_tier, batch)
        if provider == OPENAI_COMPATIBLE:
            return resolve_openai_compatible(model, context, self._clock())
        return resolve_bundled(model, provider, context, self._clock())

    def _match_override(self, model: str) -> Price | None:
        if not self._overrides or not isinstance(model, str):
            return None
        name = model.lower()
        return self._overrides.get(name) or self._overrides.get(_DATE_SUFFIX.sub("", name))


def price_table_from_env(environ: Mapping[str, str] = os.environ) -> PriceTable:
    """A :class:`PriceTable` with the overrides named by ``SPENDWATCH_PRICES_FILE`` (absent or empty: none)."""
    path = environ.get(PRICES_FILE_ENV, "").strip()
    return PriceTable(load_overrides(path) if path else None)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- describe -----------------------------------------------------------------------------------------------------


def _describe(model: str, provider: str, resolution: Resolution, data_version: str) -> str:
    price = resolution.price
    if price is None:
        reason = resolution.note or f"no price for {model!r}"
        return (
            f"{model}: unpriced ({reason}; checked {data_version} and any {PRICES_FILE_ENV} overrides).\n"
            "Calls to it are counted as unpriced requests, not as free."
        )
    if resolution.provider_id is not None:
        provider = provider_name(resolution.provider_id) if provider == OPENAI_COMPATIBLE else provider
    lines = [f"{model} (provider {provider}): priced as {price.model!r}", *_price_lines(price, "  ")]
    for threshold, tier in price.tiers:
        lines.append(f"  from {threshold:,} input tokens (whole call):")
        lines += _price_lines(tier, "    ", differing_from=price)
    lines.append(f"  source: {price.source}")
    if resolution.provider_id is not None:
        lines.append(f"  genai-prices provider: {resolution.provider_id}")
    lines.append(f"  variant: {resolution.variant or 'standard'}")
    if resolution.uncounted:
        lines.append(f"  also listed, not counted by spendwatch: {', '.join(resolution.uncounted)}")
    if resolution.note:
        lines.append(f"  note: {resolution.note}")
    if resolution.valid_until != NEVER:
        changes_at = datetime.fromtimestamp(resolution.valid_until, UTC)
        lines.append(f"  valid until: {changes_at:%Y-%m-%d %H:%M} UTC (a dated price change in the data)")
    return "\n".join(lines)


def _price_lines(price: Price, indent: str, differing_from: Price | None = None) -> list[str]:
    """USD per million tokens on one line, then one line per other unit listed (a tier: those that differ)."""
    tokens = [
        f"{UNITS[name].label} {_per_million(per_token)}"
        for name, per_token in unit_prices(price).items()
        if UNITS[name].override_per == PER_MILLION
        and (differing_from is None or unit_prices(differing_from).get(name) != per_token)
    ]
    lines = [f"{indent}USD per million tokens: {', '.join(tokens)}"] if tokens else []
    for name, per_unit in price.per_unit.items():
        unit, same = UNITS[name], differing_from is not None and differing_from.per_unit.get(name) == per_unit
        if unit.override_per != PER_MILLION and not same:
            lines.append(f"{indent}USD per {unit.label}: ${per_unit:.10g}")
    return lines


def unit_prices(price: Price) -> dict[str, float]:
    """USD per unit of every unit ``price`` lists, by unit name, text tokens first."""
    return {**price.token_prices(), **price.per_unit}


def price_details(model: str, provider: str, resolution: Resolution) -> dict:
    """What ``describe`` says, as JSON-ready data: USD per million tokens, or per unit for the other units."""
    price = resolution.price
    answer: dict = {"priced": price is not None}
    if resolution.provider_id is not None:
        answer["provider"] = provider_name(resolution.provider_id) if provider == OPENAI_COMPATIBLE else provider
    if price is None:
        answer["note"] = "unpriced: calls to this model are counted as unpriced requests, not as free"
        return answer
    answer |= {"priced_as": price.model, "source": price.source, **_usd(price)}
    answer["tiers"] = [{"from_input_tokens": threshold, **_usd(tier)} for threshold, tier in price.tiers]
    if resolution.uncounted:
        answer["not_counted"] = list(resolution.uncounted)
    return answer


def _usd(price: Price) -> dict[str, dict[str, float]]:
    def scale(value: float, per: int) -> float:
        return float(f"{value * per:.12g}")  # 12 significant digits: 1.5e-07 * 1e6 prints as 0.15

    per_million, per_unit = {}, {}
    for name, value in unit_prices(price).items():
        per = UNITS[name].override_per
        if per == PER_MILLION:
            per_million[name.removesuffix("_tokens")] = scale(value, per)
        else:
            per_unit[name] = scale(value, per)
    return {"usd_per_million_tokens": per_million, "usd_per_unit": per_unit}


def _per_million(per_token: float) -> str:
    return f"${per_token * PER_MILLION:.10g}"
