"""USD prices per token, resolved once per model, and the per-call cost as plain float arithmetic.

The source of truth is the price data bundled with ``genai-prices`` (read offline, never updated over the network),
plus an optional overrides file named by ``SPENDWATCH_PRICES_FILE``. ``genai_prices.calc_price`` costs ~200 µs per
call, so it never runs per call: :meth:`PriceTable.lookup` resolves a model's text-token prices once into a
:class:`Price`, and :meth:`Price.cost` is a few multiplications::

    table = price_table_from_env()                    # raises ConfigError on a malformed overrides file
    price = table.lookup("gpt-4o-mini-2024-07-18")    # None means unpriced, never a $0 price
    if price is not None:
        usd = price.cost(input_tokens=1200, output_tokens=300, cache_read_tokens=1024)

A :class:`Price` covers text tokens only (input, cached input, output including reasoning). Per-request, audio,
image, cache-write and web-search charges in the data are not priced.

Overrides file (TOML, or JSON with the same structure when the name ends in ``.json``)::

    [models."my-finetune"]        # matched case-insensitively; also matches "my-finetune-2025-01-01"/"-20250101"
    input_per_mtok = 1.0          # USD per million input tokens, required
    output_per_mtok = 2.0         # USD per million output tokens, required (write 0 for an embedding model)
    cache_read_per_mtok = 0.5     # USD per million cached input tokens, optional, defaults to input_per_mtok

An override wins over the bundled data for every provider, service tier and batch mode, and for a call whichever of
its two names it is keyed on (:meth:`PriceTable.lookup_call`): an Azure deployment name or an alias overridden as the
request model beats the bundled price of the snapshot the response names.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "Price",
    "PriceTable",
    "load_overrides",
    "price_table_from_env",
    "rounded_usd",
    "PRICES_FILE_ENV",
    "USD_DECIMALS",
]

PRICES_FILE_ENV = "SPENDWATCH_PRICES_FILE"
# Money leaves spendwatch (span attributes, CSV, JSON, /metrics) rounded to a billionth of a dollar: finer than any
# price, and without float noise such as 0.00013000000000000002. The ledger keeps the unrounded value.
USD_DECIMALS = 9


def rounded_usd(amount: float) -> float:
    """``amount`` in USD as machine-readable output shows it: rounded to :data:`USD_DECIMALS` decimal places."""
    return round(amount, USD_DECIMALS)


_PER_MILLION = 1_000_000
_NEVER = math.inf
# Unbounded distinct model names (a typo loop, a proxy passing user input) must not grow memory without limit.
_MAX_CACHED_LOOKUPS = 4096

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

# OpenAI snapshot suffixes: an override for "my-model" also prices "my-model-2025-01-01" and "my-model-20250101".
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


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
class _Resolution:
    """What a lookup found, with the facts ``describe`` reports; ``valid_until`` is unix seconds."""

    price: Price | None
    valid_until: float = _NEVER
    provider_id: str | None = None
    variant: str | None = None
    note: str | None = None


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
        self._cache: dict[tuple[str, str, str | None, bool], _Resolution] = {}

    def lookup(
        self, model: str, *, provider: str = "openai", service_tier: str | None = None, batch: bool = False
    ) -> Price | None:
        """The price in force now, or None when the model is unpriced (its calls are counted, not free)."""
        key = (model, provider, service_tier, batch)
        resolution = self._cache.get(key)
        if resolution is None or (resolution.valid_until != _NEVER and self._now_seconds() >= resolution.valid_until):
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
            price = self.lookup(response_model, provider=provider, service_tier=service_tier, batch=batch)
            if price is not None:
                return price
        return self.lookup(request_model, provider=provider, service_tier=service_tier, batch=batch)

    def describe(
        self, model: str, *, provider: str = "openai", service_tier: str | None = None, batch: bool = False
    ) -> str:
        """Human-readable price in force for ``model``: USD per million tokens, tiers, source and matched model."""
        resolution = self._resolve_and_cache((model, provider, service_tier, batch))
        return _describe(model, provider, resolution, self.data_version)

    @property
    def data_version(self) -> str:
        """The bundled price data's version, e.g. ``"genai-prices 0.2.3"``."""
        return _bundled_data_source()

    @property
    def data_timestamp(self) -> float:
        """Unix seconds of the bundled price data.

        genai-prices records no date for its data, so this is the modification time of its ``data.py``: when that
        copy of the data was written to disk (installation time under pip).
        """
        return _bundled_data_mtime()

    def _resolve_and_cache(self, key: tuple[str, str, str | None, bool]) -> _Resolution:
        resolution = self._resolve(*key)
        if len(self._cache) >= _MAX_CACHED_LOOKUPS:
            self._cache.clear()
        self._cache[key] = resolution
        return resolution

    def _resolve(self, model: str, provider: str, service_tier: str | None, batch: bool) -> _Resolution:
        if not model or not isinstance(model, str):
            return _Resolution(None, note="no model name")
        override = self._find_override(model)
        if override is not None:
            return _Resolution(override)
        return _resolve_bundled(model, provider, _price_context(service_tier, batch), self._clock())

    def _match_override(self, model: str) -> Price | None:
        if not self._overrides or not isinstance(model, str):
            return None
        name = model.lower()
        return self._overrides.get(name) or self._overrides.get(_DATE_SUFFIX.sub("", name))


