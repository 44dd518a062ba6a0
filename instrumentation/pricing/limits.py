"""What bounds a call's cost besides its price: a model's maximum output tokens, and its family's models.

The maximum output tokens come from ``max_output_tokens.json`` beside this module: LiteLLM's MIT-licensed model
table trimmed to text-generating models (``scripts/vendor_max_output_tokens.py`` regenerates it; the license is in
``max_output_tokens.LICENSE``). A name several providers list keeps the largest value, unless the provider serving
the call lists its own smaller one. Read offline, on first use.

A model's *family* is its name (after any ``provider/`` prefix, lower-cased) up to the first digit, dash, dot,
colon or underscore: ``gpt-4o-mini`` → ``gpt``, ``o3-pro`` → ``o``, ``claude-opus-4-1`` → ``claude``,
``gemini-2.5-pro`` → ``gemini``. Coarse on purpose: the guard prices an unknown model at the dearest known model of
its provider and family, so a wider family only makes the bound safer.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files

from spendwatch.instrumentation.pricing.bundled import provider_models

__all__ = ["family_models", "max_output_tokens", "max_output_source", "model_family"]

# OpenAI and Anthropic snapshot suffixes: "gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022".
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_FAMILY = re.compile(r"[^0-9\-.:_]*")


@functools.cache
def _table() -> dict:
    text = files("spendwatch.instrumentation.pricing").joinpath("max_output_tokens.json").read_text(encoding="utf-8")
    return json.loads(text)


def max_output_source() -> str:
    """Where the maximum output tokens come from, for messages: ``"litellm 1.110.2, ..."``."""
    return _table()["source"]


@functools.lru_cache(maxsize=4096)
def max_output_tokens(model: str, provider: str | None = None) -> int | None:
    """The most output tokens ``model`` can produce in one call, or None when the bundled data does not know it:
    ``provider``'s own limit when the data has one below the largest any provider lists for the name."""
    if not isinstance(model, str) or not model:
        return None
    table = _table()
    own = table["providers"].get(provider, {})
    name = model.rsplit("/", 1)[-1].lower()
    for candidate in (name, _DATE_SUFFIX.sub("", name)):
        limit = own.get(candidate) or table["models"].get(candidate)
        if limit is not None:
            return limit
    return None


def model_family(model: str) -> str:
    """``model``'s family (see the module's docstring); "" when the name starts with a digit or a separator."""
    name = model.rsplit("/", 1)[-1].lower()
    return _FAMILY.match(name).group(0)


@functools.lru_cache(maxsize=256)
def family_models(provider: str, family: str) -> tuple[tuple[str, str], ...]:
    """``(provider, model id)`` of the bundled price data's models of ``provider`` in ``family`` (every model of
    the provider when the family is "")."""
    return tuple(
        (owner, model) for owner, model in provider_models(provider) if not family or model_family(model) == family
    )
