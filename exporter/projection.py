"""Where a period's spend ends at the recent burn rate: the one projection behind ``report --trend``, the JSON API's
overview and the ``LLMBudgetExhaustionPredicted`` alert.

The method: spend so far in the period, plus the recent burn rate times the time left in the period::

    projected = spent_usd + usd_per_day * remaining_days(now, tz, period)

The alert says the same in PromQL: it fires when ``(limit - spent) / rate < period_end - time()``, that is when
``spent + rate * (period_end - time())`` passes the limit, with ``rate`` the budget's spend over the last
:data:`BURN_WINDOWS_S` of its period (``alert_rules/recording.py``: an hour for a daily budget, a day for a monthly
one). The overview uses those same windows; ``report --trend`` takes its rate from the average of its last complete
days. With a steady burn the three give the same number (``tests/test_api_projection.py`` checks it).
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from spendwatch.exporter.periods import local_day, period_bounds, period_days

__all__ = ["BURN_WINDOWS_S", "DAY_S", "projected_spend", "remaining_days"]

DAY_S = 86400.0
# How far back the burn rate of a budget looks, per period: the windows of the alert's recording rules.
BURN_WINDOWS_S = {"day": 3600.0, "month": DAY_S}


def projected_spend(spent_usd: float, usd_per_day: float, days_left: float) -> float:
    """The period's spend at its end, if the burn rate holds: spend so far plus the rate over the time left."""
    return spent_usd + usd_per_day * days_left


def remaining_days(now: float, tz: ZoneInfo, period: str) -> float:
    """What is left of the period containing ``now``, in days: the whole days after today plus the unfinished
    fraction of today. Today's fraction is measured by the clock against today's real length (23 or 25 hours across
    a DST change), so a day always counts as one."""
    today = local_day(now, tz)
    _, end_day = period_days(period, today)
    return _whole_days_after(today, end_day) + _fraction_of_today_left(now, tz)


def _whole_days_after(today: date, end_day: date) -> int:
    return (end_day - today).days - 1


def _fraction_of_today_left(now: float, tz: ZoneInfo) -> float:
    # Instants, not aware datetimes: subtracting two datetimes of one zone ignores an offset change between them.
    today_start, tomorrow_start = (moment.timestamp() for moment in period_bounds("day", now, tz))
    return (tomorrow_start - now) / (tomorrow_start - today_start)