def load_overrides(path: str | os.PathLike, label: str | None = None) -> dict[str, Price]:
    """Parse an overrides file (format in the module docstring); any problem raises :class:`ConfigError`, whose
    sentence starts with ``label``: the setting that named the file and its value, ``SPENDWATCH_PRICES_FILE='...'``
    unless told otherwise (``prices_file='...' in SPENDWATCH_CONFIG='...'``)."""
    label = label or f"{PRICES_FILE_ENV}={os.fspath(path)!r}"
    json_file = os.fspath(path).lower().endswith(".json")
    raw = _parse_overrides_file(path, label, json_file)
    source = f"file {os.path.abspath(path)}"
    models = _models_table(raw, label)
    overrides: dict[str, Price] = {}
    for name, entry in models.items():
        if name.lower() in overrides:
            raise _file_error(label, f"model {name!r} is listed twice (names are case-insensitive)")
        overrides[name.lower()] = _override_price(name, entry, source, label, json_file)
    return overrides


def price_table_from_env(environ: Mapping[str, str] = os.environ) -> PriceTable:
    """A :class:`PriceTable` with the overrides named by ``SPENDWATCH_PRICES_FILE`` (absent or empty: none)."""
    path = environ.get(PRICES_FILE_ENV, "").strip()
    return PriceTable(load_overrides(path) if path else None)


# --- the overrides file -------------------------------------------------------------------------------------------

_REQUIRED_KEYS = ("input_per_mtok", "output_per_mtok")
_OPTIONAL_KEYS = ("cache_read_per_mtok",)


def _file_error(label: str, problem: str) -> ConfigError:
    return ConfigError(f"{label}: {problem}")


def _parse_overrides_file(path: str | os.PathLike, label: str, json_file: bool) -> Any:
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as error:
        raise _file_error(label, f"cannot read the file ({error.strerror or error})") from None
    try:
        if json_file:
            return json.loads(content)
        return tomllib.loads(content.decode("utf-8-sig"))  # -sig: editors on Windows may start with a BOM
    except (ValueError, UnicodeDecodeError) as error:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "JSON" if json_file else "TOML"
        raise _file_error(label, f"not valid {kind} ({error})") from None
    except RecursionError:  # both parsers recurse per nesting level: a hostile file would escape as a traceback
        raise _file_error(label, "nested too deeply to be a prices file") from None


def _models_table(raw: Any, label: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict) or "models" not in raw:
        raise _file_error(label, 'expected a [models] table, with one [models."NAME"] table per model')
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        raise _file_error(label, f"unknown top-level key {unknown[0]!r} (only [models] is allowed)")
    if not isinstance(raw["models"], dict):
        raise _file_error(label, "'models' must be a table of model names")
    return raw["models"]


