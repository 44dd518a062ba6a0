"""Specification of the collector's pure name, label and bucket functions, one table each."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.exporter import mapping as m

ALLOWED = frozenset({"metabolite_identification", "literature_review"})


@pytest.mark.parametrize(
    ("name", "family"),
    [
        (m.COST, "llm_cost_usd"),
        (m.TOKENS, "llm_tokens"),
        (m.GUARD_DECISIONS, "llm_guard_decisions"),
        (m.LEDGER_ERRORS, "spendwatch_ledger_errors"),
        ("already_without_suffix", "already_without_suffix"),
        ("total_requests", "total_requests"),  # only a suffix is stripped
    ],
)
def test_counter_family_name_strips_only_a_trailing_total(name, family):
    assert m.counter_family_name(name) == family


@pytest.mark.parametrize(
    ("category", "label"),
    [
        ("metabolite_identification", "metabolite_identification"),
        ("literature_review", "literature_review"),
        ("", "other"),
        (None, "other"),
        ("unconfigured", "other"),
        ("Metabolite_Identification", "other"),  # exact match only
        ('x"}\n{evil', "other"),
        ("a" * 10_000, "other"),
    ],
)
def test_category_label_keeps_configured_categories_and_bounds_everything_else(category, label):
    assert m.category_label(category, ALLOWED) == label


def test_category_label_with_no_configured_categories_is_always_other():
    assert m.category_label("metabolite_identification", frozenset()) == "other"


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("", ""),
        (None, ""),
        (42, "42"),
        ('quote " and backslash \\ stay', 'quote " and backslash \\ stay'),  # prometheus_client escapes these
        ("new\nline", "new_line"),
        ("nul\x00bell\x07tab\tcr\r", "nul_bell_tab_cr_"),
        ("del\x7fc1\x85", "del_c1_"),
        ("lone surrogate \ud800", "lone surrogate _"),
        ("ünïcödé ✓ 模型", "ünïcödé ✓ 模型"),
        ("m" * 250, "m" * m.MAX_LABEL_LENGTH),
    ],
)
def test_label_value_removes_control_characters_and_caps_length(value, label):
    assert m.label_value(value) == label


@pytest.mark.parametrize(
    "value",
    ['a "quoted" model', "back\\slash", "trailing backslash \\", 'all three: " \\ \n', "{braces},=commas"],
)
def test_prometheus_client_escapes_quotes_backslashes_and_newlines_itself(value):
    registry = CollectorRegistry()

    class OneGauge:
        def collect(self):
            family = GaugeMetricFamily("probe", "a probe", labels=["model"])
            family.add_metric([value], 1.0)
            yield family

    registry.register(OneGauge())
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    assert family.samples[0].labels == {"model": value}


BOUNDS = (0.5, 1.0, 5.0)


@pytest.mark.parametrize(
    ("counts", "total", "buckets"),
    [
        ({}, 0, [("0.5", 0), ("1.0", 0), ("5.0", 0), ("+Inf", 0)]),
        ({0.5: 2, 1.0: 3, 5.0: 1}, 6, [("0.5", 2), ("1.0", 5), ("5.0", 6), ("+Inf", 6)]),
        ({1.0: 4}, 4, [("0.5", 0), ("1.0", 4), ("5.0", 4), ("+Inf", 4)]),
        # two calls slower than the largest bound have no bucket row; +Inf still counts them
        ({0.5: 1}, 3, [("0.5", 1), ("1.0", 1), ("5.0", 1), ("+Inf", 3)]),
        # a total below the bucket sum (a damaged row) never makes +Inf smaller than a finite bucket
        ({0.5: 2}, 1, [("0.5", 2), ("1.0", 2), ("5.0", 2), ("+Inf", 2)]),
        ({5.0: 1, 0.5: 1}, 2, [("0.5", 1), ("1.0", 1), ("5.0", 2), ("+Inf", 2)]),
    ],
)
def test_cumulative_buckets_turn_per_bucket_counts_into_le_buckets(counts, total, buckets):
    assert m.cumulative_buckets(counts, BOUNDS, total) == buckets


def test_cumulative_buckets_sort_unsorted_bounds():
    assert [le for le, _ in m.cumulative_buckets({}, (10.0, 0.1, 2.5), 0)] == ["0.1", "2.5", "10.0", "+Inf"]


@pytest.mark.parametrize(
    ("value", "sample"),
    [(3, 3.0), (0.25, 0.25), (None, 0.0), (math.nan, 0.0), (math.inf, math.inf), ("1.5", 1.5)],
)
def test_sample_value_is_a_float_and_missing_counts_as_zero(value, sample):
    assert m.sample_value(value) == sample


def test_metric_names_are_the_design_contract():
    names = [
        m.COST,
        m.TOKENS,
        m.REQUESTS,
        m.UNPRICED_REQUESTS,
        m.REQUEST_DURATION,
        m.BUDGET_LIMIT,
        m.BUDGET_SPENT,
        m.BUDGET_REMAINING,
        m.BUDGET_USED_RATIO,
        m.BUDGET_THRESHOLD_RATIO,
        m.BUDGET_PERIOD_END,
        m.GUARD_DECISIONS,
        m.LEDGER_ERRORS,
        m.PRICING_DATA_TIMESTAMP,
    ]
    assert names == [
        "llm_cost_usd_total",
        "llm_tokens_total",
        "llm_requests_total",
        "llm_unpriced_requests_total",
        "llm_request_duration_seconds",
        "llm_budget_limit_usd",
        "llm_budget_spent_usd",
        "llm_budget_remaining_usd",
        "llm_budget_used_ratio",
        "llm_budget_threshold_ratio",
        "llm_budget_period_end_timestamp_seconds",
        "llm_guard_decisions_total",
        "spendwatch_ledger_errors_total",
        "spendwatch_pricing_data_timestamp_seconds",
    ]
    assert list(m.TOKEN_TYPES) == [
        "input",
        "output",
        "cache_read",
        "cache_write",
        "reasoning",
        "input_audio",
        "output_audio",
        "input_image",
        "output_image",
    ]
    assert m.OUTCOMES == ("success", "error", "blocked")
