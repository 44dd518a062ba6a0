"""Specification of the ``/metrics`` collector: a real SQLite ledger, a fresh registry per test, the exposition text
parsed back with prometheus_client's own parser."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.exporter.budgets import BudgetStatus
from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import Ledger, LedgerEntry, open_backend
from spendwatch.exporter.mapping import MAX_LABEL_LENGTH
from spendwatch.instrumentation.records import UsageRecord

CATEGORIES = frozenset({"metabolite_identification"})
USAGE_LABELS = {"provider", "model", "operation", "category"}
EXPECTED_FAMILIES = {
    "llm_cost_usd_total": ("counter", USAGE_LABELS),
    "llm_tokens_total": ("counter", USAGE_LABELS | {"type"}),
    "llm_requests_total": ("counter", USAGE_LABELS | {"outcome"}),
    "llm_unpriced_requests_total": ("counter", {"provider", "model"}),
    "llm_request_duration_seconds": ("histogram", {"provider", "model", "operation"}),
    "llm_budget_limit_usd": ("gauge", {"budget", "period"}),
    "llm_budget_spent_usd": ("gauge", {"budget", "period"}),
    "llm_budget_remaining_usd": ("gauge", {"budget", "period"}),
    "llm_budget_used_ratio": ("gauge", {"budget", "period"}),
    "llm_budget_threshold_ratio": ("gauge", {"budget", "period", "level"}),
    "llm_budget_period_end_timestamp_seconds": ("gauge", {"budget", "period"}),
    "llm_guard_decisions_total": ("counter", {"budget", "action"}),
    "spendwatch_budget_limit_source": ("gauge", {"budget", "period", "source"}),
    "spendwatch_ledger_errors_total": ("counter", set()),
    "spendwatch_records_dropped_total": ("counter", set()),
    "spendwatch_records_quarantined": ("gauge", set()),
    "spendwatch_pricing_data_timestamp_seconds": ("gauge", set()),
}
TZ = ZoneInfo("Europe/Berlin")
DAY_START = datetime(2025, 3, 14, tzinfo=TZ)
THRESHOLDS = {"warning": 0.75, "critical": 0.9, "exceeded": 1.0}
_ids = itertools.count()


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    yield ledger
    ledger.close()


@pytest.fixture
def registry():
    return CollectorRegistry()


def call(**fields) -> UsageRecord:
    defaults = {"provider": "openai", "operation": "chat", "request_model": "gpt-4o-mini", "start_time": 1.74e9}
    return UsageRecord(**(defaults | fields))


def ingest(ledger: Ledger, *records: UsageRecord) -> None:
    ledger.ingest([LedgerEntry(f"entry-{next(_ids)}", record) for record in records])


def scrape(registry: CollectorRegistry) -> dict:
    """{exposed name: family}, keyed by the name on the ``# TYPE`` line (the parser drops counters' ``_total``)."""
    text = generate_latest(registry).decode()
    families = {}
    for family in text_string_to_metric_families(text):
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        families[exposed] = family
    return families


def value(families: dict, sample_name: str, **labels) -> float:
    family_name = sample_name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    matches = [
        sample.value
        for sample in families[family_name].samples
        if sample.name == sample_name and sample.labels == labels
    ]
    assert len(matches) == 1, f"{sample_name}{labels}: {len(matches)} samples"
    return matches[0]


def budget(name="global", period="day", limit=10.0, spent=2.5) -> BudgetStatus:
    return BudgetStatus(name, period, limit, spent, DAY_START, DAY_START + timedelta(days=1), dict(THRESHOLDS))


def test_exposes_exactly_the_design_families_with_their_types(ledger, registry):
    SpendCollector(ledger, pricing_data_timestamp=1.7e9, registry=registry)
    text = generate_latest(registry).decode()
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert types == {name: kind for name, (kind, _) in EXPECTED_FAMILIES.items()}