def _override_price(name: str, entry: Any, source: str, label: str, json_file: bool) -> Price:
    where = f"model {json.dumps(name)}" if json_file else f"[models.{json.dumps(name)}]"
    if not name.strip():
        raise _file_error(label, "a model name is empty")
    if name != name.strip():  # it would never match a model name, silently
        raise _file_error(label, f"model name {name!r} starts or ends with spaces")
    if not isinstance(entry, dict):
        raise _file_error(label, f"{where} must be a table with input_per_mtok and output_per_mtok")
    nested = [key for key, value in entry.items() if isinstance(value, dict)]
    if nested and json_file:
        raise _file_error(label, f"{where} holds an object under {nested[0]!r}: a model's entry holds only prices")
    if nested:  # in TOML, most likely an unquoted name with a dot: [models.gpt-4.1] is table "1" in table "gpt-4"
        meant = f"[models.{json.dumps(_dotted_name(name, entry))}]"
        raise _file_error(label, f"{where} holds a table: model names containing '.' must be quoted, e.g. {meant}")
    unknown = sorted(set(entry) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        allowed = ", ".join(_REQUIRED_KEYS + _OPTIONAL_KEYS)
        raise _file_error(label, f"{where} has unknown key {unknown[0]!r} (allowed: {allowed})")
    for key in _REQUIRED_KEYS:
        if key not in entry:
            raise _file_error(label, f"{where} is missing the required key {key!r}")
    per_mtok = {key: _per_mtok_value(entry[key], f"{where} {key!r}", label) for key in entry}
    input_per_mtok = per_mtok["input_per_mtok"]
    return Price(
        model=name,
        source=source,
        input=input_per_mtok / _PER_MILLION,
        output=per_mtok["output_per_mtok"] / _PER_MILLION,
        cache_read=per_mtok.get("cache_read_per_mtok", input_per_mtok) / _PER_MILLION,
    )


def _dotted_name(name: str, entry: dict) -> str:
    """The name an unquoted ``[models.gpt-4.1]`` meant: TOML reads it as table "1" inside table "gpt-4"."""
    while nested := [key for key, value in entry.items() if isinstance(value, dict)]:
        name, entry = f"{name}.{nested[0]}", entry[nested[0]]
    return name


def _per_mtok_value(value: Any, where: str, label: str) -> float:
    problem = f"{where} must be a non-negative number of USD per million tokens"
    # bool is an int subclass, and true/false is never a price.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _file_error(label, f"{problem}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer past the largest float (~1.8e308)
        raise _file_error(label, f"{problem}, got an integer of {len(str(abs(value)))} digits") from None
    if not math.isfinite(number) or number < 0:
        raise _file_error(label, f"{problem}, got {value!r}")
    return number


def _price_context(service_tier: str | None, batch: bool) -> dict[str, str]:
    context = {}
    if service_tier:
        context["service_tier"] = service_tier
    if batch:
        context["processing"] = "batch"
    return context


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- the bundled genai-prices data --------------------------------------------------------------------------------

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
def _bundled_data_source() -> str:
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


@functools.cache
def _bundled_data_mtime() -> float:
    from importlib.util import find_spec

    spec = find_spec("genai_prices")  # locates the package without importing its data
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("genai-prices is not installed")
    return os.path.getmtime(os.path.join(next(iter(spec.submodule_search_locations)), "data.py"))


def _resolve_bundled(model: str, provider: str, context: dict[str, str], now: datetime) -> _Resolution:
    provider_id = _GENAI_PRICES_PROVIDER.get(provider, provider)
    try:
        found_provider, model_info = _bundled_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return _Resolution(None, note=f"no price for {model!r} (provider {provider_id!r}) in the bundled data")
    own_model = any(candidate is model_info for candidate in found_provider.models)
    # Mirrors ModelInfo.calc_price: a model borrowed from a fallback provider (azure → openai) is priced without
    # the lender's tier and batch variants, which are not the borrower's prices.
    applied_context = context if own_model else {}
    model_price = model_info.get_prices(now, applied_context)
    price = _price_from_model_price(model_info.id, model_price, _bundled_data_source())
    if price is None:
        return _Resolution(None, note=f"{model_info.id!r} has no per-token price in the bundled data")
    return _Resolution(
        price,
        valid_until=_next_price_change(model_info, now),
        provider_id=found_provider.id,
        variant=_variant_text(model_info, context, applied_context, now),
        note=None if own_model else _fallback_note(found_provider, model_info, context),
    )


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


def _price_from_model_price(model_id: str, model_price: Any, source: str) -> Price | None:
    from genai_prices.types import TieredPrices

    input_mtok, output_mtok = model_price.input_mtok, model_price.output_mtok
    if input_mtok is None and output_mtok is None:
        return None  # priced by requests, characters, audio or images: not something a token count can price
    zero = Decimal(0)
    # Without a cache-read price, genai-prices bills cached tokens as input tokens.
    by_key = {"input": input_mtok or zero, "output": output_mtok or zero}
    by_key["cache_read"] = model_price.cache_read_mtok if model_price.cache_read_mtok is not None else by_key["input"]
    starts = sorted(
        {tier.start for value in by_key.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )
    base = [_per_token(_price_at(by_key[key], None)) for key in ("input", "output", "cache_read")]
    tiers = tuple(
        (start + 1, *(_per_token(_price_at(by_key[key], start)) for key in ("input", "output", "cache_read")))
        for start in starts
    )
    return Price(model_id, source, *base, tiers=tiers)


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


def _per_token(per_million: Decimal) -> float:
    return float(per_million / _PER_MILLION)  # Decimal division first, so 0.15/MTok is the float nearest 1.5e-7


def _next_price_change(model_info: Any, now: datetime) -> float:
    """Unix seconds of the next moment after ``now`` at which any of the model's price constraints flips."""
    constraints = [conditional.constraint for conditional in _conditional_prices(model_info)]
    constraints += [variant.constraint for variant in model_info.price_variants or ()]
    changes = (_next_change(constraint, now) for constraint in constraints if constraint is not None)
    return min(changes, default=_NEVER)


def _conditional_prices(model_info: Any) -> Iterable[Any]:
    from genai_prices.types import ModelPrice

    return () if isinstance(model_info.prices, ModelPrice) else model_info.prices


def _next_change(constraint: Any, now: datetime) -> float:
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)  # naive means UTC, as in genai-prices
    start_date = getattr(constraint, "start_date", None)
    if start_date is not None:
        start = _utc_midnight(start_date)
        return start.timestamp() if start > now else _NEVER
    # A time-of-day window (off-peak prices) flips at its start and end time every day.
    flips = []
    for moment in (constraint.start_time, constraint.end_time):
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        today = datetime.combine(now.date(), moment).astimezone(UTC)
        flips += [today, today + timedelta(days=1), today - timedelta(days=1)]
    return min(flip for flip in flips if flip > now).timestamp()


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# --- describe -----------------------------------------------------------------------------------------------------


def _describe(model: str, provider: str, resolution: _Resolution, data_version: str) -> str:
    price = resolution.price
    if price is None:
        reason = resolution.note or f"no price for {model!r}"
        return (
            f"{model}: unpriced ({reason}; checked {data_version} and any {PRICES_FILE_ENV} overrides).\n"
            "Calls to it are counted as unpriced requests, not as free."
        )
    lines = [
        f"{model} (provider {provider}): priced as {price.model!r}",
        f"  USD per million tokens: input {_per_million(price.input)}, cached input {_per_million(price.cache_read)}, "
        f"output {_per_million(price.output)}",
    ]
    for threshold, tier_input, tier_output, tier_cache_read in price.tiers:
        lines.append(
            f"  from {threshold:,} input tokens (whole call): input {_per_million(tier_input)}, "
            f"cached input {_per_million(tier_cache_read)}, output {_per_million(tier_output)}"
        )
    lines.append(f"  source: {price.source}")
    if resolution.provider_id is not None:
        lines.append(f"  genai-prices provider: {resolution.provider_id}")
    lines.append(f"  variant: {resolution.variant or 'standard'}")
    if resolution.note:
        lines.append(f"  note: {resolution.note}")
    if resolution.valid_until != _NEVER:
        changes_at = datetime.fromtimestamp(resolution.valid_until, UTC)
        lines.append(f"  valid until: {changes_at:%Y-%m-%d %H:%M} UTC (a dated price change in the data)")
    return "\n".join(lines)


def _per_million(per_token: float) -> str:
    return f"${per_token * _PER_MILLION:.10g}"
