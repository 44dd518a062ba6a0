"""Per-hour running totals: what the JSON API's hourly analytics and the budgets' recent burn rate read.

``hourly_totals`` is ``daily_totals`` by UTC hour instead of local day (``hour`` is the hour's start in unix seconds,
a multiple of 3600), kept by :mod:`spendwatch.exporter.ledger.totals` in the transaction that writes the calls, so
a range of hours costs O(hours × series) and never a scan of ``calls``.

Also here, for the API's analytics: :func:`daily_sums` and :func:`hourly_sums`, the totals of a range of days or hours
added up per bucket and group by the database, and :func:`spend_between`, a budget's spend over the last hour or day.
"""

from __future__ import annotations

from datetime import date

from spendwatch.exporter.ledger.ledger import budget_scope
from spendwatch.exporter.ledger.schema import TOTAL_COUNTERS, TOTAL_KEYS
from spendwatch.exporter.ledger.totals import HOUR_S, hour_of

__all__ = ["HOUR_S", "SUMMED", "daily_sums", "hour_of", "hourly_sums", "hourly_totals", "spend_between"]

# The counters :func:`daily_sums` and :func:`hourly_sums` add up per bucket and group.
SUMMED = (
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "success",
    "error",
    "blocked",
    "unpriced",
)


def hourly_totals(ledger, first_hour: int, end_hour: int) -> list[dict]:
    """Per-hour totals for hours starting in ``[first_hour, end_hour)``, oldest first."""
    columns = ", ".join(("hour", *TOTAL_KEYS, *TOTAL_COUNTERS))
    query = f"SELECT {columns} FROM hourly_totals WHERE hour >= ? AND hour < ? ORDER BY hour"
    with ledger.snapshot() as rows:
        names = ("hour", *TOTAL_KEYS, *TOTAL_COUNTERS)
        return [dict(zip(names, row, strict=True)) for row in rows(query, (first_hour, end_hour))]


def daily_sums(ledger, first_day: date, end_day: date, by: str) -> list[dict]:
    """:data:`SUMMED` per local day in ``[first_day, end_day)`` and value of ``by`` (one of ``TOTAL_KEYS``), added up
    by the database: one row per day and group, however many series."""
    return _sums(ledger, "daily_totals", "day", by, (first_day.isoformat(), end_day.isoformat()))


def hourly_sums(ledger, first_hour: int, end_hour: int, by: str) -> list[dict]:
    """:data:`SUMMED` per UTC hour in ``[first_hour, end_hour)`` and value of ``by``, as :func:`daily_sums`."""
    return _sums(ledger, "hourly_totals", "hour", by, (first_hour, end_hour))


def _sums(ledger, table: str, bucket: str, by: str, bounds: tuple) -> list[dict]:
    if by not in TOTAL_KEYS:  # a column name goes into the SQL: only the known ones
        raise ValueError(f"cannot group totals by {by!r}; choose one of {', '.join(TOTAL_KEYS)}")
    sums = ", ".join(f"SUM({column})" for column in SUMMED)
    query = f"SELECT {bucket}, {by}, {sums} FROM {table} WHERE {bucket} >= ? AND {bucket} < ? GROUP BY {bucket}, {by}"
    names = (bucket, by, *SUMMED)
    with ledger.snapshot() as rows:
        return [dict(zip(names, row, strict=True)) for row in rows(query, bounds)]


def spend_between(
    ledger,
    since: float,
    until: float,
    *,
    category: str | None = None,
    model: str | None = None,
    service: str | None = None,
) -> float:
    """Spend from ``since`` to ``until`` (now, or earlier) within a budget's scope. An hour only partly inside counts
    in proportion, as if its calls were spread evenly over it, the hour being the finest grain the totals keep; the
    hour ``until`` falls in counts as lasting until then, since no call of it can be later."""
    scope, scope_values = budget_scope(category, model, service)
    query = (
        f"SELECT hour, COALESCE(SUM(cost_usd), 0) FROM hourly_totals WHERE hour >= ? AND hour < ?{scope} GROUP BY hour"
    )
    with ledger.snapshot() as rows:
        found = list(rows(query, (hour_of(since), until, *scope_values)))
    return sum(float(cost) * _overlap(int(hour), since, until) for hour, cost in found)


def _overlap(hour: int, since: float, until: float) -> float:
    """The fraction of the hour starting at ``hour`` (up to ``until``) that lies in ``[since, until)``."""
    end = min(hour + HOUR_S, until)
    return max(0.0, end - max(hour, since)) / (end - hour) if end > hour else 0.0
