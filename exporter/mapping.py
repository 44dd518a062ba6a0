"""Pure name, label and bucket functions for the ``/metrics`` collector; no I/O, no state.

The metric names here are the contract in DESIGN.md ("Prometheus metrics"): dashboards and alert rules depend on
them, so they are spelled out as they appear in the exposition. Counter names keep their ``_total``;
:func:`counter_family_name` strips it for ``CounterMetricFamily``, which appends it again itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from prometheus_client.utils import floatToGoString

__all__ = [
    "COST",
    "TOKENS",
    "REQUESTS",
    "UNPRICED_REQUESTS",
    "REQUEST_DURATION",
    "BUDGET_LIMIT",
    "BUDGET_SPENT",
    "BUDGET_REMAINING",
    "BUDGET_USED_RATIO",
    "BUDGET_THRESHOLD_RATIO",
    "BUDGET_PERIOD_END",
    "BUDGET_LIMIT_SOURCE",
    "GUARD_DECISIONS",
    "printable",
    "LEDGER_ERRORS",
    "RECORDS_DROPPED",
    "RECORDS_QUARANTINED",
    "PRICING_DATA_TIMESTAMP",
    "OTHER_CATEGORY",
    "MAX_LABEL_LENGTH",
    "TOKEN_TYPES",
    "OUTCOMES",
    "counter_family_name",
    "category_label",
    "label_value",
    "cumulative_buckets",
    "sample_value",
]

COST = "llm_cost_usd_total"
TOKENS = "llm_tokens_total"
REQUESTS = "llm_requests_total"
UNPRICED_REQUESTS = "llm_unpriced_requests_total"
REQUEST_DURATION = "llm_request_duration_seconds"
BUDGET_LIMIT = "llm_budget_limit_usd"
BUDGET_SPENT = "llm_budget_spent_usd"
BUDGET_REMAINING = "llm_budget_remaining_usd"
BUDGET_USED_RATIO = "llm_budget_used_ratio"
BUDGET_THRESHOLD_RATIO = "llm_budget_threshold_ratio"
BUDGET_PERIOD_END = "llm_budget_period_end_timestamp_seconds"
GUARD_DECISIONS = "llm_guard_decisions_total"
# Not in the contract table: which limit llm_budget_limit_usd shows, as a 1-valued series per budget and period with
# source="config" or "runtime" (see budgets.LIMIT_SOURCES), so the contract's labels stay as they are.
BUDGET_LIMIT_SOURCE = "spendwatch_budget_limit_source"
LEDGER_ERRORS = "spendwatch_ledger_errors_total"
# Usage records lost because no journal file could be written and the memory queue was full (issue 20).
RECORDS_DROPPED = "spendwatch_records_dropped_total"
# Records the ledger refused by value, waiting in the journal directories' quarantine files (issue 20).
RECORDS_QUARANTINED = "spendwatch_records_quarantined"
PRICING_DATA_TIMESTAMP = "spendwatch_pricing_data_timestamp_seconds"

OTHER_CATEGORY = "other"
# Long enough for any real model or budget name; short enough that a hostile one cannot bloat every scrape.
MAX_LABEL_LENGTH = 200

# llm_tokens_total's `type` label -> the ledger totals column it reads. Every type but input and output is a subset of
# one of them (DESIGN.md), so a dashboard never adds them on top.
TOKEN_TYPES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
    "input_audio": "input_audio_tokens",
    "output_audio": "output_audio_tokens",
    "input_image": "input_image_tokens",
    "output_image": "output_image_tokens",
}
# llm_requests_total's `outcome` label; the ledger totals column has the same name.
OUTCOMES = ("success", "error", "blocked")

# C0/C1 control characters and lone surrogates: prometheus_client escapes only \\, \n and ", and a surrogate would
# make its UTF-8 encoding of the whole scrape fail.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str, limit: int = 200) -> str:
    """Text a terminal shows as text: control characters (escape sequences, newlines) and lone surrogates become
    ``?``, and it is cut at ``limit`` characters, so a hostile model or category name cannot rewrite or stretch a
    table."""
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def counter_family_name(name: str) -> str:
    """The family name to give ``CounterMetricFamily`` for an exposed counter name (it adds ``_total`` back)."""
    return name.removesuffix("_total")


def category_label(category: str | None, allowed: frozenset[str]) -> str:
    """A configured category as itself; anything else (none, unknown, hostile) as ``other``, bounding the series."""
    return category if category and category in allowed else OTHER_CATEGORY


def label_value(value: object) -> str:
    """A label value that cannot break or bloat the exposition: control characters become ``_``, length is capped."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub("_", text[:MAX_LABEL_LENGTH])


def cumulative_buckets(
    counts_by_bound: Mapping[float, float], bounds: Iterable[float], total_count: float
) -> list[tuple[str, float]]:
    """Per-bucket counts (each call counted once, in the first bucket it fits) as Prometheus ``le`` buckets.

    Each bucket counts every observation at or below its bound, and ``+Inf`` counts them all: ``total_count``,
    which also covers calls slower than the largest bound (the ledger keeps no bucket row for those).
    """
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in sorted(bounds):
        running += counts_by_bound.get(bound, 0)
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", max(float(total_count), running)))
    return buckets


def sample_value(value: object) -> float:
    """A ledger total as a sample value: a float whatever the backend returned, and a missing or NaN one as 0."""
    number = 0.0 if value is None else float(value)
    return 0.0 if math.isnan(number) else number
