"""Specification of spendwatch.instrumentation.pricing: cost arithmetic, lookups, overrides and date-awareness.

Prices read from the bundled data are checked against ``genai_prices.calc_price`` (the slow, exact reference)
rather than hard-coded, except for a few long-stable list prices that make failures readable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime

import genai_prices
import pytest

from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.pricing import Price, PriceTable, load_overrides, price_table_from_env

# After every dated price in genai-prices 0.2.3 (the tier and batch variants start in October 2026).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class MovableClock:
    """A clock a test can move forward, to cross a price's start date inside one PriceTable."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def table() -> PriceTable:
    return PriceTable(clock=lambda: NOW)


def per_million(price: Price) -> tuple[float, float, float]:
    return tuple(round(value * 1_000_000, 9) for value in (price.input, price.cache_read, price.output))


def reference_cost(model, provider, service_tier, batch, input_tokens, output_tokens, cache_read_tokens, when=NOW):
    context = {}
    if service_tier:
        context["service_tier"] = service_tier
    if batch:
        context["processing"] = "batch"
    usage = genai_prices.Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read_tokens
    )
    provider_id = {"azure.ai.openai": "azure"}.get(provider, provider)
    calculation = genai_prices.calc_price(
        usage, model, provider_id=provider_id, genai_request_timestamp=when, price_context=context or None
    )
    return float(calculation.total_price)


# --- Price.cost ---------------------------------------------------------------------------------------------------

FLAT = Price("flat", "test", input=1e-6, output=4e-6, cache_read=0.25e-6)
TIERED = Price("tiered", "test", input=1e-6, output=4e-6, cache_read=0.25e-6, tiers=((1001, 2e-6, 6e-6, 0.5e-6),))


@pytest.mark.parametrize(
    ("price", "input_tokens", "output_tokens", "cache_read_tokens", "expected_usd"),
    [
        pytest.param(FLAT, 0, 0, 0, 0.0, id="no tokens cost nothing"),
        pytest.param(FLAT, 1000, 0, 0, 1000 * 1e-6, id="input at the input price"),
        pytest.param(FLAT, 1000, 200, 0, 1000 * 1e-6 + 200 * 4e-6, id="output at the output price"),
        pytest.param(FLAT, 1000, 0, 800, 200 * 1e-6 + 800 * 0.25e-6, id="cached input at the cached price"),
        # 150 of the 200 output tokens are reasoning: they are output tokens and cost no more or less.
        pytest.param(FLAT, 10, 200, 0, 10 * 1e-6 + 200 * 4e-6, id="reasoning inside output"),
        pytest.param(TIERED, 1000, 10, 100, 900 * 1e-6 + 100 * 0.25e-6 + 10 * 4e-6, id="just below a tier"),
        pytest.param(TIERED, 1001, 10, 101, 900 * 2e-6 + 101 * 0.5e-6 + 10 * 6e-6, id="at a tier threshold"),
        pytest.param(TIERED, 5000, 10, 0, 5000 * 2e-6 + 10 * 6e-6, id="above a tier"),
    ],
)
def test_cost_is_uncached_plus_cached_plus_output(price, input_tokens, output_tokens, cache_read_tokens, expected_usd):
    assert price.cost(input_tokens, output_tokens, cache_read_tokens) == pytest.approx(expected_usd, rel=1e-12)


def test_the_last_tier_reached_wins():
    price = Price("m", "test", 1.0, 1.0, 1.0, tiers=((10, 2.0, 2.0, 2.0), (100, 3.0, 3.0, 3.0)))
    assert [price.cost(tokens, 0) / tokens for tokens in (9, 10, 99, 100, 1000)] == [1.0, 2.0, 2.0, 3.0, 3.0]


