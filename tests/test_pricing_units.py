"""Every unit genai-prices prices for a model: cache writes (5 minutes and 1 hour), audio and image tokens, tool calls,
requests, characters, seconds of audio, context tiers, service tiers, the providers by their semantic-convention
names and the "openai-compatible" price key. Each cost is checked against ``genai_prices.calc_price`` on the same
usage, computed from genai-prices' own data, never against numbers copied from spendwatch."""

from __future__ import annotations

from datetime import UTC, datetime

import genai_prices
import pytest

from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.pricing import PriceTable, load_overrides
from spendwatch.instrumentation.pricing.units import UNITS

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # after every dated price change of the tier variants

# spendwatch's unit names -> genai-prices' usage keys, where they differ.
_GENAI_USAGE_KEY = {
    "web_search_calls": "web_searches",
    "file_search_calls": "storage_searches",
    "code_interpreter_sessions": "code_executions",
    "characters": "input_characters",
    "reasoning_tokens": "output_reasoning_tokens",
}
_GENAI_PROVIDER = {"mistral_ai": "mistral", "x_ai": "x-ai", "gcp.gemini": "google", "aws.bedrock": "aws"}


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable(clock=lambda: NOW)


def reference(model: str, provider: str, usage: dict, service_tier: str | None = None, batch: bool = False) -> float:
    """genai-prices' own cost of ``usage`` (spendwatch's names, tokens and units alike)."""
    context = {"service_tier": service_tier} if service_tier else {}
    if batch:
        context["processing"] = "batch"
    counts = {_GENAI_USAGE_KEY.get(name, name): value for name, value in usage.items() if name != "requests"}
    calculation = genai_prices.calc_price(
        genai_prices.Usage(**counts),
        model,
        provider_id=_GENAI_PROVIDER.get(provider, provider),
        genai_request_timestamp=NOW,
        price_context=context or None,
    )
    return float(calculation.total_price)


_TOKEN_ARGUMENTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
_KEYWORD_TOKENS = ("input_audio_tokens", "output_audio_tokens", "input_image_tokens", "output_image_tokens")


def our_cost(price, usage: dict) -> float:
    """``Price.cost`` of the same usage: the Usage fields as arguments, every other unit in ``units``."""
    positional = [usage.get(name, 0) for name in _TOKEN_ARGUMENTS]
    keywords = {name: usage[name] for name in (*_KEYWORD_TOKENS, "reasoning_tokens") if name in usage}
    units = {name: value for name, value in usage.items() if name not in (*_TOKEN_ARGUMENTS, *keywords)}
    return price.cost(*positional, **keywords, units=units or None)


