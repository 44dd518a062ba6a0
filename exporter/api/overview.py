"""``/api/v1/overview``: every budget now, with its health and where its period ends at the recent burn rate.

Read from the running totals only (the period's per-day totals and the last hour or day of per-hour totals), never
from the per-call history::

    overview(ledger, settings)["budgets"][0]["projected_period_end_usd"]
"""

from __future__ import annotations

import math
import time

from spendwatch.exporter.api.times import rfc3339
from spendwatch.exporter.budgets import BudgetStatus, budget_statuses, describe_scope
from spendwatch.exporter.ledger.hourly import spend_between
from spendwatch.exporter.projection import BURN_WINDOWS_S, DAY_S, projected_spend, remaining_days

__all__ = ["HEALTHS", "budget_overview", "overview"]

# A budget's health is the highest threshold level it reached, or ok.
HEALTHS = ("ok", "warning", "critical", "exceeded")


def overview(ledger, settings, now: float | None = None) -> dict:
    """Every configured budget at ``now`` (default the clock), sorted as ``spendwatch status`` sorts them."""
    now = time.time() if now is None else now
    statuses = budget_statuses(ledger, settings, now=now)
    return {
        "generated_at": rfc3339(now),
        "timezone": settings.timezone.key,
        "budgets": [budget_overview(ledger, status, settings.timezone, now) for status in statuses],
    }


def budget_overview(ledger, status: BudgetStatus, tz, now: float) -> dict:
    """One budget: limit, spend, remaining, used ratio, level and health, period, burn rate and projection."""
    window = BURN_WINDOWS_S[status.period]
    scope = {"category": status.category, "model": status.model, "service": status.service}
    recent = spend_between(ledger, now - window, now, **scope)
    usd_per_day = recent * DAY_S / window
    projected = projected_spend(status.spent_usd, usd_per_day, remaining_days(now, tz, status.period))
    used = status.used_ratio
    return {
        "name": status.name,
        "period": status.period,
        "scope": describe_scope(status),
        "category": status.category,
        "model": status.model,
        "service": status.service,
        "limit_usd": status.limit_usd,
        "limit_source": status.limit_source,
        "spent_usd": status.spent_usd,
        "remaining_usd": status.remaining_usd,
        "used_ratio": used if math.isfinite(used) else None,
        "level": status.level,
        "health": status.level or "ok",
        "thresholds": dict(status.thresholds),
        "period_start": rfc3339(status.period_start),
        "period_end": rfc3339(status.period_end),
        "burn_window_seconds": int(window),
        "burn_rate_usd_per_day": usd_per_day,
        "projected_period_end_usd": projected,
        "projected_to_exceed": projected > status.limit_usd,
    }
