"""spendwatch's settings: keyword arguments, then environment variables, then the ``SPENDWATCH_CONFIG`` TOML file,
then defaults. Parsed once at start-up; anything wrong raises :class:`ConfigError` naming the setting and value.

TOML file (every key optional)::

    ledger = "/var/lib/spendwatch/ledger.db"     # or "postgresql://user@host/db"
    metrics_address = "127.0.0.1:9464"            # or "off"
    timezone = "Europe/Berlin"
    thresholds = [0.75, 0.9, 1.0]
    enforce = "off"                               # or "block"
    categories = ["metabolite_identification", "literature_review"]
    prices_file = "prices.toml"                   # a relative path here (or in ledger) is from this file's directory
    ingest_spans = "off"                          # "on": also price GenAI spans other instrumentations make here

    [budgets.global]                              # SPENDWATCH_DAILY/MONTHLY_BUDGET_USD set the same budget
    daily_usd = 50
    monthly_usd = 1000

    [budgets.metabolomics]                        # a named budget scoped to a category (or model, or service)
    category = "metabolite_identification"
    daily_usd = 10
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spendwatch.exporter.journal import DEFAULT_MEMORY_RECORDS
from spendwatch.exporter.ledger import is_postgres_location, shown_location, state_directory
from spendwatch.instrumentation.categories import VALID_CATEGORY, is_valid_category
from spendwatch.instrumentation.errors import ConfigError

if TYPE_CHECKING:
    from spendwatch.instrumentation.pricing import PriceTable

__all__ = ["BudgetSpec", "Settings", "load_settings", "default_ledger_path", "GLOBAL_BUDGET", "PERIODS"]

GLOBAL_BUDGET = "global"
PERIODS = ("day", "month")
ENFORCE_MODES = ("off", "block")
DEFAULT_METRICS_ADDRESS = ("127.0.0.1", 9464)
DEFAULT_INTAKE_MAX_BYTES = 16 * 1024 * 1024  # an OTLP export body after decompression (spendwatch serve)

# setting name -> environment variable
ENV = {
    "ledger": "SPENDWATCH_LEDGER",
    "metrics_address": "SPENDWATCH_METRICS_ADDRESS",
    "timezone": "SPENDWATCH_TIMEZONE",
    "thresholds": "SPENDWATCH_THRESHOLDS",
    "enforce": "SPENDWATCH_ENFORCE",
    "categories": "SPENDWATCH_CATEGORIES",
    "prices_file": "SPENDWATCH_PRICES_FILE",
    "daily_budget_usd": "SPENDWATCH_DAILY_BUDGET_USD",
    "monthly_budget_usd": "SPENDWATCH_MONTHLY_BUDGET_USD",
    "metrics_basic_auth": "SPENDWATCH_METRICS_BASIC_AUTH",
    "metrics_tls_certfile": "SPENDWATCH_METRICS_TLS_CERTFILE",
    "metrics_tls_keyfile": "SPENDWATCH_METRICS_TLS_KEYFILE",
    "ingest_spans": "SPENDWATCH_INGEST_SPANS",
    "intake_max_bytes": "SPENDWATCH_INTAKE_MAX_BYTES",
    "intake_workers": "SPENDWATCH_INTAKE_WORKERS",
    "journal_memory_records": "SPENDWATCH_JOURNAL_MEMORY_RECORDS",
}
CONFIG_ENV = "SPENDWATCH_CONFIG"
_FILE_ONLY = ("budgets",)


@dataclass(frozen=True)
class BudgetSpec:
    """A spending limit for one calendar period, over all calls or those of one category, model or service (the
    OpenTelemetry service.name of the process or OTLP resource that made the call)."""

    name: str
    period: str  # "day" | "month"
    limit_usd: float
    category: str | None = None
    model: str | None = None
    service: str | None = None

    def covers(self, category: str | None, model: str | None, service: str | None = None) -> bool:
        return (
            (self.category is None or self.category == category)
            and (self.model is None or self.model == model)
            and (self.service is None or self.service == service)
        )


@dataclass(frozen=True)
class Settings:
    ledger: str
    metrics_address: tuple[str, int] | None
    timezone: ZoneInfo
    thresholds: tuple[float, float, float]
    enforce: str
    categories: frozenset[str]
    budgets: tuple[BudgetSpec, ...]
    prices_file: str | None = None
    metrics_basic_auth: tuple[str, str] | None = None
    metrics_tls_certfile: str | None = None
    metrics_tls_keyfile: str | None = None
    ingest_spans: bool = False  # SPENDWATCH_INGEST_SPANS=on: price GenAI spans other instrumentations make here
    intake_max_bytes: int = DEFAULT_INTAKE_MAX_BYTES  # the largest OTLP body POST /v1/traces takes, decompressed
    # Processes that read and price OTLP bodies beside spendwatch serve's own (0: serve does it all); None: one per
    # spare CPU, at most two (see exporter/intake/workers.py).
    intake_workers: int | None = None
    # Records a process keeps in memory while no journal file can be written anywhere; past it they are dropped.
    journal_memory_records: int = DEFAULT_MEMORY_RECORDS
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    config_path: str | None = None
    # Where prices_file was set, as its errors name it: "prices_file='/etc/p.toml' in SPENDWATCH_CONFIG='...'".
    prices_file_label: str | None = field(default=None, compare=False, repr=False)
    ledger_label: str | None = field(default=None, compare=False, repr=False)  # password masked

    @property
    def is_postgres(self) -> bool:
        return is_postgres_location(self.ledger)

    def price_table(self) -> PriceTable:
        """The bundled prices with the overrides of ``prices_file``, wherever it was set (keyword, environment or
        the config file): the one way spendwatch builds the prices it charges and shows."""
        from spendwatch.instrumentation.pricing import PriceTable, load_overrides  # genai-prices loads on first use

        return PriceTable(load_overrides(self.prices_file, self.prices_file_label) if self.prices_file else None)


def default_ledger_path(environ: Mapping[str, str] = os.environ) -> str:
    return str(state_directory(environ=environ) / "ledger.db")


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Resolve every setting by precedence (keyword, environment, file, default) and validate it."""
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = set(overrides) - set(ENV) - set(_FILE_ONLY) - {"config"}
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}; known settings are {', '.join(sorted(ENV))}")
    config_path = overrides.get("config") or environ.get(CONFIG_ENV)
    from_file = _read_config_file(config_path) if config_path else {}

    def pick(name: str) -> tuple[Any, str]:
        """The value and the name to blame in an error message."""
        if name in overrides:
            return overrides[name], name
        env_name = ENV.get(name)
        if env_name and environ.get(env_name, "").strip():
            return environ[env_name].strip(), env_name
        if name in from_file:
            return from_file[name], f"{name} in {CONFIG_ENV}={config_path!r}"
        return None, name

    _check_routes(from_file.get("routes"), config_path)
    prices_file, prices_file_name = pick("prices_file")
    prices_file = _optional_text(prices_file, prices_file_name)
    ledger_value, ledger_name = pick("ledger")
    ledger = _ledger(ledger_value, ledger_name, environ)
    return Settings(
        ledger=ledger,
        metrics_address=_address(*pick("metrics_address")),
        timezone=_timezone(*pick("timezone")),
        thresholds=_thresholds(*pick("thresholds")),
        enforce=_enforce(*pick("enforce")),
        categories=_categories(*pick("categories")),
        budgets=_budgets(pick, from_file.get("budgets"), config_path),
        prices_file=prices_file,
        metrics_basic_auth=_basic_auth(*pick("metrics_basic_auth")),
        metrics_tls_certfile=_optional_text(*pick("metrics_tls_certfile")),
        metrics_tls_keyfile=_optional_text(*pick("metrics_tls_keyfile")),
        ingest_spans=_on_off(*pick("ingest_spans")),
        intake_max_bytes=_byte_count(*pick("intake_max_bytes")),
        intake_workers=_worker_count(*pick("intake_workers")),
        journal_memory_records=_record_count(*pick("journal_memory_records")),
        raw=from_file,
        config_path=config_path,
        prices_file_label=None if prices_file is None else _label(prices_file_name, prices_file),
        ledger_label=None if ledger_value is None else _label(ledger_name, shown_location(ledger)),
    )


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.loads(file.read().decode("utf-8-sig"))  # -sig: editors on Windows may start with a BOM
    except OSError as error:
        raise ConfigError(f"{CONFIG_ENV}={path!r} cannot be read: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{CONFIG_ENV}={path!r} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{CONFIG_ENV}={path!r} is nested too deeply to be a spendwatch configuration") from None
    known = set(ENV) - {"daily_budget_usd", "monthly_budget_usd"} | set(_FILE_ONLY) | {"guard", "routes"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{CONFIG_ENV}={path!r} has an unknown key {unknown[0]!r}")
    return _relative_to_file(data, path)


# Settings that name a file: in the config file a relative path is relative to the config file's directory (where
# its author put the file next to it), not to whatever directory the app happens to start in.
_PATH_SETTINGS = ("ledger", "prices_file", "metrics_tls_certfile", "metrics_tls_keyfile")


def _relative_to_file(data: dict[str, Any], path: str) -> dict[str, Any]:
    directory = os.path.dirname(os.path.abspath(path))
    for key in _PATH_SETTINGS:
        value = data.get(key)
        if isinstance(value, str) and value.strip() and not is_postgres_location(value.strip()):
            data[key] = os.path.join(directory, value.strip())
    return data


def _label(name: str, value: Any) -> str:
    """How an error names a setting (``name`` as ``pick`` gives it) and its value: ``SPENDWATCH_PRICES_FILE='p.toml'``,
    or from the config file ``prices_file='/etc/p.toml' in SPENDWATCH_CONFIG='/etc/x.toml'``."""
    setting, in_file, config = name.partition(" in ")
    return f"{setting}={value!r}{in_file}{config}"


def _ledger(value: Any, name: str, environ: Mapping[str, str]) -> str:
    if value is None:
        return default_ledger_path(environ)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_label(name, value)} must be a SQLite file path or a postgresql:// URL")
    return value.strip()