CASES = [
    # OpenAI bills cache writes at 1.25x input from GPT-5.6 on; tiered by context length, so both sides of 272k.
    ("gpt-5.6-sol", "openai", None, {"input_tokens": 20_000, "output_tokens": 900, "cache_write_tokens": 12_000}),
    ("gpt-5.6-sol", "openai", None, {"input_tokens": 300_000, "output_tokens": 900, "cache_write_tokens": 200_000}),
    (
        "gpt-5.6-terra",
        "openai",
        None,
        {"input_tokens": 50_000, "output_tokens": 10, "cache_read_tokens": 30_000, "cache_write_tokens": 15_000},
    ),
    ("gpt-5.6-sol", "openai", "priority", {"input_tokens": 9_000, "output_tokens": 300, "cache_write_tokens": 4_000}),
    ("gpt-5.6-luna", "openai", "flex", {"input_tokens": 9_000, "output_tokens": 300, "cache_write_tokens": 4_000}),
    # Anthropic: 5-minute writes at 1.25x, the part held for an hour at 2x, tiered above 200k.
    (
        "claude-sonnet-4-5",
        "anthropic",
        None,
        {"input_tokens": 8_000, "output_tokens": 500, "cache_write_tokens": 5_000, "cache_write_1h_tokens": 2_000},
    ),
    (
        "claude-sonnet-4-5",
        "anthropic",
        None,
        {
            "input_tokens": 250_000,
            "output_tokens": 500,
            "cache_read_tokens": 100_000,
            "cache_write_tokens": 50_000,
            "cache_write_1h_tokens": 50_000,
            "web_search_calls": 3,
        },
    ),
    # Audio: gpt-audio's audio tokens cost 13-16x its text tokens.
    (
        "gpt-audio",
        "openai",
        None,
        {"input_tokens": 1_000, "output_tokens": 800, "input_audio_tokens": 700, "output_audio_tokens": 600},
    ),
    ("gpt-4o-transcribe", "openai", None, {"input_tokens": 1_500, "output_tokens": 80, "input_audio_tokens": 1_400}),
    # Image tokens in and out, cached image input.
    (
        "gpt-image-1.5",
        "openai",
        None,
        {
            "input_tokens": 3_000,
            "output_tokens": 4_160,
            "cache_read_tokens": 1_000,
            "input_image_tokens": 2_500,
            "cache_image_read_tokens": 800,
            "output_image_tokens": 4_160,
        },
    ),
    (
        "gemini-2.5-flash-image",
        "gcp.gemini",
        None,
        {"input_tokens": 400, "output_tokens": 1_300, "output_image_tokens": 1_290},
    ),
    # Built-in tools per call.
    (
        "gpt-5.6-sol",
        "openai",
        None,
        {"input_tokens": 5_000, "output_tokens": 700, "web_search_calls": 4, "file_search_calls": 2},
    ),
    ("o3-deep-research", "openai", None, {"input_tokens": 90_000, "output_tokens": 9_000, "web_search_calls": 40}),
    # Per request, per character, per second of audio, reasoning priced on its own.
    ("sonar", "perplexity", None, {"input_tokens": 300, "output_tokens": 200}),
    ("tts-1", "openai", None, {"characters": 1_234}),
    ("whisper-1", "openai", None, {"audio_seconds": 75}),
    (
        "perplexity/sonar-deep-research",
        "openrouter",
        None,
        {"input_tokens": 300, "output_tokens": 5_000, "reasoning_tokens": 4_000, "web_search_calls": 7},
    ),
    # OpenAI-compatible providers by their semantic-convention names.
    ("deepseek-chat", "deepseek", None, {"input_tokens": 3_000, "output_tokens": 500, "cache_read_tokens": 2_000}),
    ("llama-3.3-70b-versatile", "groq", None, {"input_tokens": 3_000, "output_tokens": 500}),
    ("openai/gpt-4o-mini", "openrouter", None, {"input_tokens": 3_000, "output_tokens": 500}),
    ("grok-4", "x_ai", None, {"input_tokens": 3_000, "output_tokens": 500, "cache_read_tokens": 1_000}),
    ("gpt-4o-mini", "openai", None, {"input_tokens": 3_000, "output_tokens": 500, "cache_read_tokens": 1_024}),
]


@pytest.mark.parametrize(("model", "provider", "service_tier", "usage"), CASES)
def test_cost_of_every_unit_matches_genai_prices(table, model, provider, service_tier, usage):
    price = table.lookup(model, provider=provider, service_tier=service_tier)
    assert price is not None
    expected = reference(model, provider, usage, service_tier)
    assert our_cost(price, usage) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_a_batch_call_with_cache_writes_matches_genai_prices(table):
    usage = {"input_tokens": 40_000, "output_tokens": 2_000, "cache_write_tokens": 10_000}
    price = table.lookup("gpt-5.6-sol", batch=True)
    assert our_cost(price, usage) == pytest.approx(reference("gpt-5.6-sol", "openai", usage, batch=True), rel=1e-12)


def test_cache_writes_are_not_priced_as_plain_input(table):
    # What issue 16 measured: priced as input, a GPT-5.6 call that writes the cache came out ~20% too cheap.
    price = table.lookup("gpt-5.6-sol")
    with_writes = price.cost(10_000, 0, 0, 10_000)
    assert with_writes == pytest.approx(1.25 * price.cost(10_000, 0), rel=1e-12)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("deepseek", "deepseek-chat"),
        ("groq", "llama-3.3-70b-versatile"),
        ("mistral_ai", "mistral-large-latest"),
        ("x_ai", "grok-4"),
        ("perplexity", "sonar"),
        ("openrouter", "openai/gpt-4o-mini"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("fireworks", "accounts/fireworks/models/deepseek-v3p2"),
        ("anthropic", "claude-sonnet-4-5"),
        ("gcp.gemini", "gemini-2.5-flash"),
        ("gcp.vertex_ai", "gemini-2.5-flash"),
        ("aws.bedrock", "amazon.nova-pro-v1:0"),
    ],
)
def test_each_semconv_provider_is_priced_by_its_own_list(table, provider, model):
    price = table.lookup(model, provider=provider)
    assert price is not None, table.describe(model, provider=provider)
    usage = {"input_tokens": 2_000, "output_tokens": 300}
    assert our_cost(price, usage) == pytest.approx(reference(model, provider, usage), rel=1e-12)


