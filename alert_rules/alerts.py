"""The source of ``spendwatch.alerts.yml``: spendwatch's alerts, in the style of kubernetes-mixin and node-mixin.

``python -m alert_rules.generate`` (``make alert-rules``) writes the file; ``spendwatch assets --runbook-base URL``
renders it again with :func:`render` so each ``runbook_url`` is a link, as the mixins' ``runbookURLPattern``.
Only the standard library: the installed wheel runs this too.
"""

from __future__ import annotations

from .rulefile import Alert, Group
from .rulefile import render as render_rule_file

__all__ = ["FILE_NAME", "GROUPS", "MONEY", "RUNBOOK_BASE", "dollars", "render"]

FILE_NAME = "spendwatch.alerts.yml"
# Where each runbook_url points by default: runbook.md beside the rules, as shipped; `spendwatch assets
# --runbook-base URL` puts where you publish it in its place.
RUNBOOK_BASE = "alert_rules/runbook.md"
# The one template every dollar amount in an annotation is printed with (the HEADER says how it reads).
MONEY = (
    '{{ $usd := . | first | value }}{{ if ge $usd 1.0 }}{{ printf "%.2f" $usd }}{{ else }}'
    '{{ printf "%.6f" $usd | reReplaceAll "^([0-9]+[.][0-9]{2}[0-9]*?)0+$" "$1" }}{{ end }}'
)

HEADER = (
    "Generated from alert_rules/alerts.py in spendwatch's repository (`make alert-rules`): edit that, not this file."
    "\n\n"
    "spendwatch alerts, in the style of kubernetes-mixin and node-mixin: severity label, a static summary, a templated "
    "description with humanized money and percentages, a runbook_url into alert_rules/runbook.md (`spendwatch assets "
    "--runbook-base URL` makes it an absolute link). Dollars show cents from $1 up and, below, up to six decimals with "
    'the zeros after the cents dropped, so a small budget reads "$0.01019, 101.9% of its $0.01 limit", not "$0.01". '
    "Every amount is formatted by that same template, MONEY in alert_rules/alerts.py."
    "\n\n"
    "Budget thresholds are never written here: each budget alert joins the used ratio with that budget's own "
    "llm_budget_threshold_ratio{level=...} (SPENDWATCH_THRESHOLDS), on (budget, period), so changing a threshold needs "
    "no rule edit. The recording rules in spendwatch.rules.yml dedupe series across spendwatch targets."
    "\n\n"
    'SpendwatchExporterDown assumes the scrape job is named "spendwatch"; edit its selector if yours is not.'
)

# The recording rules (spendwatch.rules.yml) the budget alerts read: one series per (budget, period).
SPENT = "budget_period:llm_budget_spent_usd:max"
LIMIT = "budget_period:llm_budget_limit_usd:max"
USED = "budget_period:llm_budget_used_ratio:max"
PERIOD_END = "budget_period:llm_budget_period_end_timestamp_seconds:max"
THRESHOLD = "budget_period_level:llm_budget_threshold_ratio:max"
COST_RATE = ":llm_cost_usd:rate30m"
BUSIEST_HALF_HOUR = f"max_over_time({COST_RATE}[1d] offset 30m)"


def budget_query(metric: str, level: str = "") -> str:
    """A query template for ``metric`` of the alert's own budget and period (and threshold ``level``)."""
    matchers = "budget=%q,period=%q" + (f',level="{level}"' if level else "")
    return f"printf `{metric}{{{matchers}}}` $labels.budget $labels.period | query"


def dollars(query: str) -> str:
    """The first value of ``query`` in dollars, by the one :data:`MONEY` template."""
    return "${{ with " + query + " }}" + MONEY + "{{ end }}"


def first_value(query: str, humanize: str) -> str:
    """The first value of ``query`` through Prometheus's ``humanize`` function (humanizePercentage, ...)."""
    return "{{ with " + query + " }}{{ . | first | value | " + humanize + " }}{{ end }}"


def usage_expr(level: str) -> str:
    """The used ratio at or past the budget's own threshold of ``level``."""
    return f"""\
{USED}
  >= on (budget, period) group_left
{THRESHOLD}{{level="{level}"}}"""


def usage_high(severity: str, for_: str) -> Alert:
    return Alert(
        alert="LLMBudgetUsageHigh",
        expr=usage_expr(severity),
        for_=for_,
        severity=severity,
        summary=f"An LLM budget has passed its {severity} threshold.",
        description=(
            "Budget {{ $labels.budget }} has spent",
            dollars(budget_query(SPENT)),
            "of its",
            dollars(budget_query(LIMIT)),
            "limit per {{ $labels.period }} ({{ $value | humanizePercentage }} used), past its "
            f"{severity} threshold of",
            first_value(budget_query(THRESHOLD, severity), "humanizePercentage") + ".",
        ),
    )


EXHAUSTED = Alert(
    alert="LLMBudgetExhausted",
    expr=usage_expr("exceeded"),
    for_="1m",
    severity="critical",
    summary="An LLM budget is exhausted.",
    description=(
        "Budget {{ $labels.budget }} has spent",
        dollars(budget_query(SPENT)) + ",",
        "{{ $value | humanizePercentage }} of its",
        dollars(budget_query(LIMIT)),
        "limit per {{ $labels.period }}. The period ends at",
        first_value(budget_query(PERIOD_END), "humanizeTimestamp") + ".",
    ),
)


