"""spendwatch.configure() end to end: real SDK → stub → instrumentation → journal → ledger → /metrics and budgets."""

from __future__ import annotations

import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import spendwatch
from spendwatch import runtime
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import FAKE_API_KEY

MESSAGES = [{"role": "user", "content": "What does this cost per day?"}]


@pytest.fixture
def attach(tmp_path, monkeypatch):
    """configure() with a ledger in tmp_path and /metrics on an ephemeral port; detached afterwards."""
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)

    def configure(**settings):
        defaults = {"ledger": str(tmp_path / "ledger.db"), "metrics_address": "127.0.0.1:0"}
        return spendwatch.configure(**{**defaults, **settings})

    yield configure
    runtime.detach()
    OpenAIInstrumentor().uninstrument()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def priced_total(stub, model: str) -> float:
    price = PriceTable().lookup(model)
    return sum(price.cost(u.input_tokens, u.output_tokens, u.cached_tokens) for u in stub.usage_log)


def test_spend_on_metrics_equals_the_sum_of_the_calls_prices(attach, stub):
    attached = attach(daily_budget_usd=0.01, monthly_budget_usd=1.0, categories="genomics")
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)
    with spendwatch.category("genomics"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    metrics = scrape(attached.metrics_server.url)

    expected = priced_total(stub, "gpt-4o-mini")
    day = (("budget", "global"), ("period", "day"))
    assert metrics[("llm_budget_spent_usd", day)] == pytest.approx(expected, rel=1e-9)
    assert metrics[("llm_budget_limit_usd", day)] == 0.01
    assert metrics[("llm_budget_used_ratio", day)] == pytest.approx(expected / 0.01, rel=1e-9)
    series = (("category", "genomics"), ("model", "gpt-4o-mini"), ("operation", "chat"), ("provider", "openai"))
    assert metrics[("llm_requests_total", (*series[:3], ("outcome", "success"), series[3]))] == 3
    other = (("category", "other"), *series[1:])
    assert metrics[("llm_cost_usd_total", series)] + metrics[("llm_cost_usd_total", other)] == pytest.approx(expected)


def test_the_days_spend_is_still_there_after_a_restart(attach, stub, tmp_path):
    attach(daily_budget_usd=5)
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)
    client.embeddings.create(model="text-embedding-3-small", input="a long abstract")
    runtime.detach()

    restarted = attach(daily_budget_usd=5)

    (day,) = [status for status in restarted.budget_statuses() if status.period == "day"]
    assert day.spent_usd == pytest.approx(priced_total(stub, "text-embedding-3-small"), rel=1e-9)


def test_configure_twice_attaches_once(attach, stub):
    first = attach()
    second = spendwatch.configure()
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    first.sink.flush()

    assert second is first
    assert first.ledger.call_count() == 1


def test_budgets_api_changes_a_limit_at_run_time(attach):
    attach(daily_budget_usd=5)

    spendwatch.budgets().set_limit("global", "day", 7.5, reason="conference week")

    assert spendwatch.budgets().get("global", "day").limit_usd == 7.5
    assert runtime.current().ledger.events("budget_limit_changed")


def test_bad_configuration_names_the_setting(attach):
    with pytest.raises(spendwatch.ConfigError, match="SPENDWATCH_ENFORCE|enforce"):
        attach(enforce="sometimes")
