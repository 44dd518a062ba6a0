"""The overrides file named by ``SPENDWATCH_PRICES_FILE``: read and checked at start-up, any problem a
:class:`ConfigError` in one sentence that names the setting (format in :mod:`spendwatch.instrumentation.pricing`)."""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.pricing.price import PER_MILLION, Price
from spendwatch.instrumentation.pricing.units import UNITS, Unit

__all__ = ["PRICES_FILE_ENV", "load_overrides"]

PRICES_FILE_ENV = "SPENDWATCH_PRICES_FILE"


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


_REQUIRED_KEYS = ("input_per_mtok", "output_per_mtok")
# Every unit's key (cache_read_per_mtok, cache_write_per_mtok, web_search_per_call, per_request...) -> its unit.
_UNIT_BY_KEY = {unit.override_key: unit for unit in UNITS.values()}
_OPTIONAL_KEYS = tuple(key for key in _UNIT_BY_KEY if key not in _REQUIRED_KEYS)


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
    per_unit = {}
    for key, value in entry.items():
        unit = _UNIT_BY_KEY[key]
        per_unit[unit.name] = _price_value(value, f"{where} {key!r}", label, unit) / unit.override_per
    input_price = per_unit.pop("input_tokens")
    output_price = per_unit.pop("output_tokens")
    cache_read_price = per_unit.pop("cache_read_tokens", input_price)
    return Price(name, source, input_price, output_price, cache_read_price, (), per_unit)


def _dotted_name(name: str, entry: dict) -> str:
    """The name an unquoted ``[models.gpt-4.1]`` meant: TOML reads it as table "1" inside table "gpt-4"."""
    while nested := [key for key, value in entry.items() if isinstance(value, dict)]:
        name, entry = f"{name}.{nested[0]}", entry[nested[0]]
    return name


def _price_value(value: Any, where: str, label: str, unit: Unit) -> float:
    per = "million tokens" if unit.override_per == PER_MILLION else unit.label
    problem = f"{where} must be a non-negative number of USD per {per}"
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