EXHAUSTION_PREDICTED = Alert(
    alert="LLMBudgetExhaustionPredicted",
    comment="Seconds until the rest of the budget is gone at the recent burn rate, when that is sooner than the "
    "period's end. A zero burn rate gives +Inf (never); an exhausted budget is left to LLMBudgetExhausted.",
    expr=f"""\
(
  {LIMIT} - on (budget, period) {SPENT} > 0
)
  / on (budget, period)
(
  budget_period:llm_budget_spent_usd:rate1h or budget_period:llm_budget_spent_usd:rate1d
)
  < on (budget, period)
(
  {PERIOD_END} - time()
)""",
    for_="30m",
    severity="warning",
    summary="An LLM budget will run out before its period ends.",
    description=(
        "At its current burn rate budget {{ $labels.budget }} runs out in {{ $value | humanizeDuration }},",
        "before its period ends at",
        first_value(budget_query(PERIOD_END), "humanizeTimestamp") + ":",
        dollars(budget_query(SPENT)),
        "spent of its",
        dollars(budget_query(LIMIT)),
        "limit per {{ $labels.period }}.",
    ),
)


COST_SPIKE = Alert(
    alert="LLMCostSpike",
    comment="The last 30 minutes against the busiest half hour of the day before them, so a daily rhythm (office "
    "hours) is no spike. Quiet while that day spent nothing: spend resuming after a silent day is judged against "
    "itself once it has 30 minutes of history.",
    expr=f"{COST_RATE} / {BUSIEST_HALF_HOUR} > 3\n  and\n{BUSIEST_HALF_HOUR} > 0",
    for_="15m",
    severity="warning",
    summary="LLM spend is rising sharply.",
    description=(
        "LLM calls cost",
        dollars(f'query "{COST_RATE} * 3600"'),
        'per hour over the last 30 minutes, {{ $value | printf "%.1f" }} times the busiest half hour of the day',
        "before",
        "(" + dollars(f'query "{BUSIEST_HALF_HOUR} * 3600"'),
        "per hour).",
    ),
)


UNPRICED_REQUESTS = Alert(
    alert="LLMUnpricedRequests",
    expr="provider_model:llm_unpriced_requests:increase1h > 0",
    for_="5m",
    severity="warning",
    summary="LLM calls to a model with no known price are not counted against any budget.",
    description=(
        '{{ $value | printf "%.0f" }} calls to {{ $labels.provider }} model {{ $labels.model }} in the last hour',
        "had no price, so their spend is missing from every budget.",
    ),
)


GUARD_BLOCKING = Alert(
    alert="LLMGuardBlocking",
    expr='budget_action:llm_guard_decisions:increase15m{action="block"} > 0',
    for_="2m",
    severity="warning",
    summary="The budget guard is refusing LLM calls.",
    description=(
        'The guard of budget {{ $labels.budget }} refused {{ $value | printf "%.0f" }} LLM calls in the last 15',
        "minutes: callers get errors instead of answers.",
    ),
)


LEDGER_ERRORS = Alert(
    alert="SpendwatchLedgerErrors",
    expr="increase(spendwatch_ledger_errors_total[15m]) > 0",
    for_="5m",
    severity="warning",
    summary="spendwatch fails to read or write its spend ledger.",
    description=(
        'spendwatch at {{ $labels.instance }} had {{ $value | printf "%.0f" }} ledger errors in the last 15',
        "minutes: spend may be missing from the metrics and budgets until the ledger works again.",
    ),
)


RECORDS_DROPPED = Alert(
    alert="SpendwatchRecordsDropped",
    comment="Records are dropped only past the memory queue, after every journal place failed: spend is lost.",
    expr="increase(spendwatch_records_dropped_total[15m]) > 0",
    for_="0m",
    severity="critical",
    summary="spendwatch dropped usage records: their spend is in no ledger and no budget.",
    description=(
        'spendwatch at {{ $labels.instance }} counts {{ $value | printf "%.0f" }} usage records dropped in the last',
        "15 minutes: no journal file could be written anywhere and the memory queue was full.",
    ),
)


EXPORTER_DOWN = Alert(
    alert="SpendwatchExporterDown",
    comment="Either a known target is down, or no spendwatch target is scraped at all.",
    expr='up{job="spendwatch"} == 0\n  or\nabsent(up{job="spendwatch"})',
    for_="5m",
    severity="critical",
    summary="Prometheus cannot scrape spendwatch; budget alerts are blind.",
    description=(
        "Prometheus has had no spendwatch metrics from {{ with $labels.instance }}{{ . }}{{ else }}any target of",
        "job {{ $labels.job }}{{ end }} for 5 minutes. No budget alert can fire until they are back.",
    ),
)


GROUPS = [
    Group(
        "spendwatch.budgets",
        (usage_high("warning", "5m"), usage_high("critical", "1m"), EXHAUSTED, EXHAUSTION_PREDICTED),
    ),
    Group("spendwatch.spend", (COST_SPIKE, UNPRICED_REQUESTS, GUARD_BLOCKING)),
    Group("spendwatch.exporter", (LEDGER_ERRORS, RECORDS_DROPPED, EXPORTER_DOWN)),
]


def render(runbook_base: str = RUNBOOK_BASE) -> str:
    """The text of ``spendwatch.alerts.yml``, each runbook_url ``runbook_base#<alert>``."""
    return render_rule_file(HEADER, GROUPS, runbook_base)