# --- lookup against the bundled data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "priced_as", "input_cached_output_per_mtok"),
    [
        pytest.param("gpt-4o-mini", {}, "gpt-4o-mini", (0.15, 0.075, 0.6), id="gpt-4o-mini"),
        pytest.param("gpt-4o-mini-2024-07-18", {}, "gpt-4o-mini", (0.15, 0.075, 0.6), id="dated name"),
        pytest.param("GPT-4o-Mini", {}, "gpt-4o-mini", (0.15, 0.075, 0.6), id="any case"),
        pytest.param("text-embedding-3-small", {}, "text-embedding-3-small", (0.02, 0.02, 0.0), id="embeddings"),
        pytest.param("gpt-3.5-turbo-instruct", {}, "gpt-3.5-turbo-instruct", (1.5, 1.5, 2.0), id="completions"),
        pytest.param(
            "gpt-4o-mini", {"provider": "azure.ai.openai"}, "gpt-4o-mini", (0.15, 0.075, 0.6), id="azure falls back"
        ),
        pytest.param("gpt-5", {"service_tier": "flex"}, "gpt-5", (0.625, 0.0625, 5.0), id="flex tier"),
        pytest.param("gpt-5", {"service_tier": "priority"}, "gpt-5", (2.5, 0.25, 20.0), id="priority tier"),
        pytest.param("gpt-5", {"service_tier": "default"}, "gpt-5", (1.25, 0.125, 10.0), id="default tier"),
        pytest.param("gpt-4o-mini", {"batch": True}, "gpt-4o-mini", (0.075, 0.075, 0.3), id="batch discount"),
    ],
)
def test_lookup_resolves_bundled_prices(table, model, options, priced_as, input_cached_output_per_mtok):
    price = table.lookup(model, **options)
    assert price is not None
    assert price.model == priced_as
    assert price.source == f"genai-prices {genai_prices.__version__}"
    assert per_million(price) == pytest.approx(input_cached_output_per_mtok, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "options"),
    [
        pytest.param("gpt-99-ultra", {}, id="unknown model"),
        pytest.param("gpt-99-ultra", {"provider": "azure.ai.openai"}, id="unknown azure model"),
        pytest.param("gpt-4o-mini", {"provider": "no-such-provider"}, id="unknown provider"),
        pytest.param("mistral-ocr-2503", {"provider": "mistral_ai"}, id="priced only by a unit not counted (pages)"),
        pytest.param("", {}, id="empty name"),
    ],
)
def test_lookup_returns_none_never_a_zero_price(table, model, options):
    assert table.lookup(model, **options) is None


def test_an_unknown_model_stays_unpriced_on_repeated_lookups(table):
    assert [table.lookup("gpt-99-ultra") for _ in range(3)] == [None, None, None]


def test_a_service_tier_without_its_own_price_gets_the_standard_price(table):
    assert table.lookup("gpt-4o-mini", service_tier="flex") == table.lookup("gpt-4o-mini")


USAGES = [(1200, 300, 0), (1200, 300, 1024), (5, 0, 0), (300_000, 2_000, 100_000)]


@pytest.mark.parametrize(
    ("model", "provider", "service_tier", "batch"),
    [
        ("gpt-4o-mini", "openai", None, False),
        ("gpt-4o-mini-2024-07-18", "openai", None, False),
        ("gpt-4o", "openai", "priority", False),
        ("gpt-5", "openai", "flex", False),
        ("gpt-5", "openai", None, True),
        ("gpt-5.4", "openai", None, False),
        ("gpt-5.4", "openai", "flex", False),
        ("gpt-5.4", "openai", "flex", True),
        ("o3", "openai", None, False),
        ("o4-mini", "openai", "flex", False),
        ("text-embedding-3-large", "openai", None, False),
        ("gpt-3.5-turbo-instruct", "openai", None, False),
        ("gpt-4o-mini", "azure.ai.openai", None, False),
        ("gpt-5", "azure.ai.openai", "flex", False),
    ],
)
@pytest.mark.parametrize(("input_tokens", "output_tokens", "cache_read_tokens"), USAGES)
def test_cost_matches_genai_prices_calc_price(
    table, model, provider, service_tier, batch, input_tokens, output_tokens, cache_read_tokens
):
    price = table.lookup(model, provider=provider, service_tier=service_tier, batch=batch)
    expected = reference_cost(model, provider, service_tier, batch, input_tokens, output_tokens, cache_read_tokens)
    assert price.cost(input_tokens, output_tokens, cache_read_tokens) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("input_tokens", [271_999, 272_000, 272_001, 272_002])
