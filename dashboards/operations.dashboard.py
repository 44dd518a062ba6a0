"""Operations: request rate and outcomes, latency, unpriced and blocked calls, and the exporter's own health."""

from dashboards import house
from dashboards.house import count_thresholds, stat, target, timeseries

USAGE = 'category=~"$category", model=~"$model"'
REQUESTS = f"llm_requests_total{{{USAGE}}}"
EXPORTER = 'job=~"$job"'


def latency(quantile: float) -> str:
    buckets = 'llm_request_duration_seconds_bucket{model=~"$model"}'
    return f"histogram_quantile({quantile}, sum by (le) (rate({buckets}[$__rate_interval])))"


requests = timeseries(
    "Requests by outcome",
    [target(f"sum by (outcome) (rate({REQUESTS}[$__rate_interval]))", "{{outcome}}")],
    unit=house.REQUESTS_PER_SECOND,
    description="LLM calls per second: success, error (the provider or network failed) and blocked (refused by a "
    "budget guard before it was sent).",
    stacked=True,
)

error_ratio = timeseries(
    "Error ratio",
    [
        target(
            f'sum(rate(llm_requests_total{{{USAGE}, outcome="error"}}[$__rate_interval]))'
            f" / sum(rate({REQUESTS}[$__rate_interval]))",
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
    [target('sum by (model) (increase(llm_unpriced_requests_total{model=~"$model"}[$__range]))', "{{model}}")],
    unit=house.COUNT,
    description="Calls to models with no known price: their cost is missing from every spend figure. Add the "
    "model to SPENDWATCH_PRICES_FILE.",
    thresholds=count_thresholds(),
    horizontal=True,
)

blocked = stat(
    "Blocked calls in range",
    [target(f'sum(increase(llm_requests_total{{{USAGE}, outcome="blocked"}}[$__range]))', "blocked")],
    unit=house.COUNT,
    description="Calls refused because they would exceed a budget (SPENDWATCH_ENFORCE=block).",
    thresholds=count_thresholds(),
)

guard = timeseries(
    "Guard decisions",
    [
        target(
            'sum by (budget, action) (rate(llm_guard_decisions_total{budget=~"$budget"}[$__rate_interval]))',
            "{{budget}} {{action}}",
        )
    ],
    unit=house.REQUESTS_PER_SECOND,
    description="Budget guard admission decisions per second: allow, degrade, throttle or block.",
)

ledger_errors = stat(
    "Ledger errors in range",
    [target(f"sum(increase(spendwatch_ledger_errors_total{{{EXPORTER}}}[$__range]))", "errors")],
    unit=house.COUNT,
    description="Failed ledger reads and writes: while they last, spend may be missing from /metrics.",
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
        ("Exporter", [exporter_up, ledger_errors, pricing_age]),
    ],
).auto_panel_ids()