def _address(value: Any, name: str) -> tuple[str, int] | None:
    if value is None:
        return DEFAULT_METRICS_ADDRESS
    text = str(value).strip()
    if text.lower() == "off":
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{_label(name, value)} must be host:port (such as 127.0.0.1:9464) or off")
    return host.strip("[]"), int(port)


def _timezone(value: Any, name: str) -> ZoneInfo:
    if value is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        problem = "is not a known IANA time zone (such as UTC or Europe/Berlin)"
        raise ConfigError(f"{_label(name, value)} {problem}") from None


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too big for a float
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ConfigError(f"{_label(name, value)} must be a non-negative number")
    return number


def _thresholds(value: Any, name: str) -> tuple[float, float, float]:
    if value is None:
        return (0.75, 0.9, 1.0)
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or len(parts) != 3:
        raise ConfigError(f"{_label(name, value)} must be three ratios warning,critical,exceeded such as 0.75,0.9,1.0")
    ratios = tuple(_number(part, name) for part in parts)
    if not 0 < ratios[0] <= ratios[1] <= ratios[2]:
        raise ConfigError(f"{_label(name, value)} must be positive ratios in rising order, such as 0.75,0.9,1.0")
    # A warning or critical line past the limit would only ever be reached after the budget is exceeded.
    if ratios[1] > 1:
        raise ConfigError(f"{_label(name, value)} must have warning and critical ratios of at most 1, such as 0.75,0.9")
    return ratios


