"""Calendar periods (a day, a month) in the configured time zone. Pure functions, DST-safe: a period starts at
local midnight, so a day across a DST change lasts 23 or 25 hours, as a person reading a clock would expect."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["local_day", "period_days", "period_bounds"]


def local_day(unix_seconds: float, tz: ZoneInfo) -> date:
    """The calendar day, in ``tz``, of an instant."""
    return datetime.fromtimestamp(unix_seconds, tz).date()


def period_days(period: str, day: date) -> tuple[date, date]:
    """First day and the day after the last day of the period (``"day"`` or ``"month"``) containing ``day``."""
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "month":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return first, following
    raise ValueError(f"unknown period {period!r}")


def period_bounds(period: str, unix_seconds: float, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of the period containing an instant, as aware datetimes in ``tz``."""
    first, following = period_days(period, local_day(unix_seconds, tz))
    return _midnight(first, tz), _midnight(following, tz)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # Local midnight; where a DST jump skips midnight, zoneinfo maps the missing hour forward (fold=0).
    return datetime.combine(day, time(0), tzinfo=tz)