def test_tier_threshold_mirrors_genai_prices(table, input_tokens):
    price = table.lookup("gpt-5.4")
    assert price.tiers, "gpt-5.4 is priced in tiers in the bundled data"
    expected = reference_cost("gpt-5.4", "openai", None, False, input_tokens, 1000, 1000)
    assert price.cost(input_tokens, 1000, 1000) == pytest.approx(expected, rel=1e-12)


# --- date-awareness -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "before", "after"),
    [
        # o3's list price fell from $10 to $2 per million input tokens on 2025-06-10.
        pytest.param("o3", {}, datetime(2025, 6, 9, 23, 59, tzinfo=UTC), datetime(2025, 6, 10, tzinfo=UTC), id="o3"),
        # gpt-4o-mini's priority-tier price starts on 2026-10-12 in the data.
        pytest.param(
            "gpt-4o-mini",
            {"service_tier": "priority"},
            datetime(2026, 10, 11, 23, 0, tzinfo=UTC),
            datetime(2026, 10, 12, 0, 0, 1, tzinfo=UTC),
            id="priority variant",
        ),
        # deepseek-chat has an off-peak price from 16:30 to 00:30 UTC: a time-of-day change, not a date.
        pytest.param(
            "deepseek-chat",
            {"provider": "deepseek"},
            datetime(2026, 11, 27, 16, 29, tzinfo=UTC),
            datetime(2026, 11, 27, 16, 31, tzinfo=UTC),
            id="off-peak",
        ),
    ],
)
def test_a_cached_price_is_replaced_when_a_dated_price_starts(model, options, before, after):
    clock = MovableClock(before)
    table = PriceTable(clock=clock)
    price_before = table.lookup(model, **options)
    clock.now = after
    price_after = table.lookup(model, **options)

    assert price_before != price_after
    assert price_before.cost(1000, 100) == pytest.approx(reference_cost(model, **_ref(options), when=before))
    assert price_after.cost(1000, 100) == pytest.approx(reference_cost(model, **_ref(options), when=after))


@pytest.mark.parametrize(
    ("response_model", "request_model"),
    [("o3", "my-o3-alias"), (None, "o3"), ("o3-snapshot-not-in-the-data", "o3")],
    ids=["priced by the response model", "no response model", "unpriced response model"],
)
def test_a_cached_call_price_is_replaced_when_a_dated_price_starts(response_model, request_model):
    # Either name's dated price decides: any cache of call prices must expire with the price it came from.
    before, after = datetime(2025, 6, 9, 23, 59, tzinfo=UTC), datetime(2025, 6, 10, tzinfo=UTC)
    clock = MovableClock(before)
    table = PriceTable(clock=clock)
    price_before = table.lookup_call(response_model, request_model, "openai")
    clock.now = after
    price_after = table.lookup_call(response_model, request_model, "openai")

    assert price_before.cost(1000, 100) == pytest.approx(reference_cost("o3", **_ref({}), when=before))
    assert price_after.cost(1000, 100) == pytest.approx(reference_cost("o3", **_ref({}), when=after))


def _ref(options: dict) -> dict:
    return {
        "provider": options.get("provider", "openai"),
        "service_tier": options.get("service_tier"),
        "batch": options.get("batch", False),
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 0,
    }


def test_describe_says_until_when_a_price_holds():
    table = PriceTable(clock=lambda: datetime(2025, 6, 1, tzinfo=UTC))
    assert "valid until: 2025-06-10 00:00 UTC" in table.describe("o3")