def _enforce(value: Any, name: str) -> str:
    mode = "off" if value is None else str(value).strip().lower()
    if mode not in ENFORCE_MODES:
        raise ConfigError(f"{_label(name, value)} must be one of {', '.join(ENFORCE_MODES)}")
    return mode


def _on_off(value: Any, name: str) -> bool:
    if isinstance(value, bool):  # a TOML true/false
        return value
    text = "off" if value is None else str(value).strip().lower()
    if text not in ("on", "off"):
        raise ConfigError(f"{_label(name, value)} must be on or off")
    return text == "on"


def _byte_count(value: Any, name: str) -> int:
    if value is None:
        return DEFAULT_INTAKE_MAX_BYTES
    number = _number(value, name)
    if number < 1 or number != int(number):
        raise ConfigError(f"{_label(name, value)} must be a whole number of bytes, at least 1")
    return int(number)


def _worker_count(value: Any, name: str) -> int | None:
    return None if value is None else _whole_number(value, name, "processes")


def _record_count(value: Any, name: str) -> int:
    return DEFAULT_MEMORY_RECORDS if value is None else _whole_number(value, name, "records")


def _whole_number(value: Any, name: str, of: str) -> int:
    number = _number(value, name)
    if number < 0 or number != int(number):
        raise ConfigError(f"{_label(name, value)} must be a whole number of {of}, 0 or more")
    return int(number)