# --- the openai-compatible price key ------------------------------------------------------------------------------


def test_openai_compatible_is_openai_when_openai_lists_the_model(table):
    assert table.lookup("gpt-4o-mini", provider="openai-compatible") == table.lookup("gpt-4o-mini")


def test_openai_compatible_is_the_one_provider_listing_the_model(table):
    assert table.lookup("deepseek-chat", provider="openai-compatible") == table.lookup(
        "deepseek-chat", provider="deepseek"
    )
    assert "provider deepseek" in table.describe("deepseek-chat", provider="openai-compatible")


def test_openai_compatible_is_unpriced_when_providers_disagree_or_none_lists_it(table):
    # Listed by several providers at different prices: which one the host is cannot be told, so no price is invented.
    assert table.lookup("claude-sonnet-4-5", provider="openai-compatible") is None
    assert "different prices" in table.describe("claude-sonnet-4-5", provider="openai-compatible")
    assert table.lookup("my-local-llama", provider="openai-compatible") is None


def test_free_listed_models_cost_nothing_but_are_priced(table):
    # OpenAI lists moderation without a charge: counted as free, not as unpriced.
    price = table.lookup("moderation")
    assert price is not None and price.cost(1_000, 0) == 0.0


# --- overrides ----------------------------------------------------------------------------------------------------


def test_every_unit_can_be_overridden(tmp_path):
    keys = {unit.override_key: 1 + index for index, unit in enumerate(UNITS.values())}
    (tmp_path / "prices.toml").write_text(
        '[models."m"]\n' + "".join(f"{key} = {value}\n" for key, value in keys.items())
    )
    price = load_overrides(tmp_path / "prices.toml")["m"]
    per_unit = {"input_tokens": price.input, "output_tokens": price.output, "cache_read_tokens": price.cache_read}
    per_unit |= price.per_unit
    assert {UNITS[name].override_key: value * UNITS[name].override_per for name, value in per_unit.items()} == (
        pytest.approx(keys, rel=1e-12)
    )


def test_an_override_prices_cache_writes_tools_and_requests(tmp_path):
    (tmp_path / "prices.toml").write_text(
        '[models."house"]\ninput_per_mtok = 1\noutput_per_mtok = 2\ncache_write_per_mtok = 1.25\n'
        "web_search_per_call = 0.01\nper_request = 0.005\n"
    )
    price = PriceTable(load_overrides(tmp_path / "prices.toml")).lookup("house")
    usd = price.cost(1_000_000, 1_000_000, 0, 400_000, units={"web_search_calls": 3})
    assert usd == pytest.approx(0.6 * 1 + 0.4 * 1.25 + 2 + 3 * 0.01 + 0.005, rel=1e-12)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "cache_write_per_mtok = -1",
            "'cache_write_per_mtok' must be a non-negative number of USD per million tokens, got -1",
        ),
        (
            'web_search_per_call = "cheap"',
            "'web_search_per_call' must be a non-negative number of USD per web search call",
        ),
        ("per_request = true", "'per_request' must be a non-negative number of USD per request, got True"),
    ],
)
def test_a_bad_unit_price_is_one_sentence_naming_the_setting_and_value(tmp_path, line, problem):
    path = tmp_path / "prices.toml"
    path.write_text(f'[models."m"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n{line}\n')
    with pytest.raises(ConfigError) as raised:
        load_overrides(path)
    message = str(raised.value)
    assert f"SPENDWATCH_PRICES_FILE={str(path)!r}: " in message and problem in message
    assert "\n" not in message
