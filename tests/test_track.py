"""spendwatch.track(): calls no instrumentor covers get the same span, ledger row, metrics and guard."""

from __future__ import annotations

import asyncio

import pytest

import spendwatch
from spendwatch import runtime, tracking
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable


@pytest.fixture
def attached(tmp_path, monkeypatch, tracer_provider, span_exporter):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    from opentelemetry.sdk.metrics import MeterProvider

    monkeypatch.setattr(tracking, "_recorder", None)
    monkeypatch.setattr(tracking, "get_tracer", lambda name: tracer_provider.get_tracer(name))
    monkeypatch.setattr(tracking, "get_meter", lambda name: MeterProvider().get_meter(name))
    settings = {"ledger": str(tmp_path / "ledger.db"), "metrics_address": "off", "categories": "genomics"}
    yield lambda **more: spendwatch.configure(**{**settings, **more})
    runtime.detach()
    OpenAIInstrumentor().uninstrument()


def test_tracked_call_is_priced_from_its_tokens_and_lands_in_the_ledger(attached, span_exporter):
    attachment = attached()

    with spendwatch.track("chat", model="gpt-4o-mini", category="genomics") as op:
        op.set_tokens(input=1000, output=200, cache_read=400)

    (span,) = span_exporter.get_finished_spans()
    expected = PriceTable().lookup("gpt-4o-mini").cost(1000, 200, 400)
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["gen_ai.usage.cost"] == pytest.approx(expected)
    assert span.attributes["spendwatch.category"] == "genomics"
    attachment.sink.flush()
    (total,) = attachment.ledger.totals()
    assert (total["category"], total["success"]) == ("genomics", 1)
    assert total["cost_usd"] == pytest.approx(expected)


def test_cached_tokens_above_input_are_never_priced_below_zero(attached, span_exporter):
    # The same rule as for a provider's inconsistent usage: the whole is raised to its part, and flagged.
    attached()

    with spendwatch.track("chat", model="gpt-4o-mini") as op:
        op.set_tokens(input=10, output=5, cache_read=100)

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.usage.input_tokens"] == 100
    assert span.attributes["spendwatch.cost.estimated"] is True
    assert span.attributes["gen_ai.usage.cost"] == pytest.approx(PriceTable().lookup("gpt-4o-mini").cost(100, 5, 100))


def test_calls_tracked_after_configure_are_priced_by_its_prices_file_even_if_track_ran_before(
    attached, span_exporter, tmp_path
):
    with spendwatch.track("chat", model="gpt-4o-mini") as op:  # before configure(): the bundled prices
        op.set_tokens(input=10, output=5)
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."gpt-4o-mini"]\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n')
    attached(prices_file=str(prices_file))

    with spendwatch.track("chat", model="gpt-4o-mini") as op:
        op.set_tokens(input=10, output=5)

    before, after = span_exporter.get_finished_spans()
    assert before.attributes["spendwatch.pricing"].startswith("genai-prices")
    assert after.attributes["spendwatch.pricing"] == f"file {prices_file}"
    assert after.attributes["gen_ai.usage.cost"] == pytest.approx(15)


def test_a_reported_cost_wins_over_pricing(attached, span_exporter):
    attached()

    with spendwatch.track("chat", model="claude-sonnet-4", provider="anthropic") as op:
        op.set_tokens(input=10, output=10)
        op.set_cost(0.25)

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.usage.cost"] == 0.25
    assert span.attributes["spendwatch.pricing"] == "reported"
    assert span.attributes["gen_ai.provider.name"] == "anthropic"


def test_the_span_shows_the_cost_to_a_billionth_of_a_dollar_and_the_ledger_keeps_it_unrounded(attached, span_exporter):
    attachment = attached()

    with spendwatch.track("chat", model="claude-sonnet-4", provider="anthropic") as op:
        op.set_cost(0.1 + 0.2)  # 0.30000000000000004

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.usage.cost"] == span.attributes["gen_ai.usage.cost.amount"] == 0.3
    attachment.sink.flush()
    (total,) = attachment.ledger.totals()
    assert total["cost_usd"] == 0.1 + 0.2


def test_an_exception_is_recorded_and_reraised_unchanged(attached, span_exporter):
    attachment = attached()

    with pytest.raises(KeyError) as raised, spendwatch.track("chat", model="gpt-4o-mini"):
        raise KeyError("boom")

    assert raised.value.args == ("boom",)
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["error.type"] == "KeyError"
    attachment.sink.flush()
    assert attachment.ledger.totals()[0]["error"] == 1


def test_set_error_records_a_failure_without_raising(attached, span_exporter):
    attached()

    with spendwatch.track("chat", model="gpt-4o-mini") as op:
        op.set_error("RateLimitError", "slow down")

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["error.type"] == "RateLimitError"
    assert "slow down" not in span.to_json()


def test_a_batch_counts_every_call_in_it(attached):
    attachment = attached()

    with spendwatch.track("embeddings", model="text-embedding-3-small") as op:
        op.record_batch(100, successes=97, errors=3, input=50_000, cost_usd=0.001)

    attachment.sink.flush()
    (total,) = attachment.ledger.totals()
    assert (total["success"], total["error"], total["input_tokens"]) == (97, 3, 50_000)
    assert total["cost_usd"] == pytest.approx(0.001)


def test_a_batch_that_does_not_add_up_is_refused(attached):
    attached()
    with pytest.raises(ValueError, match="cannot have"), spendwatch.track("chat", model="gpt-4o-mini") as op:
        op.record_batch(10, successes=5, errors=1)


def test_track_decorates_sync_and_async_functions(attached, span_exporter):
    attached()

    @spendwatch.track("chat", model="gpt-4o-mini")
    def summarise(text: str) -> str:
        return text.upper()

    @spendwatch.track("chat", model="gpt-4o-mini")
    async def summarise_async(text: str) -> str:
        await asyncio.sleep(0)
        return text.lower()

    assert summarise("a") == "A"
    assert asyncio.run(summarise_async("B")) == "b"
    assert len(span_exporter.get_finished_spans()) == 2


def test_the_guard_refuses_a_tracked_call_that_could_break_the_budget(attached):
    attachment = attached(enforce="block", daily_budget_usd=0.001)

    with (
        pytest.raises(spendwatch.BudgetExceededError),
        spendwatch.track("chat", model="gpt-4o", estimated_input_tokens=10_000, max_output_tokens=10_000),
    ):
        pytest.fail("the block must not run")

    attachment.sink.flush()
    assert attachment.ledger.totals()[0]["blocked"] == 1


def test_a_bad_category_is_recorded_as_other(attached, span_exporter):
    attached()

    with spendwatch.track("chat", model="gpt-4o-mini", category="no spaces; or DROP TABLE") as op:
        op.set_tokens(input=1)

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["spendwatch.category"] == "other"
