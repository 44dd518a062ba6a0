"""Operations: request rate and outcomes, latency, unpriced and blocked calls, and the exporter's own health."""

from dashboards import house, promql
from dashboards.house import count_thresholds, stat, target, timeseries
from dashboards.promql import COST_LABELS, DURATION_LABELS

USAGE = 'category=~"$category", model=~"$model"'
REQUESTS = "llm_requests_total"
REQUEST_LABELS = (*COST_LABELS, "outcome")
EXPORTER = 'job=~"$job"'
UNPRICED = promql.increase("llm_unpriced_requests_total", ("provider", "model"), "$__range", 'model=~"$model"')
GUARD_RATE = promql.per_second("llm_guard_decisions_total", ("budget", "action"), 'budget=~"$budget"')


def requests_in(window: str, outcome: str | None = None) -> str:
    matchers = f'{USAGE}, outcome="{outcome}"' if outcome else USAGE
    return f"sum({promql.increase(REQUESTS, REQUEST_LABELS, window, matchers)})"


def latency(quantile: float) -> str:
    buckets = promql.increase("llm_request_duration_seconds_bucket", DURATION_LABELS, "$__interval", 'model=~"$model"')
    return f"histogram_quantile({quantile}, sum by (le) ({buckets}))"


requests = timeseries(
    "Requests by outcome",
    [target(f"sum by (outcome) ({promql.per_second(REQUESTS, REQUEST_LABELS, USAGE)})", "{{outcome}}")],
    unit=house.REQUESTS_PER_SECOND,
    description="LLM calls per second: success, error (the provider or network failed) and blocked (refused by a "
    "budget guard before it was sent).",
    stacked=True,
)

error_ratio = timeseries(
    "Error ratio",
    [
        target(
            f"{requests_in('$__interval', 'error')} / {requests_in('$__interval')}",
            "errors / requests",
        )
    ],
    unit=house.PERCENT,
    description="The share of LLM calls that failed.",
)

latencies = timeseries(
    "Latency percentiles",
    [target(latency(q), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
    unit=house.SECONDS,
    description="LLM call duration, from the request to the last byte of the response.",
)

unpriced = stat(
    "Unpriced calls in range",
    [target(f"sum by (model) ({UNPRICED})", "{{model}}")],
    unit=house.COUNT,
    description="Calls to models with no known price: their cost is missing from every spend figure. Add the "
    "model to SPENDWATCH_PRICES_FILE.",
    thresholds=count_thresholds(),
    horizontal=True,
)

blocked = stat(
    "Blocked calls in range",
    [target(requests_in("$__range", "blocked"), "blocked")],
    unit=house.COUNT,
    description="Calls refused because they would exceed a budget (SPENDWATCH_ENFORCE=block).",
    thresholds=count_thresholds(),
)

guard = timeseries(
    "Guard decisions",
    [
        target(
            f"sum by (budget, action) ({GUARD_RATE})",
            "{{budget}} {{action}}",
        )
    ],
    unit=house.REQUESTS_PER_SECOND,
    description="Budget guard admission decisions per second: allow, degrade, throttle or block.",
)

# Every target shows every process's ledger errors and dropped records (each process keeps its counts in the ledger),
# so the targets are copies: the largest, not their sum.
ledger_errors = stat(
    "Ledger errors in range",
    [target(f"max(increase(spendwatch_ledger_errors_total{{{EXPORTER}}}[$__range]))", "errors")],
    unit=house.COUNT,
    description="Failed ledger reads and writes: while they last, spend may be missing from /metrics.",
    thresholds=count_thresholds(),
)

records_dropped = stat(
    "Records dropped in range",
    [target(f"max(increase(spendwatch_records_dropped_total{{{EXPORTER}}}[$__range]))", "records")],
    unit=house.COUNT,
    description="Usage records lost: no journal file could be written anywhere and the memory queue was full.",
    thresholds=count_thresholds(),
)

exporter_up = stat(
    "Exporter up",
    [target(f"up{{{EXPORTER}}}", "{{instance}}")],
    unit=house.COUNT,
    description="1 when Prometheus's last scrape of the spendwatch exporter succeeded.",
    thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
)

pricing_age = stat(
    "Price data age",
    [target(f"time() - spendwatch_pricing_data_timestamp_seconds{{{EXPORTER}}}", "{{instance}}")],
    unit=house.SECONDS,
    description="How old the bundled model prices are; upgrade spendwatch when they are months old.",
    thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 90 * 86400}],
)

dashboard = house.dashboard(
    "spendwatch / Operations",
    uid="spendwatch-operations",
    description="LLM call rate, errors and latency; unpriced and blocked calls; the exporter's own health.",
    variables=[house.CATEGORY, house.MODEL, house.BUDGET, house.JOB],
    sections=[
        ("Traffic", [requests, error_ratio, latencies]),
        ("Spend control", [unpriced, blocked, guard]),
        ("Exporter", [exporter_up, ledger_errors, records_dropped, pricing_age]),
    ],
).auto_panel_ids()
