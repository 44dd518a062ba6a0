"""Budget overview: where each budget stands in its day and month, how fast it burns, where it will end."""

from dashboards import house, promql
from dashboards.house import gauge, stat, target, timeseries
from dashboards.promql import COST_LABELS

BUDGET = 'budget=~"$budget"'


def per_budget(expr: str) -> str:
    """One series per budget and period: every target over the ledger exposes the same gauges."""
    return f"max by (budget, period) ({expr})"


used = {
    period: gauge(
        f"{label} budget used",
        [target(per_budget(f'llm_budget_used_ratio{{{BUDGET}, period="{period}"}}'), "{{budget}}")],
        description=f"Spend in the current {period} over its limit; 75 / 90 / 100 % are the warning, critical and "
        "exceeded levels.",
    )
    for period, label in (("day", "Daily"), ("month", "Monthly"))
}

remaining = stat(
    "Remaining",
    [target(per_budget(f"llm_budget_remaining_usd{{{BUDGET}}}"), "{{budget}} ({{period}})")],
    unit=house.USD,
    description="Limit minus spend in the current period; negative once the budget is exceeded.",
    thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 0}],
    horizontal=True,
)

spend_vs_limit = timeseries(
    "Spend vs limit",
    [
        target(per_budget(f"llm_budget_spent_usd{{{BUDGET}}}"), "{{budget}} ({{period}}) spent"),
        target(per_budget(f"llm_budget_limit_usd{{{BUDGET}}}"), "{{budget}} ({{period}}) limit"),
    ],
    unit=house.USD,
    description="Spend in the current calendar period against the limit; spend drops to zero when a period starts.",
)

burn_rate = timeseries(
    "Burn rate ($/h)",
    [target(f"sum({promql.increase('llm_cost_usd_total', COST_LABELS, '1h')})", "all calls")],
    unit=house.USD,
    description="USD spent on all LLM calls in the hour before each point.",
)

# llm_budget_spent_usd only grows within a period and restarts from zero at the next, which is exactly what rate()
# reads as a counter reset: its rate is the budget's own burn, so a budget scoped to a category or model is
# projected from its own spend rather than from everyone's.
projected = timeseries(
    "Projected spend at period end",
    [
        target(
            f"{per_budget(f'llm_budget_spent_usd{{{BUDGET}}}')}"
            f" + {per_budget(f'rate(llm_budget_spent_usd{{{BUDGET}}}[1h])')}"
            f" * ({per_budget(f'llm_budget_period_end_timestamp_seconds{{{BUDGET}}}')} - time())",
            "{{budget}} ({{period}}) projected",
        ),
        target(per_budget(f"llm_budget_limit_usd{{{BUDGET}}}"), "{{budget}} ({{period}}) limit"),
    ],
    unit=house.USD,
    description="Spend so far plus the last hour's burn rate until the period ends, against the limit.",
)

dashboard = house.dashboard(
    "spendwatch / Budget overview",
    uid="spendwatch-budget-overview",
    description="Where each LLM budget stands now, how fast it burns, and where it will end the period.",
    variables=[house.BUDGET],
    sections=[
        ("Now", [used["day"], used["month"], remaining]),
        ("Over time", [spend_vs_limit, burn_rate, projected]),
    ],
).auto_panel_ids()