# --- overrides ----------------------------------------------------------------------------------------------------


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


OVERRIDES_TOML = """
[models."gpt-4o-mini"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."My-Finetune"]
input_per_mtok = 3
output_per_mtok = 4.5
cache_read_per_mtok = 0.5
"""


@pytest.fixture
def overrides_file(tmp_path):
    return write(tmp_path, "prices.toml", OVERRIDES_TOML)


@pytest.mark.parametrize(
    ("model", "options", "input_cached_output_per_mtok"),
    [
        pytest.param("gpt-4o-mini", {}, (1.0, 1.0, 2.0), id="beats bundled data, cached defaults to input"),
        pytest.param("gpt-4o-mini-2024-07-18", {}, (1.0, 1.0, 2.0), id="dated name with dashes"),
        pytest.param("gpt-4o-mini-20240718", {}, (1.0, 1.0, 2.0), id="dated name compact"),
        pytest.param("gpt-4o-mini", {"provider": "azure.ai.openai", "batch": True}, (1.0, 1.0, 2.0), id="any mode"),
        pytest.param("my-finetune", {}, (3.0, 0.5, 4.5), id="case-insensitive name"),
    ],
)
def test_overrides_win(overrides_file, model, options, input_cached_output_per_mtok):
    price = PriceTable(load_overrides(overrides_file), clock=lambda: NOW).lookup(model, **options)
    assert per_million(price) == pytest.approx(input_cached_output_per_mtok)
    assert price.source == f"file {overrides_file}"


def test_overrides_leave_other_models_to_the_bundled_data(overrides_file):
    price = PriceTable(load_overrides(overrides_file), clock=lambda: NOW).lookup("gpt-4o")
    assert price.source.startswith("genai-prices ")


def test_overrides_do_not_match_other_suffixes(overrides_file):
    # "gpt-4o-mini-tts" is a different model, not a dated snapshot of "gpt-4o-mini".
    price = PriceTable(load_overrides(overrides_file), clock=lambda: NOW).lookup("gpt-4o-mini-tts")
    assert price is None or price.source.startswith("genai-prices ")


def test_overrides_read_json_with_the_same_structure(tmp_path):
    path = write(tmp_path, "prices.json", json.dumps({"models": {"x": {"input_per_mtok": 1, "output_per_mtok": 2}}}))
    assert per_million(load_overrides(path)["x"]) == (1.0, 1.0, 2.0)


@pytest.mark.parametrize(
    ("environ", "expected_source"),
    [
        pytest.param({}, "genai-prices", id="variable absent"),
        pytest.param({"SPENDWATCH_PRICES_FILE": ""}, "genai-prices", id="variable empty"),
        pytest.param({"SPENDWATCH_PRICES_FILE": "{path}"}, "file ", id="variable set"),
    ],
)
def test_price_table_from_env(overrides_file, environ, expected_source):
    environ = {key: value.format(path=overrides_file) for key, value in environ.items()}
    assert price_table_from_env(environ).lookup("gpt-4o-mini").source.startswith(expected_source)


# --- a call's two names: the response model (what was billed) and the request model (what the user chose) ---------

DEPLOYMENT = Price("prod-chat", "file overrides", input=1e-6, output=2e-6, cache_read=1e-6)
SNAPSHOT = Price("my-ft", "file overrides", input=3e-6, output=4e-6, cache_read=3e-6)


