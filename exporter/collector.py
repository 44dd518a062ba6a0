"""The ``/metrics`` view over the ledger: a prometheus_client custom collector, built fresh on every scrape.

Usage::

    registry = CollectorRegistry()
    SpendCollector(ledger, categories=settings.categories, budget_statuses=lambda: budget_statuses(ledger, settings),
                   registry=registry)
    start_metrics_server(registry, settings.metrics_address)

Each scrape reads the ledger's running totals (O(series), never O(history)) and emits exactly the metrics in
DESIGN.md. Series whose labels map to the same values (unknown categories become ``other``, hostile strings are
truncated) are summed, so the exposition never holds a duplicate series. A scrape never raises to the HTTP server:
a failing source is logged once per outage, counted in ``spendwatch_ledger_errors_total``, and whatever else can be
emitted still is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from spendwatch.exporter import mapping as m
from spendwatch.exporter import quarantine
from spendwatch.exporter.budgets import BudgetStatus
from spendwatch.exporter.ledger import REQUEST_DURATION_BUCKETS
from spendwatch.instrumentation.pricing import rounded_usd

__all__ = ["SpendCollector"]

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_USAGE_LABELS = ("provider", "model", "operation", "category")
_DURATION_LABELS = ("provider", "model", "operation")
_BUDGET_LABELS = ("budget", "period")
# The ledger totals columns a scrape sums per series.
_SUMMED = ("cost_usd", *m.TOKEN_TYPES.values(), *m.OUTCOMES, "unpriced", "duration_sum", "duration_count")


@dataclass
class _Families:
    """One scrape's metric families, in the order DESIGN.md lists them."""

    with_pricing: bool
    cost: Metric = field(init=False)
    tokens: Metric = field(init=False)
    requests: Metric = field(init=False)
    unpriced: Metric = field(init=False)
    duration: Metric = field(init=False)
    budget: dict[str, Metric] = field(init=False)
    guard: Metric = field(init=False)
    ledger_errors: Metric = field(init=False)
    records_dropped: Metric = field(init=False)
    quarantined: Metric = field(init=False)
    pricing: Metric | None = field(init=False)

    def __post_init__(self) -> None:
        self.cost = _counter(m.COST, "USD spent on LLM calls.", _USAGE_LABELS)
        self.tokens = _counter(m.TOKENS, "Tokens used by LLM calls, by type.", (*_USAGE_LABELS, "type"))
        self.requests = _counter(m.REQUESTS, "LLM calls, by outcome.", (*_USAGE_LABELS, "outcome"))
        self.unpriced = _counter(m.UNPRICED_REQUESTS, "LLM calls to models with no known price.", ("provider", "model"))
        self.duration = HistogramMetricFamily(m.REQUEST_DURATION, "LLM call duration.", labels=_DURATION_LABELS)
        # Keyed as _budget_samples names them; in exposition order.
        self.budget = {
            "limit": _gauge(m.BUDGET_LIMIT, "Budget limit for the period in USD."),
            "spent": _gauge(m.BUDGET_SPENT, "Spend in the budget's current calendar period in USD."),
            "remaining": _gauge(m.BUDGET_REMAINING, "Budget left in the current period in USD."),
            "used_ratio": _gauge(m.BUDGET_USED_RATIO, "Spent / limit (0-1, may exceed 1)."),
            "threshold": _gauge(m.BUDGET_THRESHOLD_RATIO, "Used ratio at which each level is reached.", ("level",)),
            "period_end": _gauge(m.BUDGET_PERIOD_END, "When the current budget period ends (unix seconds)."),
            "limit_source": _gauge(
                m.BUDGET_LIMIT_SOURCE,
                "1 for where the budget limit in force comes from: config, or runtime (spendwatch budget set).",
                ("source",),
            ),
        }
        self.guard = _counter(m.GUARD_DECISIONS, "Budget guard admission decisions.", ("budget", "action"))
        self.ledger_errors = _counter(m.LEDGER_ERRORS, "Failed ledger reads and writes.", ())
        self.records_dropped = _counter(
            m.RECORDS_DROPPED, "Usage records lost: no journal file could be written and the memory queue was full.", ()
        )
        self.quarantined = GaugeMetricFamily(
            m.RECORDS_QUARANTINED, "Records the ledger refused, waiting in quarantine (spendwatch quarantine list)."
        )
        self.pricing = None
        if self.with_pricing:
            self.pricing = GaugeMetricFamily(m.PRICING_DATA_TIMESTAMP, "When the bundled price data was written.")

    def all(self) -> list[Metric]:
        ordered = [self.cost, self.tokens, self.requests, self.unpriced, self.duration, *self.budget.values()]
        ordered += [self.guard, self.ledger_errors, self.records_dropped, self.quarantined]
        return ordered + ([self.pricing] if self.pricing is not None else [])


