"""Re-pricing on SQLite and PostgreSQL: matching calls only, totals still equal to the calls, originals and the audit
trail kept, budgets and /metrics following at once, and a second run changing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime

import genai_prices
import pytest
from prometheus_client import CollectorRegistry

from spendwatch.exporter import LedgerEntry, load_settings
from spendwatch.exporter.budgets import budget_statuses
from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import TOTAL_KEYS
from spendwatch.exporter.ledger.audit import AUDIT_KEY_ENV, verify
from spendwatch.exporter.ledger.reprice import reprice
from spendwatch.instrumentation.pricing import Price
from spendwatch.instrumentation.records import UsageRecord

DAY = 86400.0
NOON_2026_11_27 = 1795780800.0
NOV_26, NOV_27 = date(2026, 11, 26), date(2026, 11, 27)
CORRECTED = {"gpt-4o-mini": Price("gpt-4o-mini", "file corrected.toml", input=1e-6, output=2e-6, cache_read=0.5e-6)}
CORRECTED_COST = 80 * 1e-6 + 20 * 0.5e-6 + 20 * 2e-6  # 100 input tokens of which 20 cached, 20 output
SCANNED = ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens", "unpriced")


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    monkeypatch.delenv("SPENDWATCH_PRICES_FILE", raising=False)


def usage(model: str = "gpt-4o-mini", cost: float | None = 0.01, days_before: int = 0, **fields) -> UsageRecord:
    values = {"provider": "openai", "operation": "chat", "request_model": model, "input_tokens": 100}
    values |= {"output_tokens": 20, "cache_read_tokens": 20, "cost_usd": cost, "pricing": "genai-prices 0.2.3"}
    values |= {"start_time": NOON_2026_11_27 - days_before * DAY}
    return UsageRecord(**{**values, **fields})


@pytest.fixture
def filled(ledger):
    calls = {
        "mini:25": usage(days_before=2),
        "mini:26": usage(days_before=1),
        "mini:27": usage(category="search"),
        "mini:27-error": usage(cost=0.0, outcome="error", error_type="RateLimitError", pricing="not billed"),
        "mini:27-reported": usage(cost=0.05, pricing="reported"),
        "4o:27": usage("gpt-4o", cost=0.02),
        "private:27": usage("my-private-model", cost=None, pricing="unpriced"),
    }
    ledger.ingest([LedgerEntry(entry_id, record) for entry_id, record in calls.items()])
    return ledger


def costs(ledger) -> dict[str, float | None]:
    return {row["id"]: row["cost_usd"] for row in ledger.table_rows("calls")}


def scan(ledger, *, by_day: bool) -> dict[tuple, list]:
    """What totals (or daily_totals) must hold: sums over the calls rows."""
    keys = ("day", *TOTAL_KEYS) if by_day else TOTAL_KEYS
    sums: dict[tuple, list] = {}
    for row in ledger.table_rows("calls"):
        key, cost, tokens = tuple(row[k] for k in keys), row["cost_usd"], [row[c] for c in SCANNED[1:-1]]
        values = [cost or 0.0, *tokens, int(cost is None)]
        sums[key] = [a + b for a, b in zip(sums.get(key, [0] * len(SCANNED)), values, strict=True)]
    return sums


def stored(rows: list[dict], keys: tuple) -> dict[tuple, list]:
    return {tuple(row[key] for key in keys): [row[column] for column in SCANNED] for row in rows}


def assert_totals_equal_a_scan_of_calls(ledger) -> None:
    daily = ledger.daily_totals(date(2026, 1, 1), date(2027, 1, 1))
    for rows, keys, expected in (
        (ledger.totals(), TOTAL_KEYS, scan(ledger, by_day=False)),
        (daily, ("day", *TOTAL_KEYS), scan(ledger, by_day=True)),
    ):
        actual = stored(rows, keys)
        assert actual.keys() == expected.keys()
        for key, values in actual.items():
            assert values == pytest.approx(expected[key], abs=1e-12), key


def test_only_successful_calls_of_the_model_in_the_date_range_are_repriced(filled):
    before = costs(filled)

    result = reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)

    after = costs(filled)
    assert (result.matched, result.repriced, result.unpriced) == (2, 2, 0)
    assert after["mini:26"] == pytest.approx(CORRECTED_COST) and after["mini:27"] == pytest.approx(CORRECTED_COST)
    unchanged = ("mini:25", "mini:27-error", "mini:27-reported", "4o:27", "private:27")
    assert {call: after[call] for call in unchanged} == {call: before[call] for call in unchanged}
    assert result.difference_usd == pytest.approx(2 * (CORRECTED_COST - 0.01))


def test_an_override_of_the_request_model_beats_the_bundled_price_of_the_response_model(ledger):
    # An Azure deployment: the call asked for "prod-chat"; the response named a snapshot the bundled data prices.
    call = usage("prod-chat", provider="azure.ai.openai", response_model="gpt-4o-2024-11-20")
    ledger.ingest([LedgerEntry("azure:27", call)])
    overrides = {"prod-chat": Price("prod-chat", "file corrected.toml", input=1e-6, output=2e-6, cache_read=0.5e-6)}

    result = reprice(ledger, "prod-chat", NOV_27, NOV_27, overrides=overrides)

    assert (result.matched, result.repriced) == (1, 1)
    assert costs(ledger)["azure:27"] == pytest.approx(CORRECTED_COST)


def test_totals_and_daily_totals_equal_a_scan_of_calls_after_a_reprice(filled):
    reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)

    assert_totals_equal_a_scan_of_calls(filled)


def test_an_unpriced_model_given_a_price_stops_counting_as_unpriced(filled):
    overrides = {"my-private-model": Price("my-private-model", "file corrected.toml", 1e-6, 1e-6, 1e-6)}

    result = reprice(filled, "my-private-model", NOV_27, NOV_27, overrides=overrides)

    assert result.repriced == 1
    assert costs(filled)["private:27"] == pytest.approx(120e-6)
    assert sum(row["unpriced"] for row in filled.totals()) == 0
    assert_totals_equal_a_scan_of_calls(filled)


def test_the_original_costs_are_kept(filled):
    result = reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED, reason="list price was wrong")

    kept = filled.backend.select(
        "SELECT call_id, old_cost_usd, new_cost_usd, old_pricing, new_pricing, event_id FROM repricings ORDER BY id"
    )
    assert [row[0] for row in kept] == ["mini:26", "mini:27"]
    original, corrected = (0.01, "genai-prices 0.2.3"), (pytest.approx(CORRECTED_COST), "file corrected.toml")
    assert [row[1:5] for row in kept] == [(original[0], corrected[0], original[1], corrected[1])] * 2
    assert {row[5] for row in kept} == {result.event_id}


def test_the_audit_trail_still_verifies_and_records_the_repricing(filled):
    reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED, reason="list price was wrong")

    verdict = verify(filled)

    assert verdict.intact, verdict.problem
    assert verdict.kinds == {"call": 7, "event": 1, "reprice": 2}
    (event,) = filled.events("repriced")
    assert '"reason": "list price was wrong"' in event["detail"]


def test_putting_a_repriced_calls_old_cost_back_is_caught(filled):
    reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)
    with filled.backend.transaction() as cursor:
        filled.backend.execute(cursor, "UPDATE calls SET cost_usd = 0.01 WHERE id = 'mini:27'")

    verdict = verify(filled)

    assert (verdict.intact, verdict.bad_seq) == (False, 3)


def test_budgets_and_metrics_reflect_a_reprice(filled):
    settings = load_settings({"daily_budget_usd": 1, "monthly_budget_usd": 10}, environ={})
    registry = CollectorRegistry()
    SpendCollector(filled, registry=registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat", "category": "other"}

    reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)

    day, month = budget_statuses(filled, settings, now=NOON_2026_11_27)
    assert day.spent_usd == pytest.approx(CORRECTED_COST + 0.05 + 0.02)
    assert month.spent_usd == pytest.approx(0.01 + 2 * CORRECTED_COST + 0.05 + 0.02)
    assert registry.get_sample_value("llm_cost_usd_total", series) == pytest.approx(0.01 + 2 * CORRECTED_COST + 0.05)


def test_repricing_twice_changes_nothing_more(filled):
    reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)
    totals, records = filled.totals(), verify(filled).records

    again = reprice(filled, "gpt-4o-mini", NOV_26, NOV_27, overrides=CORRECTED)

    assert (again.matched, again.repriced, again.event_id) == (2, 0, None)
    assert filled.totals() == totals
    assert verify(filled).records == records


def test_the_cli_reprices_with_a_prices_file(filled, ledger_location, tmp_path):
    prices = tmp_path / "corrected.toml"
    prices.write_text(
        '[models."gpt-4o-mini"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\ncache_read_per_mtok = 0.5\n'
    )
    argv = [sys.executable, "-m", "spendwatch.cli", "reprice", "--model", "gpt-4o-mini", "--since", "2026-11-26"]
    argv += ["--until", "2026-11-27", "--prices-file", str(prices), "--reason", "list price was wrong"]

    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "SPENDWATCH_LEDGER": ledger_location}
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("re-priced 2 of 2 successful gpt-4o-mini calls from 2026-11-26 to 2026-11-27")
    assert costs(filled)["mini:27"] == pytest.approx(CORRECTED_COST)
    assert verify(filled).intact


def test_every_unit_the_row_keeps_is_repriced_at_the_calls_tier(ledger):
    # Written priced as plain input at the standard tier (what spendwatch did before it priced cache writes, tools
    # and tiers): the re-pricing recomputes from the row's cache writes, web searches and priority tier.
    parts = {"cache_write_tokens": 40_000, "units": {"web_search_calls": 3}, "service_tier": "priority"}
    call = usage("gpt-5.6-sol", cost=0.05, input_tokens=60_000, output_tokens=900, cache_read_tokens=0, **parts)
    provider_cost = usage("gpt-5.6-sol", cost=0.5, pricing="provider")
    ledger.ingest([LedgerEntry("sol:27", call), LedgerEntry("sol:27-provider", provider_cost)])

    result = reprice(ledger, "gpt-5.6-sol", NOV_27, NOV_27)

    when = datetime.fromtimestamp(NOON_2026_11_27, UTC)
    counts = {"input_tokens": 60_000, "output_tokens": 900, "cache_write_tokens": 40_000, "web_searches": 3}
    expected = genai_prices.calc_price(
        genai_prices.Usage(**counts),
        "gpt-5.6-sol",
        provider_id="openai",
        genai_request_timestamp=when,
        price_context={"service_tier": "priority"},
    )
    assert (result.matched, result.repriced) == (1, 1)
    assert costs(ledger) == {"sol:27": pytest.approx(float(expected.total_price), rel=1e-12), "sol:27-provider": 0.5}
    assert_totals_equal_a_scan_of_calls(ledger)