def test_pricing_data_timestamp_is_left_out_when_unknown(ledger, registry):
    SpendCollector(ledger, registry=registry)
    assert set(scrape(registry)) == set(EXPECTED_FAMILIES) - {"spendwatch_pricing_data_timestamp_seconds"}


def test_every_sample_carries_exactly_the_design_labels(ledger, registry):
    ingest(ledger, call(category="metabolite_identification", cost_usd=0.01, duration_s=0.4), call(cost_usd=None))
    SpendCollector(
        ledger,
        categories=CATEGORIES,
        budget_statuses=lambda: [budget()],
        guard_decisions=lambda: {("global", "block"): 2},
        pricing_data_timestamp=1.7e9,
        registry=registry,
    )
    families = scrape(registry)
    for name, (_, labels) in EXPECTED_FAMILIES.items():
        assert families[name].samples, name
        for sample in families[name].samples:
            expected = labels | {"le"} if sample.name.endswith("_bucket") else labels
            assert set(sample.labels) == expected, sample


def test_counters_sum_the_ledger_totals_per_series(ledger, registry):
    ingest(
        ledger,
        call(input_tokens=100, output_tokens=40, cache_read_tokens=30, reasoning_tokens=10, cost_usd=0.5),
        call(input_tokens=50, output_tokens=10, cost_usd=0.25, outcome="error", error_type="RateLimitError"),
        call(outcome="blocked", cost_usd=0.0),
    )
    SpendCollector(ledger, registry=registry)
    families = scrape(registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat", "category": "other"}
    assert value(families, "llm_cost_usd_total", **series) == 0.75
    tokens = {kind: value(families, "llm_tokens_total", **series, type=kind) for kind in ("input", "output")}
    subsets = {kind: value(families, "llm_tokens_total", **series, type=kind) for kind in ("cache_read", "reasoning")}
    assert (tokens, subsets) == ({"input": 150, "output": 50}, {"cache_read": 30, "reasoning": 10})
    outcomes = {o: value(families, "llm_requests_total", **series, outcome=o) for o in ("success", "error", "blocked")}
    assert outcomes == {"success": 1, "error": 1, "blocked": 1}


def test_cache_writes_and_audio_and_image_tokens_are_token_types_of_their_own(ledger, registry):
    parts = {
        "cache_write_tokens": 70,
        "input_audio_tokens": 20,
        "output_audio_tokens": 15,
        "input_image_tokens": 30,
        "output_image_tokens": 5,
    }
    ingest(ledger, call(input_tokens=100, output_tokens=40, cost_usd=0.5, **parts), call(cache_write_tokens=1))
    SpendCollector(ledger, registry=registry)
    families = scrape(registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat", "category": "other"}
    kinds = ("cache_write", "input_audio", "output_audio", "input_image", "output_image")
    found = {kind: value(families, "llm_tokens_total", **series, type=kind) for kind in kinds}
    assert found == {"cache_write": 71, "input_audio": 20, "output_audio": 15, "input_image": 30, "output_image": 5}


def test_unconfigured_and_missing_categories_become_other_and_are_summed(ledger, registry):
    ingest(
        ledger,
        call(category="metabolite_identification", cost_usd=1.0),
        call(category="unconfigured", cost_usd=2.0),
        call(category=None, cost_usd=4.0),
        call(category='hostile"}\n', cost_usd=8.0),
    )
    SpendCollector(ledger, categories=CATEGORIES, registry=registry)
    cost = {sample.labels["category"]: sample.value for sample in scrape(registry)["llm_cost_usd_total"].samples}
    assert cost == {"metabolite_identification": 1.0, "other": 14.0}


def test_unpriced_requests_are_counted_per_provider_and_model(ledger, registry):
    ingest(
        ledger,
        call(request_model="mystery-model", cost_usd=None, operation="chat"),
        call(
            request_model="mystery-model", cost_usd=None, operation="embeddings", category="metabolite_identification"
        ),
        call(request_model="gpt-4o-mini", cost_usd=0.1),
    )
    SpendCollector(ledger, categories=CATEGORIES, registry=registry)
    unpriced = {s.labels["model"]: s.value for s in scrape(registry)["llm_unpriced_requests_total"].samples}
    assert unpriced == {"mystery-model": 2.0, "gpt-4o-mini": 0.0}


def test_duration_histogram_is_cumulative_and_inf_counts_calls_slower_than_the_largest_bucket(ledger, registry):
    durations = [0.05, 0.3, 0.3, 4.0, 500.0]
    ingest(ledger, *(call(duration_s=d, category=c) for d, c in zip(durations, ["a", "b", "a", "c", "a"], strict=True)))
    SpendCollector(ledger, registry=registry)
    families = scrape(registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat"}
    buckets = {
        s.labels["le"]: s.value for s in families["llm_request_duration_seconds"].samples if s.name.endswith("_bucket")
    }
    assert buckets == {
        "0.1": 1, "0.25": 1, "0.5": 3, "1.0": 3, "2.5": 3, "5.0": 4,
        "10.0": 4, "30.0": 4, "60.0": 4, "120.0": 4, "+Inf": 5,
    }  # fmt: skip
    assert value(families, "llm_request_duration_seconds_count", **series) == 5
    assert value(families, "llm_request_duration_seconds_sum", **series) == pytest.approx(sum(durations))


def test_the_source_of_each_budget_limit_is_a_separate_gauge_so_the_contract_labels_stay(ledger, registry):
    configured = budget("global", "day", limit=10.0)
    overridden = replace(budget("global", "month", limit=75.0), limit_source="runtime", configured_limit_usd=50.0)
    SpendCollector(ledger, budget_statuses=lambda: [configured, overridden], registry=registry)

    families = scrape(registry)

    assert value(families, "spendwatch_budget_limit_source", budget="global", period="day", source="config") == 1
    assert value(families, "spendwatch_budget_limit_source", budget="global", period="month", source="runtime") == 1
    assert len(families["spendwatch_budget_limit_source"].samples) == 2
    assert value(families, "llm_budget_limit_usd", budget="global", period="month") == 75.0


def test_budget_gauges_come_from_budget_statuses(ledger, registry):
    statuses = [budget("global", "day", limit=10.0, spent=2.5), budget("metabolomics", "month", limit=4.0, spent=6.0)]
    SpendCollector(ledger, budget_statuses=lambda: statuses, registry=registry)
    families = scrape(registry)
    day = {"budget": "global", "period": "day"}
    month = {"budget": "metabolomics", "period": "month"}
    assert value(families, "llm_budget_limit_usd", **day) == 10.0
    assert value(families, "llm_budget_spent_usd", **day) == 2.5
    assert value(families, "llm_budget_remaining_usd", **day) == 7.5
    assert value(families, "llm_budget_used_ratio", **day) == 0.25
    assert value(families, "llm_budget_remaining_usd", **month) == -2.0
    assert value(families, "llm_budget_used_ratio", **month) == 1.5
    end = (DAY_START + timedelta(days=1)).timestamp()
    assert value(families, "llm_budget_period_end_timestamp_seconds", **day) == end
    thresholds = families["llm_budget_threshold_ratio"].samples
    levels = {s.labels["level"]: s.value for s in thresholds if s.labels["budget"] == "global"}
    assert levels == THRESHOLDS


def test_guard_decisions_family_is_present_without_samples_by_default(ledger, registry):
    SpendCollector(ledger, registry=registry)
    assert scrape(registry)["llm_guard_decisions_total"].samples == []


def test_guard_decisions_come_from_their_callable(ledger, registry):
    decisions = {("global", "allow"): 7, ("global", "block"): 2}
    SpendCollector(ledger, guard_decisions=lambda: decisions, registry=registry)
    samples = scrape(registry)["llm_guard_decisions_total"].samples
    assert {(s.labels["budget"], s.labels["action"]): s.value for s in samples} == decisions


def test_a_failing_ledger_read_is_counted_and_the_rest_is_still_emitted(ledger, registry):
    SpendCollector(ledger, budget_statuses=lambda: [budget()], ledger_errors=lambda: 3, registry=registry)
    ledger.close()  # every read now raises sqlite3.ProgrammingError
    families = scrape(registry)
    assert families["llm_cost_usd_total"].samples == []
    assert value(families, "llm_budget_limit_usd", budget="global", period="day") == 10.0
    assert value(families, "spendwatch_ledger_errors_total") == 4
    assert value(scrape(registry), "spendwatch_ledger_errors_total") == 5  # a counter: each failed scrape adds one


def test_failing_sources_never_fail_the_scrape(ledger, registry):
    def broken():
        raise RuntimeError("source down")

    SpendCollector(
        ledger,
        budget_statuses=broken,
        guard_decisions=broken,
        ledger_errors=broken,
        before_collect=broken,
        registry=registry,
    )
    families = scrape(registry)
    assert families["llm_budget_limit_usd"].samples == []
    assert value(families, "spendwatch_ledger_errors_total") == 4


def test_ledger_error_counter_does_not_drop_when_its_source_fails_once(ledger, registry):
    answers = iter([5, RuntimeError("hiccup"), 6])

    def reported_errors() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    SpendCollector(ledger, ledger_errors=reported_errors, registry=registry)
    seen = [value(scrape(registry), "spendwatch_ledger_errors_total") for _ in range(3)]
    assert seen == [5, 6, 7]  # the hiccup itself is counted; the reported 5 is kept through it


def test_before_collect_runs_before_the_ledger_is_read(ledger, registry):
    SpendCollector(ledger, before_collect=lambda: ingest(ledger, call(cost_usd=0.5)), registry=registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat", "category": "other"}
    assert value(scrape(registry), "llm_cost_usd_total", **series) == 0.5


def test_hostile_label_values_come_back_sanitised_and_bounded(ledger, registry):
    hostile = 'evil"} 1\n# TYPE x counter\\\x00' + "m" * 1000
    ingest(ledger, call(request_model=hostile, provider="openai\r\n"))
    SpendCollector(ledger, registry=registry)
    (sample,) = scrape(registry)["llm_cost_usd_total"].samples
    assert sample.labels["model"].startswith('evil"} 1_# TYPE x counter\\_mmm')
    assert len(sample.labels["model"]) == MAX_LABEL_LENGTH
    assert sample.labels["provider"] == "openai__"


def test_registering_does_not_read_the_ledger(ledger, registry):
    ledger.close()
    SpendCollector(ledger, registry=registry)  # describe() names the families without a scrape
    assert value(scrape(registry), "spendwatch_ledger_errors_total") == 1


def test_two_collectors_cannot_share_a_registry(ledger, registry):
    SpendCollector(ledger, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        SpendCollector(ledger, registry=registry)


def test_money_is_exposed_to_a_billionth_of_a_dollar_without_float_noise(ledger, registry):
    ingest(ledger, call(cost_usd=0.1), call(cost_usd=0.2), call(cost_usd=0.00013000000000000002))
    statuses = [budget("global", "day", limit=0.3, spent=0.1 + 0.2 + 0.00013000000000000002)]
    SpendCollector(ledger, budget_statuses=lambda: statuses, registry=registry)

    text = generate_latest(registry).decode()

    money = [line for line in text.splitlines() if line.startswith(("llm_cost_usd", "llm_budget_")) and "_usd" in line]
    assert money and not [line for line in money if re.search(r"\.\d{10,}", line)], money  # no 0.30000000000000004
    families = scrape(registry)
    series = {"provider": "openai", "model": "gpt-4o-mini", "operation": "chat", "category": "other"}
    assert value(families, "llm_cost_usd_total", **series) == 0.30013
    assert value(families, "llm_budget_spent_usd", budget="global", period="day") == 0.30013
    assert value(families, "llm_budget_remaining_usd", budget="global", period="day") == -0.00013