def _counter(name: str, documentation: str, labels: Iterable[str]) -> CounterMetricFamily:
    return CounterMetricFamily(m.counter_family_name(name), documentation, labels=list(labels))


def _gauge(name: str, documentation: str, extra_labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=[*_BUDGET_LABELS, *extra_labels])


class SpendCollector:
    """A prometheus_client collector over a :class:`Ledger`; see the module docstring."""

    def __init__(
        self,
        ledger,
        *,
        categories: frozenset[str] = frozenset(),
        budget_statuses: Callable[[], list[BudgetStatus]] = lambda: [],
        guard_decisions: Callable[[], Mapping[tuple[str, str], float]] = lambda: {},
        ledger_errors: Callable[[], int] = lambda: 0,
        records_dropped: Callable[[], int] = lambda: 0,
        quarantined: Callable[[], int] | None = None,
        pricing_data_timestamp: float | None = None,
        before_collect: Callable[[], None] | None = None,
        registry=None,
    ) -> None:
        self._ledger = ledger
        self._categories = frozenset(categories)
        self._budget_statuses = budget_statuses
        self._guard_decisions = guard_decisions
        self._ledger_errors = ledger_errors
        self._records_dropped = records_dropped
        self._last_dropped = 0
        # Counted from the files, so `spendwatch serve` shows what every app process over this ledger set aside.
        self._quarantined = quarantined or (lambda: quarantine.count(quarantine.directories_of(ledger.location)))
        self._pricing_data_timestamp = pricing_data_timestamp
        self._before_collect = before_collect
        self._lock = threading.Lock()  # scrapes run on concurrent server threads
        self._own_errors = 0
        self._last_reported_errors = 0
        self._failing: set[str] = set()
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        # Lets the registry check names without a scrape (and so without touching the ledger at registration).
        return _Families(self._pricing_data_timestamp is not None).all()

    def collect(self) -> list[Metric]:
        families = _Families(self._pricing_data_timestamp is not None)
        if self._before_collect is not None:
            self._guarded("flushing the journal before a scrape", self._before_collect, None)
        usage = self._guarded("reading the ledger's totals", self._read_usage, None)
        if usage is not None:
            _add_usage(families, *usage)
        budgets = self._guarded("computing budget statuses", lambda: _budget_samples(self._budget_statuses()), [])
        for family, labels, value in budgets:
            families.budget[family].add_metric(labels, value)
        decisions = self._guarded("reading guard decisions", lambda: _guard_samples(self._guard_decisions()), [])
        for labels, value in decisions:
            families.guard.add_metric(labels, value)
        families.ledger_errors.add_metric([], self._error_count())
        families.records_dropped.add_metric([], self._dropped_count())
        quarantined = self._guarded("counting quarantined records", self._quarantined, None)
        if quarantined is not None:
            families.quarantined.add_metric([], float(quarantined))
        if families.pricing is not None:
            families.pricing.add_metric([], self._pricing_data_timestamp)
        return families.all()

    def _read_usage(self) -> tuple[dict, dict]:
        totals = _usage_series(self._ledger.totals(), self._categories)
        buckets = _bucket_counts(self._ledger.duration_buckets())
        return totals, buckets

    def _error_count(self) -> float:
        reported = self._guarded("reading the ledger error count", self._ledger_errors, None)
        with self._lock:
            if reported is not None:
                self._last_reported_errors = reported  # a counter must not drop when its source hiccups
            return float(self._last_reported_errors + self._own_errors)

    def _dropped_count(self) -> float:
        reported = self._guarded("reading the dropped records count", self._records_dropped, None)
        with self._lock:
            if reported is not None:
                self._last_dropped = max(self._last_dropped, reported)  # a counter never goes down
            return float(self._last_dropped)

    def _guarded(self, what: str, source: Callable[[], _T], fallback: _T) -> _T:
        """``source()``, or ``fallback`` when it raises: a scrape must never fail, but the failure is counted."""
        try:
            value = source()
        except Exception:  # noqa: BLE001 - any failure here would otherwise fail the whole scrape
            with self._lock:
                self._own_errors += 1
                first = what not in self._failing
                self._failing.add(what)
            if first:
                _logger.warning("spendwatch: %s failed; counted in %s", what, m.LEDGER_ERRORS, exc_info=True)
            return fallback
        if what in self._failing:
            with self._lock:
                self._failing.discard(what)
            _logger.info("spendwatch: %s works again", what)
        return value