@pytest.mark.parametrize(
    ("response_model", "request_model", "priced_as"),
    [
        pytest.param("gpt-4o-2024-11-20", "prod-chat", DEPLOYMENT, id="request override beats bundled response"),
        pytest.param("my-ft-2025-01-01", "prod-chat", SNAPSHOT, id="response override beats request override"),
        pytest.param("not-in-data", "prod-chat", DEPLOYMENT, id="request override for an unknown response"),
        pytest.param(None, "prod-chat", DEPLOYMENT, id="request override without a response model"),
        pytest.param("gpt-4o-mini-2024-07-18", "gpt-4o", "gpt-4o-mini", id="no override: bundled response first"),
        pytest.param("not-in-data", "gpt-4o", "gpt-4o", id="no override: bundled request for an unknown response"),
        pytest.param(None, "gpt-4o", "gpt-4o", id="no override: bundled request without a response model"),
        pytest.param("not-in-data", "also-not-in-data", None, id="neither priced: unpriced"),
    ],
)
def test_a_call_is_priced_by_an_override_of_either_name_then_the_bundled_response_then_request_model(
    response_model, request_model, priced_as
):
    table = PriceTable({"prod-chat": DEPLOYMENT, "my-ft": SNAPSHOT}, clock=lambda: NOW)

    price = table.lookup_call(response_model, request_model, "openai")

    expected = PriceTable(clock=lambda: NOW).lookup(priced_as) if isinstance(priced_as, str) else priced_as
    assert price == expected


@pytest.mark.parametrize("options", [{"service_tier": "priority"}, {"batch": True}], ids=["priority", "batch"])
def test_a_call_is_priced_at_its_service_tier_and_batch_mode(table, options):
    price = table.lookup_call("gpt-4o-2024-11-20", "gpt-4o", "openai", **options)

    assert price == table.lookup("gpt-4o-2024-11-20", **options) != table.lookup("gpt-4o-2024-11-20")


MALFORMED = [
    ("prices.toml", "[models.x\ninput_per_mtok = 1", "not valid TOML"),
    ("prices.json", '{"models": ', "not valid JSON"),
    ("prices.toml", b"\xff\xfe", "not valid TOML"),
    ("prices.toml", "", "expected a [models] table"),
    ("prices.json", "[]", "expected a [models] table"),
    ("prices.toml", 'models = "gpt"', "'models' must be a table"),
    ("prices.toml", "extra = 1\n[models.x]\ninput_per_mtok = 1\noutput_per_mtok = 1", "unknown top-level key 'extra'"),
    ("prices.toml", "[models]\nx = 1", "must be a table"),
    ("prices.toml", "[models.x]\ninput_per_mtok = 1\noutput_per_mtok = 1\ninput = 2", "unknown key 'input'"),
    ("prices.toml", "[models.x]\noutput_per_mtok = 1", "missing the required key 'input_per_mtok'"),
    ("prices.toml", "[models.x]\ninput_per_mtok = 1", "missing the required key 'output_per_mtok'"),
    ("prices.toml", "[models.x]\ninput_per_mtok = -1\noutput_per_mtok = 1", "got -1"),
    ("prices.toml", "[models.x]\ninput_per_mtok = 'abc'\noutput_per_mtok = 1", "got 'abc'"),
    ("prices.toml", "[models.x]\ninput_per_mtok = true\noutput_per_mtok = 1", "got True"),
    ("prices.toml", "[models.x]\ninput_per_mtok = nan\noutput_per_mtok = 1", "got nan"),
    ("prices.toml", "[models.x]\ninput_per_mtok = 1\noutput_per_mtok = inf", "got inf"),
    ("prices.toml", "[models.x]\ninput_per_mtok = 1\noutput_per_mtok = 1\ncache_read_per_mtok = -0.5", "got -0.5"),
    ("prices.json", '{"models": {"x": {"input_per_mtok": NaN, "output_per_mtok": 1}}}', "got nan"),
    ("prices.json", '{"models": {"x": {"input_per_mtok": null, "output_per_mtok": 1}}}', "got None"),
    ("prices.json", '{"models": {"X": {"input_per_mtok": 1, "output_per_mtok": 1}, "x": {}}}', "listed twice"),
    ("prices.toml", '[models.""]\ninput_per_mtok = 1\noutput_per_mtok = 1', "model name is empty"),
    ("prices.toml", '[models."gpt-4o "]\ninput_per_mtok = 1\noutput_per_mtok = 1', "starts or ends with spaces"),
    ("prices.toml", "[models.gpt-4.1]\ninput_per_mtok = 1\noutput_per_mtok = 1", """e.g. [models."gpt-4.1"]"""),
    ("prices.toml", "[models.a.b.c]\ninput_per_mtok = 1\noutput_per_mtok = 1", """e.g. [models."a.b.c"]"""),
    # JSON names are written whole: a nested object is a wrong entry, never an unquoted dot.
    ("prices.json", '{"models": {"x": {"input_per_mtok": 1, "tiers": {}}}}', "object under 'tiers': a model's entry"),
    ("prices.json", '{"models": {"x": {"output_per_mtok": 1}}}', """model "x" is missing the required key"""),
    ("prices.toml", f"[models.x]\ninput_per_mtok = 1{'0' * 400}\noutput_per_mtok = 1", "got an integer of 401 digits"),
    ("prices.json", f'{{"models": {{"x": {{"input_per_mtok": 1, "output_per_mtok": -1{"0" * 400}}}}}}}', "401 digits"),
]


