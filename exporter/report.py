"""Spend reports over the ledger's per-day totals, and the recent trend with a month-end projection.

Everything here reads ``Ledger.daily_totals`` (O(days × series), never the per-call rows) and is otherwise pure, so
the CLI and any Python caller get the same numbers::

    rows = report_rows(ledger, date(2025, 3, 1), date(2025, 3, 31), by="model")   # both days included
    print(format_table(rows, report_columns("model")))
    print(trend(ledger, settings, days=7))

Days are the configured time zone's calendar days, fixed when each call was written to the ledger.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from spendwatch.exporter.mapping import printable
from spendwatch.exporter.periods import local_day, period_days
from spendwatch.exporter.projection import projected_spend, remaining_days
from spendwatch.exporter.stage_report import STAGE_GROUPINGS, stage_columns, stage_rows
from spendwatch.instrumentation.pricing import USD_DECIMALS, rounded_usd

__all__ = [
    "ALL_GROUPINGS",
    "GROUPINGS",
    "NOT_RECORDED",
    "MIN_TREND_DAYS",
    "NOT_ENOUGH_HISTORY",
    "TREND_BAND",
    "Trend",
    "format_csv",
    "format_json",
    "format_table",
    "format_usd",
    "is_money",
    "grouped_columns",
    "grouped_rows",
    "report_columns",
    "report_document",
    "report_rows",
    "total_row",
    "trend",
]

# ``service``: the OpenTelemetry service.name of the process (or OTLP resource) that made the calls.
GROUPINGS = ("day", "model", "category", "operation", "provider", "service")
# What else ``report --by`` and the API's report take: LightRAG's stage, document and query mode, read from the calls'
# attributes (:mod:`spendwatch.exporter.stage_report`). NOT_RECORDED: groupings the ledger does not keep (none now).
NOT_RECORDED: dict[str, str] = {}
ALL_GROUPINGS = GROUPINGS + tuple(STAGE_GROUPINGS) + tuple(NOT_RECORDED)
# A trend is "flat" while the fitted daily change stays within ±5 % of the average daily cost.
TREND_BAND = 0.05
# Complete days of history a trend needs (fewer when fewer are asked for): one day has no direction.
MIN_TREND_DAYS = 2
NOT_ENOUGH_HISTORY = "not enough history"
# Summed from the ledger's per-day counters, in output order.
_SUMMED = ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")
_COUNTED = ("requests", "unpriced", "estimated")


# --- report rows ----------------------------------------------------------------------------------------------------


def report_rows(ledger, since: date, until: date, by: str = "day") -> list[dict]:
    """Spend from ``since`` to ``until``, **both days included**, one row per ``by`` value that had calls.

    Each row: the ``by`` key (a calls' category of none is ``None``), ``cost_usd`` (priced calls only),
    ``input_tokens`` (cached included), ``output_tokens`` (reasoning included), ``cache_read_tokens``,
    ``reasoning_tokens``, ``requests`` (successful, failed and blocked), ``unpriced`` and ``estimated`` (call
    counts). Days come in calendar order; other groupings by cost, highest first, then by name.
    """
    if by not in GROUPINGS:
        raise ValueError(f"cannot group a report by {by!r}; choose one of {', '.join(GROUPINGS)}")
    if since > until:
        raise ValueError(f"the report starts on {since} after it ends on {until}")
    groups: dict[str | None, dict] = {}
    for total in ledger.daily_totals(since, until + timedelta(days=1)):
        key = total[by] if by not in ("category", "service") else (total[by] or None)
        _accumulate(groups.setdefault(key, _empty_row(by, key)), total)
    return _sorted(list(groups.values()), by)


def grouped_rows(ledger, since: date, until: date, by: str) -> list[dict]:
    """The rows of any grouping ``report --by`` takes (:data:`ALL_GROUPINGS`): :func:`report_rows` from the per-day
    totals, or LightRAG's stage rows from the calls. A grouping the ledger has no data for is a ValueError."""
    if by in NOT_RECORDED:
        raise ValueError(f"cannot group a report by {by}: {NOT_RECORDED[by]}")
    if by in STAGE_GROUPINGS:
        return stage_rows(ledger, since, until, by=by)
    return report_rows(ledger, since, until, by=by)


def grouped_columns(by: str) -> list[str]:
    """The columns of :func:`grouped_rows` for a grouping, in display order."""
    if by in STAGE_GROUPINGS:
        return stage_columns(by)
    return report_columns(by)


def report_document(rows: Sequence[dict], since: date, until: date, by: str) -> dict:
    """A report as ``--format json`` and the API write it (add ``trend`` for ``--trend``)."""
    return {"since": since, "until": until, "by": by, "rows": list(rows)}


def report_columns(by: str) -> list[str]:
    """The columns of :func:`report_rows` for a grouping, in display order."""
    return [by, *_SUMMED, *_COUNTED]


def total_row(rows: Sequence[dict], by: str, label: str = "total") -> dict:
    """All rows added up, labelled ``label`` in the ``by`` column."""
    total = _empty_row(by, label)
    for row in rows:
        for column in (*_SUMMED, *_COUNTED):
            total[column] += row[column]
    return total


def _empty_row(by: str, key) -> dict:
    return {by: key, "cost_usd": 0.0} | {column: 0 for column in (*_SUMMED[1:], *_COUNTED)}


def _accumulate(row: dict, total: dict) -> None:
    row["cost_usd"] += float(total["cost_usd"])
    for column in _SUMMED[1:]:
        row[column] += int(total[column])
    row["requests"] += int(total["success"] + total["error"] + total["blocked"])
    row["unpriced"] += int(total["unpriced"])
    row["estimated"] += int(total["estimated"])


def _sorted(rows: list[dict], by: str) -> list[dict]:
    if by == "day":
        return sorted(rows, key=lambda row: row["day"])
    return sorted(rows, key=lambda row: (-row["cost_usd"], row[by] or ""))


# --- trend ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """Recent daily spend, its direction, and where the month ends at that rate. See :func:`trend`.

    Without enough history the direction is :data:`NOT_ENOUGH_HISTORY`, there are no daily costs, and the average,
    slope and projection are None."""

    first_day: date  # the window's first complete day (the ledger's first day, when its history is shorter)
    last_day: date  # the window's last complete day (yesterday)
    days_asked: int
    daily_cost_usd: tuple[float, ...]  # one per day of the window, zero for days without calls
    average_daily_usd: float | None
    slope_usd_per_day: float | None  # least-squares slope of the daily cost
    direction: str  # "rising" | "flat" | "falling" | "not enough history"
    month_to_date_usd: float  # this month so far, today included
    remaining_days: float  # what is left of the month, today's unfinished part included
    projected_month_usd: float | None

    def as_dict(self) -> dict:
        answer = asdict(self)
        answer["first_day"], answer["last_day"] = self.first_day.isoformat(), self.last_day.isoformat()
        answer["daily_cost_usd"] = list(self.daily_cost_usd)
        return answer

    def __str__(self) -> str:
        month = f"month to date ${format_usd(self.month_to_date_usd)}"
        if self.average_daily_usd is None:
            needed = min(self.days_asked, MIN_TREND_DAYS)
            return (
                f"trend: {NOT_ENOUGH_HISTORY} (the ledger's calls start on {self.first_day}; a trend needs {needed} "
                f"complete days before today, so there is no projection yet)\n{month}"
            )
        days = len(self.daily_cost_usd)
        shorter = "" if days == self.days_asked else f", all the ledger has of the {self.days_asked} days asked"
        return (
            f"trend over {days} complete days ({self.first_day} to {self.last_day}{shorter}): "
            f"average ${format_usd(self.average_daily_usd)}/day, {self.direction} "
            f"(fitted change {_signed_usd(self.slope_usd_per_day)} USD from one day to the next)\n"
            f"{month}; at that average the month ends at "
            f"${format_usd(self.projected_month_usd)} ({self.remaining_days:.2f} days left)"
        )


def trend(ledger, settings, days: int = 7, now: float | None = None) -> Trend:
    """Average daily cost over the last ``days`` complete days and where the month ends at that rate.

    - The window is the ``days`` calendar days (in ``settings.timezone``) before today; today is left out because
      it is not over. A day without calls counts as $0, but days before the ledger's first call are no history:
      the window starts at that day instead, and with fewer than :data:`MIN_TREND_DAYS` complete days (or
      ``days``, if fewer) the trend has :data:`NOT_ENOUGH_HISTORY` and no average, direction or projection.
    - Direction: the least-squares slope of daily cost against the day, compared with the average daily cost.
      ``rising`` when the slope exceeds +5 % of the average per day (:data:`TREND_BAND`), ``falling`` below −5 %,
      ``flat`` otherwise (and always when the window is one day or nothing was spent).
    - Projection: month-to-date spend (today so far included) + average × remaining days, where remaining days are
      the whole days after today plus the unfinished fraction of today (by the clock, so DST days count right):
      :mod:`spendwatch.exporter.projection`, the method the API's overview and the exhaustion alert share.
    """
    if days < 1:
        raise ValueError(f"a trend needs at least one complete day, not {days}")
    now = time.time() if now is None else now
    tz = settings.timezone
    today = local_day(now, tz)
    by_day = _costs_by_day(ledger, today - timedelta(days=days), today)
    first_day = _history_start(ledger, today - timedelta(days=days), today, by_day)
    month_first, month_end = period_days("month", today)
    month_to_date = ledger.spend(month_first, month_end)
    remaining = remaining_days(now, tz, "month")
    known = {"first_day": first_day, "last_day": today - timedelta(days=1), "days_asked": days}
    known |= {"month_to_date_usd": month_to_date, "remaining_days": remaining}
    count = (today - first_day).days
    if count < min(days, MIN_TREND_DAYS):
        return Trend(
            **known,
            daily_cost_usd=(),
            average_daily_usd=None,
            slope_usd_per_day=None,
            direction=NOT_ENOUGH_HISTORY,
            projected_month_usd=None,
        )
    daily = [by_day.get((first_day + timedelta(days=offset)).isoformat(), 0.0) for offset in range(count)]
    average = sum(daily) / count
    slope = _least_squares_slope(daily)
    return Trend(
        **known,
        daily_cost_usd=tuple(daily),
        average_daily_usd=average,
        slope_usd_per_day=slope,
        direction=_direction(slope, average),
        projected_month_usd=projected_spend(month_to_date, average, remaining),
    )


def _costs_by_day(ledger, first_day: date, end_day: date) -> dict[str, float]:
    """Cost per ISO day in ``[first_day, end_day)``, for days with calls (priced or not)."""
    by_day: dict[str, float] = {}
    for total in ledger.daily_totals(first_day, end_day):
        by_day[total["day"]] = by_day.get(total["day"], 0.0) + total["cost_usd"]
    return by_day


def _history_start(ledger, window_first: date, today: date, by_day: dict[str, float]) -> date:
    """The window's first day, or the ledger's first day with calls when that is later (today, for none yet)."""
    if window_first.isoformat() in by_day:
        return window_first
    # A window that starts quiet: either the ledger began inside it, or the quiet days are real history.
    if ledger.daily_totals(date.min, window_first):
        return window_first
    return date.fromisoformat(min(by_day)) if by_day else today


def _least_squares_slope(values: Sequence[float]) -> float:
    count = len(values)
    if count < 2:
        return 0.0
    mean_x, mean_y = (count - 1) / 2, sum(values) / count
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    variance = sum((x - mean_x) ** 2 for x in range(count))
    return covariance / variance


def _direction(slope: float, average: float) -> str:
    if average <= 0 or abs(slope) <= TREND_BAND * average:
        return "flat"
    return "rising" if slope > 0 else "falling"


# --- output formats -------------------------------------------------------------------------------------------------


def format_usd(amount: float) -> str:
    """Money as a person reads it: 6 decimals, and for a small amount as many more (up to the 9 of machine formats)
    as show its first three digits, so an embedding's $0.00000002 is not shown as 0.000000."""
    if amount == 0 or abs(amount) >= _SIX_DECIMALS_SUFFICE:
        return f"{amount:.6f}"
    decimals = min(USD_DECIMALS, 2 - math.floor(math.log10(abs(amount))))
    return f"{amount:.{decimals}f}"


# From 0.0001 up, six decimals show at least three significant digits.
_SIX_DECIMALS_SUFFICE = 1e-4


def _signed_usd(amount: float) -> str:
    text = format_usd(amount)
    return text if text.startswith("-") else f"+{text}"


def is_money(column: str) -> bool:
    """Whether a column or key holds USD: ``cost_usd``, ``limit_usd``, ``slope_usd_per_day``, ..."""
    return column.endswith("_usd") or "_usd_" in column


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain-text table: a header, a rule, one line per row. Money (:func:`is_money`) as :func:`format_usd` shows
    it, numbers right-aligned, no value (``None``: no category, say) as ``-``."""
    cells = [[_cell(column, row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    numeric = [_is_numeric_column(rows, column) for column in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(list(columns)), line(rule), *(line(values) for values in cells)])


def format_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header line; money rounded to 1e-9 USD (:func:`rounded_usd`), other values as they are, no value
    (``None``: no category, say) as an empty field."""
    money = [column for column in columns if is_money(column)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rounded_money(row, money) for row in rows)
    return buffer.getvalue()


def format_json(value, *, indent: int | None = 2) -> str:
    """JSON, indented unless ``indent`` is None (then compact, as the API answers); money (:func:`is_money` keys)
    rounded to 1e-9 USD, dates as ISO text, no value as null, and non-finite numbers (which JSON lacks) as null."""
    separators = (",", ":") if indent is None else None
    return json.dumps(_json_safe(value), indent=indent, separators=separators, default=_json_default)


def _rounded_money(row: dict, money: Sequence[str]) -> dict:
    rounded = dict(row)
    for column in money:
        if isinstance(rounded.get(column), float):
            rounded[column] = rounded_usd(rounded[column])
    return rounded


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if is_money(column) and isinstance(value, int | float):
        return format_usd(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return printable(str(value), _MAX_CELL)


_MAX_CELL = 60


def _is_numeric_column(rows: Sequence[dict], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)


def _json_safe(value, money: bool = False):
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return rounded_usd(value) if money else value
    if isinstance(value, dict):
        return {key: _json_safe(item, money or is_money(str(key))) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item, money) for item in value]
    return value


def _json_default(value):
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