def _usage_series(rows: Iterable[Mapping[str, Any]], categories: frozenset[str]) -> dict[tuple, dict[str, float]]:
    """Ledger totals rows summed per exposed label set (provider, model, operation, category)."""
    series: dict[tuple, dict[str, float]] = {}
    for row in rows:
        category = m.label_value(m.category_label(row["category"], categories))
        key = (m.label_value(row["provider"]), m.label_value(row["model"]), m.label_value(row["operation"]), category)
        sums = series.setdefault(key, dict.fromkeys(_SUMMED, 0.0))
        for column in _SUMMED:
            sums[column] += m.sample_value(row[column])
    return series


def _bucket_counts(rows: Iterable[Mapping[str, Any]]) -> dict[tuple, dict[float, float]]:
    """Ledger duration bucket rows as {(provider, model, operation): {upper bound: count in that bucket only}}."""
    counts: dict[tuple, dict[float, float]] = {}
    for row in rows:
        key = (m.label_value(row["provider"]), m.label_value(row["model"]), m.label_value(row["operation"]))
        by_bound = counts.setdefault(key, {})
        bound = float(row["le"])
        by_bound[bound] = by_bound.get(bound, 0.0) + m.sample_value(row["count"])
    return counts


def _add_usage(families: _Families, series: dict[tuple, dict[str, float]], buckets: dict[tuple, dict]) -> None:
    unpriced: dict[tuple, float] = {}
    durations: dict[tuple, list[float]] = {}
    for key, sums in sorted(series.items()):
        families.cost.add_metric(key, rounded_usd(sums["cost_usd"]))
        for token_type, column in m.TOKEN_TYPES.items():
            families.tokens.add_metric((*key, token_type), sums[column])
        for outcome in m.OUTCOMES:
            families.requests.add_metric((*key, outcome), sums[outcome])
        unpriced[key[:2]] = unpriced.get(key[:2], 0.0) + sums["unpriced"]
        duration = durations.setdefault(key[:3], [0.0, 0.0])
        duration[0] += sums["duration_sum"]
        duration[1] += sums["duration_count"]
    for key, count in unpriced.items():
        families.unpriced.add_metric(key, count)
    for key, (total_seconds, count) in durations.items():
        le_buckets = m.cumulative_buckets(buckets.get(key, {}), REQUEST_DURATION_BUCKETS, count)
        families.duration.add_metric(key, le_buckets, total_seconds)


def _budget_samples(statuses: Iterable[BudgetStatus]) -> list[tuple[str, tuple[str, ...], float]]:
    """(family key, labels, value) for every budget gauge; the first of two budgets sharing labels wins."""
    samples: list[tuple[str, tuple[str, ...], float]] = []
    seen: set[tuple[str, str]] = set()
    for status in statuses:
        labels = (m.label_value(status.name), m.label_value(status.period))
        if labels in seen:
            continue  # a duplicate series would make Prometheus reject the whole scrape
        seen.add(labels)
        samples += [
            ("limit", labels, rounded_usd(float(status.limit_usd))),
            ("spent", labels, rounded_usd(float(status.spent_usd))),
            ("remaining", labels, rounded_usd(float(status.remaining_usd))),
            ("used_ratio", labels, float(status.used_ratio)),
            ("period_end", labels, status.period_end.timestamp()),
            ("limit_source", (*labels, status.limit_source), 1.0),
        ]
        samples += [("threshold", (*labels, level), float(ratio)) for level, ratio in status.thresholds.items()]
    return samples


def _guard_samples(decisions: Mapping[tuple[str, str], float]) -> list[tuple[tuple[str, str], float]]:
    summed: dict[tuple[str, str], float] = {}
    for (budget, action), count in decisions.items():
        labels = (m.label_value(budget), m.label_value(action))
        summed[labels] = summed.get(labels, 0.0) + m.sample_value(count)
    return sorted(summed.items())
