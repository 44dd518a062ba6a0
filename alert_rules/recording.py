"""The source of ``spendwatch.rules.yml``: the recording rules spendwatch's alerts and dashboards read.

Names are ``level:metric:operations``. Rules over the ledger's counters are :func:`dashboards.promql.increase`, the
same PromQL the dashboards use. ``python -m alert_rules.generate`` (``make alert-rules``) writes the file; run from
the repository root, like the dashboards' generator.
"""

from __future__ import annotations

from dashboards import promql

from .rulefile import Group, Record, section
from .rulefile import render as render_rule_file

__all__ = ["FILE_NAME", "render"]

FILE_NAME = "spendwatch.rules.yml"
BUDGET = ("budget", "period")

HEADER = (
    "Generated from alert_rules/recording.py in spendwatch's repository (`make alert-rules`): edit that, not this "
    "file.\n\n"
    "Recording rules for spendwatch's alerts and dashboards (names: level:metric:operations)."
    "\n\n"
    "Every spendwatch process that serves /metrics over one ledger exposes the same running totals (the ledger is the "
    "single source of truth), so series from several targets are duplicates, not parts: the rules take max across "
    "targets, never sum, and leave only the identifying labels (budget, period, level, provider, model, ...)."
)


def budget_gauge(metric: str, labels: tuple[str, ...] = BUDGET, comment: str = "") -> Record:
    """One series per value of ``labels`` of a budget gauge, whichever target it came from."""
    joined = ", ".join(labels)
    return Record(f"{'_'.join(labels)}:{metric}:max", f"max by ({joined}) ({metric})", comment)


def burn_rate(period: str, window: str, comment: str = "") -> Record:
    """The USD per second a budget of ``period`` spent over ``window``."""
    expr = f'max by (budget, period) (rate(llm_budget_spent_usd{{period="{period}"}}[{window}]))'
    return Record(f"budget_period:llm_budget_spent_usd:rate{window}", expr, comment)


def counter_increase(record: str, metric: str, labels: tuple[str, ...], window: str, comment: str = "") -> Record:
    """How much a ledger counter grew over ``window``, deduped across targets and counting a label set's first call."""
    return Record(record, _wrapped(promql.increase(metric, labels, window)), comment)


def _wrapped(expr: str) -> str:
    """promql.increase()'s expression with each of its cases on a line of its own, for reading the file."""
    return expr.replace(" or (", "\n  or (")


BUDGETS = [
    budget_gauge("llm_budget_limit_usd", comment=section("budgets: one series per (budget, period)")),
    budget_gauge("llm_budget_spent_usd"),
    budget_gauge("llm_budget_used_ratio"),
    budget_gauge("llm_budget_period_end_timestamp_seconds"),
    budget_gauge("llm_budget_threshold_ratio", ("budget", "period", "level")),
    burn_rate(
        "day",
        "1h",
        comment="Burn rate in USD per second. The spent gauge only grows within a period and drops to 0 when the next "
        "one starts; rate() reads that drop as a counter reset, which is exactly the rollover we want it to ignore. "
        "A daily budget is judged on the last hour, a monthly one on the last day (an hour is too noisy for a month).",
    ),
    burn_rate("month", "1d"),
]

COUNTERS = [
    Record(
        ":llm_cost_usd:rate30m",
        f"sum({_wrapped(promql.increase('llm_cost_usd_total', promql.COST_LABELS, '30m'))}) / 1800",
        comment=section("growth of the ledger's counters") + "\n"
        "A label set appears in /metrics with its first call already counted, so increase() and rate(), which need "
        "two samples, never saw a new model's first calls: a burst of unpriced calls to a new model never alerted. "
        "These rules are dashboards/promql.py's increase() (its docstring explains the four cases): the growth since "
        "the window's start, or all of a label set that appeared while its target was reading the ledger without "
        "error.\n\n"
        "Spend across all budgets: USD per second over the last 30 minutes.",
    ),
    counter_increase(
        "provider_model:llm_unpriced_requests:increase1h",
        "llm_unpriced_requests_total",
        ("provider", "model"),
        "1h",
        comment="Calls that are not counted or were refused.",
    ),
    counter_increase(
        "budget_action:llm_guard_decisions:increase15m", "llm_guard_decisions_total", ("budget", "action"), "15m"
    ),
]


def render() -> str:
    """The text of ``spendwatch.rules.yml``."""
    return render_rule_file(HEADER, [Group("spendwatch.rules", [*BUDGETS, *COUNTERS])])
