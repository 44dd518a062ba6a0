"""The billed units a :class:`~spendwatch.instrumentation.pricing.Price` prices, by spendwatch's name: what genai-prices
calls each, how many units its price is per, and the key an overrides file sets it with.

Token units are the ``Usage`` fields (``input_tokens``, ``cache_write_tokens``, ...) and, for the finer token kinds no
field carries, keys of ``Usage.units`` (``cache_write_1h_tokens``, ``cache_audio_read_tokens``...). The others are
``Usage.units`` keys counted per call, session, image, second, character or request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = ["GENAI_ALIASES", "UNITS", "Unit", "ancestors"]


@dataclass(frozen=True, slots=True)
class Unit:
    name: str  # spendwatch's name: a Usage field or a Usage.units key
    genai_price_key: str | None  # genai-prices' price key (None: genai-prices has no such price)
    per: int  # genai-prices' price is per this many units (1,000,000 tokens, 1,000 calls, 3,600 seconds)
    override_key: str  # the key an overrides file sets it with
    override_per: int  # ... in USD per this many units
    label: str  # as `spendwatch prices` shows it
    # genai-prices' dimensions: a unit whose dimensions include another's is a part of it (cache_read_tokens of
    # input_tokens), billed at its own price instead of the whole's.
    dimensions: frozenset = frozenset()


def _tokens(name: str, label: str, genai_key: str | None = None, **dimensions: str) -> Unit:
    """A token unit: priced per million, as ``<name>_mtok`` in genai-prices and ``<name>_per_mtok`` in overrides."""
    stem = name.removesuffix("_tokens")
    return Unit(
        name,
        genai_key or f"{stem}_mtok",
        1_000_000,
        f"{stem}_per_mtok",
        1_000_000,
        label,
        frozenset(dimensions.items()),
    )


def _counted(name: str, genai_key: str | None, per: int, override_key: str, label: str) -> Unit:
    """A unit counted per call, session, second...: priced per ``per`` of them in genai-prices, per one here."""
    return Unit(name, genai_key, per, override_key, 1, label, frozenset({("unit", name)}))


_IN = {"family": "tokens", "direction": "input"}
_OUT = {"family": "tokens", "direction": "output"}
_CACHE_READ, _CACHE_WRITE = {"token_type": "cache_read"}, {"token_type": "cache_write"}
_AUDIO, _IMAGE = {"modality": "audio"}, {"modality": "image"}

UNITS: dict[str, Unit] = {
    unit.name: unit
    for unit in (
        _tokens("input_tokens", "input", **_IN),
        _tokens("output_tokens", "output", **_OUT),
        _tokens("cache_read_tokens", "cached input", **_IN, **_CACHE_READ),
        _tokens("cache_write_tokens", "cache write", **_IN, **_CACHE_WRITE),
        _tokens("cache_write_1h_tokens", "cache write (1 hour)", **_IN, **_CACHE_WRITE, cache_ttl="1h"),
        _tokens("input_audio_tokens", "audio input", **_IN, **_AUDIO),
        _tokens("cache_audio_read_tokens", "cached audio input", **_IN, **_AUDIO, **_CACHE_READ),
        _tokens("input_image_tokens", "image input", **_IN, **_IMAGE),
        _tokens("cache_image_read_tokens", "cached image input", **_IN, **_IMAGE, **_CACHE_READ),
        _tokens("output_audio_tokens", "audio output", **_OUT, **_AUDIO),
        _tokens("output_image_tokens", "image output", **_OUT, **_IMAGE),
        _tokens("reasoning_tokens", "reasoning", "output_reasoning_mtok", **_OUT, token_type="reasoning"),
        _counted("web_search_calls", "web_searches_kcount", 1000, "web_search_per_call", "web search call"),
        _counted("file_search_calls", "storage_searches_kcount", 1000, "file_search_per_call", "file search call"),
        _counted(
            "code_interpreter_sessions", "code_executions_kcount", 1000, "code_interpreter_per_session", "code session"
        ),
        _counted("images", None, 1, "per_image", "image"),
        # genai-prices prices audio by the hour, with or without a direction: transcription bills the input audio.
        _counted("audio_seconds", "audio_hours", 3600, "audio_per_second", "second of audio"),
        _counted("characters", "input_mchars", 1_000_000, "per_character", "character"),
        _counted("requests", "requests_kcount", 1000, "per_request", "request"),
    )
}

# genai-prices price keys that stand for one of the units above when the model lists no price under its own key.
GENAI_ALIASES = {"audio_seconds": ("input_audio_hours", "output_audio_hours")}


@functools.cache
def ancestors(name: str) -> tuple[str, ...]:
    """The units ``name`` is a part of (cache_audio_read_tokens: input_tokens, cache_read_tokens,
    input_audio_tokens)."""
    dimensions = UNITS[name].dimensions
    return tuple(other for other, unit in UNITS.items() if other != name and unit.dimensions < dimensions)
