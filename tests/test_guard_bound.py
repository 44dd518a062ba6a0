"""The guard's worst case is a true bound: every price it reserves is checked against genai_prices.calc_price of
the worst usage the request allows, never against numbers from our own code."""

from __future__ import annotations

import re

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data import providers

import spendwatch
from spendwatch.exporter.guard_bound import assumption_notes, worst_case
from spendwatch.exporter.guard_rules import GuardConfig, guard_config
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.openai_sdk.guard_request import price_terms
from spendwatch.instrumentation.pricing import Price, PriceTable
from spendwatch.instrumentation.pricing.limits import max_output_tokens, model_family

PRICES = PriceTable()
DEFAULTS = GuardConfig()


def request(model: str = "gpt-4o-mini", input_tokens: int = 300, output: int | None = 1000, **terms) -> CallRequest:
    provider = terms.pop("provider", "openai")
    return CallRequest(provider, "chat", model, None, input_tokens, output, "max_tokens" if output else None, **terms)


def genai(model: str, provider: str = "openai", context: dict | None = None, **usage) -> float:
    return float(calc_price(Usage(**usage), model, provider_id=provider, price_context=context).total_price)


def test_a_priority_request_is_bounded_at_the_priority_price():
    bound = worst_case(request(service_tier="priority"), PRICES, DEFAULTS)

    priority = genai("gpt-4o-mini", context={"service_tier": "priority"}, input_tokens=300, output_tokens=1000)
    assert bound.usd == pytest.approx(priority)
    assert bound.usd > genai("gpt-4o-mini", input_tokens=300, output_tokens=1000) * 1.5
    assert bound.assumptions == ()


def test_auto_or_no_tier_is_priced_at_the_configured_project_tier():
    standard = genai("gpt-4o-mini", input_tokens=300, output_tokens=1000)
    priority = genai("gpt-4o-mini", context={"service_tier": "priority"}, input_tokens=300, output_tokens=1000)
    project_priority = GuardConfig(auto_service_tier="priority")

    assert worst_case(request(service_tier="auto"), PRICES, DEFAULTS).usd == pytest.approx(standard)
    assert worst_case(request(), PRICES, project_priority).usd == pytest.approx(priority)
    assert worst_case(request(service_tier="auto"), PRICES, project_priority).usd == pytest.approx(priority)


def test_without_a_cap_the_output_is_bounded_by_the_models_maximum_not_an_assumed_4096():
    bound = worst_case(request("gpt-5", output=None), PRICES, DEFAULTS)

    # gpt-5 answers up to 128,000 tokens (reasoning included), as LiteLLM's table says.
    assert max_output_tokens("gpt-5", "openai") == 128_000
    assert bound.usd == pytest.approx(genai("gpt-5", input_tokens=300, output_tokens=128_000))
    assert bound.assumptions == ()


def test_a_model_the_data_has_no_maximum_for_falls_back_to_the_setting_and_says_so():
    prices = PriceTable({"acme-finetune": Price("acme-finetune", "overrides", 1e-6, 4e-6, 1e-6)})

    bound = worst_case(request("acme-finetune", output=None), prices, GuardConfig(max_output_tokens=2000))

    assert bound.usd == pytest.approx(300 * 1e-6 + 2000 * 4e-6)
    (assumed,) = bound.assumptions
    assert "[guard] max_output_tokens = 2000" in assumed and "'acme-finetune'" in assumed


def test_every_input_token_may_be_a_cache_write_at_its_dearest_rate():
    model = "claude-sonnet-4-5"
    bound = worst_case(request(model, provider="anthropic"), PRICES, DEFAULTS)
    without = worst_case(request(model, provider="anthropic", cache_write_possible=False), PRICES, DEFAULTS)

    one_hour = genai(
        model, "anthropic", input_tokens=300, cache_write_tokens=300, cache_write_1h_tokens=300, output_tokens=1000
    )
    assert bound.usd == pytest.approx(one_hour)
    assert without.usd == pytest.approx(genai(model, "anthropic", input_tokens=300, output_tokens=1000))
    assert bound.usd > without.usd


def test_audio_output_is_bounded_at_the_audio_rate():
    bound = worst_case(request("gpt-audio"), PRICES, DEFAULTS)

    assert bound.usd == pytest.approx(
        genai("gpt-audio", input_tokens=300, input_audio_tokens=300, output_tokens=1000, output_audio_tokens=1000)
    )


def test_web_search_is_bounded_by_the_requests_max_tool_calls_with_each_turn_reading_everything_again():
    terms = {"tool_units": ("web_search_calls",), "server_tools": True, "max_tool_calls": 2}
    bound = worst_case(request("gpt-5", **terms), PRICES, DEFAULTS)

    results = DEFAULTS.tool_result_tokens
    turns_input = 3 * (300 + 1000) + results * (1 + 2)  # turns read the input, the output and earlier results
    expected = genai("gpt-5", input_tokens=turns_input, output_tokens=1000, web_searches=2)
    assert bound.usd == pytest.approx(expected)
    assert bound.assumptions == (f"[guard] tool_result_tokens = {results} input tokens per tool result",)