def _categories(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or not all(isinstance(part, str) for part in parts):
        raise ConfigError(f"{_label(name, value)} must be a comma-separated list of category names")
    categories = frozenset(part.strip() for part in parts if part.strip())
    for category in sorted(categories):
        _check_category(category, name, value)
    return categories


def _check_category(category: str, name: str, value: Any) -> None:
    # A call's category that breaks the rule is recorded as "other", so a configured one that breaks it matches nothing.
    if not is_valid_category(category):
        raise ConfigError(
            f"{_label(name, value)} names the category {category!r}, which no call can have ({VALID_CATEGORY})"
        )


def _check_routes(table: Any, config_path: str | None) -> None:
    """The ``[routes]`` table (path prefix = category) is read by the web middleware; its categories must be valid."""
    if table is None:
        return
    if not isinstance(table, dict) or not all(isinstance(category, str) for category in table.values()):
        raise ConfigError(f"routes in {CONFIG_ENV}={config_path!r} must be a table of path prefix = category name")
    for prefix, category in table.items():
        _check_category(category, f'routes."{prefix}" in {CONFIG_ENV}={config_path!r}', category)


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{_label(name, value)} must be text")
    return value.strip() or None


def _basic_auth(value: Any, name: str) -> tuple[str, str] | None:
    if value is None:
        return None
    user, colon, password = str(value).partition(":")
    if not colon or not user or not password:
        raise ConfigError(f"{_label(name, '<hidden>')} must be user:password")
    return user, password


def _budgets(pick, table: Any, config_path: str | None) -> tuple[BudgetSpec, ...]:
    budgets: list[BudgetSpec] = []
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"budgets in {CONFIG_ENV}={config_path!r} must be a table of named budgets")
    for budget_name, entry in (table or {}).items():
        budgets.extend(_file_budget(budget_name, entry, config_path))
    for period, setting in (("day", "daily_budget_usd"), ("month", "monthly_budget_usd")):
        value, name = pick(setting)
        if value is not None:
            budgets = [b for b in budgets if not (b.name == GLOBAL_BUDGET and b.period == period)]
            budgets.append(BudgetSpec(GLOBAL_BUDGET, period, _number(value, ENV.get(name, name))))
    return tuple(budgets)


_SCOPES = ("category", "model", "service")  # what a named budget can be narrowed to


def _file_budget(budget_name: str, entry: Any, config_path: str | None) -> list[BudgetSpec]:
    where = f"budgets.{budget_name} in {CONFIG_ENV}={config_path!r}"

    def key_name(key: str) -> str:
        """How an error names one key of this budget: ``budgets.NAME.KEY in SPENDWATCH_CONFIG='...'``."""
        return f"budgets.{budget_name}.{key} in {CONFIG_ENV}={config_path!r}"

    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(entry) - {"daily_usd", "monthly_usd", *_SCOPES})
    if unknown:
        raise ConfigError(f"{where} has an unknown key {unknown[0]!r}")
    if budget_name == GLOBAL_BUDGET and any(key in entry for key in _SCOPES):
        raise ConfigError(f"{where} covers every call and cannot be scoped to a category, model or service")
    scope = {key: _optional_text(entry.get(key), key_name(key)) for key in _SCOPES}
    if scope["category"] is not None:
        _check_category(scope["category"], key_name("category"), entry["category"])
    specs = [
        BudgetSpec(budget_name, period, _number(entry[key], key_name(key)), **scope)
        for period, key in (("day", "daily_usd"), ("month", "monthly_usd"))
        if key in entry
    ]
    if not specs:
        raise ConfigError(f"{where} needs daily_usd or monthly_usd")
    return specs