@pytest.mark.parametrize(("name", "content", "problem"), MALFORMED, ids=[case[2] for case in MALFORMED])
def test_a_malformed_overrides_file_is_a_config_error(tmp_path, name, content, problem):
    path = write(tmp_path, name, content)
    with pytest.raises(ConfigError) as raised:
        load_overrides(path)
    assert_names_file_and_problem(raised.value, path, problem)


def test_an_overrides_file_starting_with_a_byte_order_mark_is_read(tmp_path):
    # Notepad and other Windows editors save UTF-8 with a BOM.
    path = write(tmp_path, "prices.toml", "\ufeff" + OVERRIDES_TOML)

    assert "gpt-4o-mini" in load_overrides(path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_overrides_file_is_a_config_error(tmp_path, kind):
    path = tmp_path / "prices.toml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as raised:
        price_table_from_env({"SPENDWATCH_PRICES_FILE": str(path)})
    assert_names_file_and_problem(raised.value, path, "cannot read the file")


def assert_names_file_and_problem(error: ConfigError, path, problem: str) -> None:
    assert error.message.startswith(f"SPENDWATCH_PRICES_FILE={str(path)!r}: ")
    assert problem in error.message
    assert "\n" not in error.message


# --- the table itself ---------------------------------------------------------------------------------------------


def test_data_version_and_timestamp_describe_the_bundled_data(table):
    assert table.data_version == f"genai-prices {genai_prices.__version__}"
    assert 1.6e9 < table.data_timestamp <= datetime.now(UTC).timestamp()


def test_importing_pricing_does_not_load_the_price_data():
    code = "import sys, spendwatch.instrumentation.pricing; print('genai_prices' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_concurrent_lookups_agree(table):
    results = []

    def look_up() -> None:
        results.extend(table.lookup(model) for model in ("gpt-4o-mini", "o3", "gpt-99-ultra") * 50)

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {price.model if price else None for price in results} == {"gpt-4o-mini", "o3", None}
    assert len({price for price in results if price and price.model == "o3"}) == 1


@pytest.mark.parametrize(
    ("options", "expected_lines"),
    [
        pytest.param({}, ["priced as 'gpt-5.4'", "input $2.5", "from 272,001 input tokens", "variant: standard"]),
        pytest.param({"service_tier": "flex"}, ["input $1.25", "variant: service_tier=flex"], id="flex"),
        pytest.param({"provider": "azure.ai.openai"}, ["using openai's"], id="azure"),
    ],
)
def test_describe_names_prices_source_and_variant(table, options, expected_lines):
    text = table.describe("gpt-5.4", **options)
    for expected in [f"source: genai-prices {genai_prices.__version__}", *expected_lines]:
        assert expected in text


def test_describe_an_unknown_model_says_unpriced_not_free(table):
    text = table.describe("gpt-99-ultra")
    assert "unpriced" in text and "not as free" in text