def test_web_search_without_max_tool_calls_assumes_the_setting_and_says_so():
    terms = {"tool_units": ("web_search_calls",), "server_tools": True}
    config = GuardConfig(max_tool_calls=3, tool_result_tokens=1000)

    bound = worst_case(request("gpt-5", **terms), PRICES, config)

    expected = genai("gpt-5", input_tokens=4 * 1300 + 1000 * 6, output_tokens=1000, web_searches=3)
    assert bound.usd == pytest.approx(expected)
    assert any("[guard] max_tool_calls = 3" in assumed for assumed in bound.assumptions)


def test_the_openai_request_says_its_tier_and_the_tools_openai_runs():
    kwargs = {
        "model": "gpt-5",
        "service_tier": "priority",
        "tools": [{"type": "web_search_preview_2025_03_11"}, {"type": "function", "name": "f"}, {"type": "mcp"}],
        "max_tool_calls": 5,
    }
    assert price_terms(kwargs) == {
        "service_tier": "priority",
        "server_tools": True,
        "tool_units": ("web_search_calls",),
        "max_tool_calls": 5,
    }
    assert price_terms({"model": "gpt-5", "tools": [{"type": "function", "name": "f"}]}) == {}
    assert price_terms({"model": "gpt-4o-search-preview", "web_search_options": {}})["tool_units"] == (
        "web_search_calls",
    )


def _dearest_by_genai_prices(provider: str, family: str, usage: dict) -> tuple[str, float]:
    """The most the usage can cost at any model genai-prices lists for the provider whose name starts with the
    family and then a digit, dash or dot."""
    pattern = re.compile(re.escape(family) + r"(?:[0-9\-.:_]|$)")
    (listed,) = [candidate for candidate in providers if candidate.id == provider]
    costs = []
    for model in listed.models:
        if not pattern.match(model.id):
            continue
        try:
            costs.append((float(calc_price(Usage(**usage), model.id, provider_id=provider).total_price), model.id))
        except (LookupError, ValueError):
            continue
    cost, model = max(costs)
    return model, cost


def test_upper_bound_prices_an_unknown_model_at_the_dearest_of_its_provider_and_family():
    config = GuardConfig(unpriced="upper-bound")

    bound = worst_case(request("gpt-9-secret", cache_write_possible=False), PRICES, config)

    _, cost = _dearest_by_genai_prices("openai", "gpt", {"input_tokens": 300, "output_tokens": 1000})
    assert model_family("gpt-9-secret") == "gpt"
    assert bound.usd == pytest.approx(cost)
    chosen = bound.assumed_price.model  # one of the dearest (several may cost the same)
    assert genai(chosen, input_tokens=300, output_tokens=1000) == pytest.approx(cost)
    assert f"priced as {chosen!r}, the dearest 'gpt' model of openai" in bound.assumptions[0]


def test_unpriced_admit_is_unbounded_and_says_so_block_refuses():
    admitted = worst_case(request("gpt-9-secret"), PRICES, GuardConfig(unpriced="admit"))
    assert admitted.usd == 0 and "not bounded" in admitted.assumptions[0]

    with pytest.raises(spendwatch.BudgetExceededError, match="no price for model 'gpt-9-secret'"):
        worst_case(request("gpt-9-secret"), PRICES, GuardConfig(unpriced="block"))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"unpriced": "maybe"}, "guard.unpriced='maybe' in x.toml must be one of admit, upper-bound, block"),
        ({"auto_service_tier": "gold"}, "guard.auto_service_tier='gold' in x.toml must be one of default, priority"),
        ({"max_tool_calls": -1}, "guard.max_tool_calls=-1 in x.toml must be a whole number"),
        ({"tool_result_tokens": 1.5}, "guard.tool_result_tokens=1.5 in x.toml must be a whole number"),
    ],
)
def test_bad_bound_settings_fail_at_start_up(table, problem):
    with pytest.raises(spendwatch.ConfigError, match=re.escape(problem)):
        guard_config(table, "x.toml")


def test_allow_is_still_read_as_admit():
    assert guard_config({"unpriced": "allow"}, "x.toml").unpriced == "admit"


def test_the_notes_say_each_assumption_with_its_setting():
    notes = " / ".join(assumption_notes(GuardConfig(unpriced="upper-bound", max_output_tokens=3000)))

    assert "[guard] max_output_tokens = 3000" in notes
    assert "[guard] max_tool_calls = 4" in notes
    assert "dearest known model of its provider and family" in notes
