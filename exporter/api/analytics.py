"""``/api/v1/analytics``: spend, tokens and calls per day or hour and per group, over a recent range.

Read from the per-day totals (``granularity="day"``: the configured time zone's days) or the per-hour totals
(``"hour"``: UTC hours), so a year of history costs O(buckets × series), never a scan of the calls. The one
exception is ``by="stage"`` (LightRAG's stages are kept per call): it scans the calls of the range's days
(:mod:`.stages`)::

    analytics(ledger, settings, range_s=7 * 86400, granularity="day", by="model")

Every bucket of the range is listed, oldest first, with a group per value of ``by`` that had calls in it (costliest
first); ``totals`` adds each group up over the range. A call without a category is in the group ``null``. Money is
already rounded to 1e-9 USD, so the answer goes to ``json.dumps`` as it is (a year by day has thousands of groups).
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from spendwatch.exporter.api.params import BadRequest
from spendwatch.exporter.api.stages import stage_sums
from spendwatch.exporter.api.times import rfc3339
from spendwatch.exporter.focus import utc_text
from spendwatch.exporter.ledger.hourly import HOUR_S, daily_sums, hour_of, hourly_sums
from spendwatch.exporter.periods import local_day
from spendwatch.instrumentation.pricing import rounded_usd

__all__ = ["GRANULARITIES", "GROUPS", "UNAVAILABLE_GROUPS", "analytics"]

GRANULARITIES = ("day", "hour")
GROUPS = ("model", "category", "operation", "provider", "stage", "service")
# Groupings the running totals do not carry, and why (the API answers them with a 400 that says so).
UNAVAILABLE_GROUPS: dict[str, str] = {}  # groupings the ledger does not keep (none since it keeps the service)
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")


def analytics(ledger, settings, *, range_s: int, granularity: str, by: str, now: float | None = None) -> dict:
    """The range's buckets (the one ``now`` is in included) with their groups, and the totals per group."""
    if by in UNAVAILABLE_GROUPS:
        raise BadRequest("by", by, f"by={by} is not available: {UNAVAILABLE_GROUPS[by]}")
    now = time.time() if now is None else now
    buckets = (
        _day_buckets(ledger, settings.timezone, range_s, now, by)
        if granularity == "day"
        else _hour_buckets(ledger, settings.timezone, range_s, now, by)
    )
    groups: dict[str | None, dict] = {}
    listed = []
    for start, totals in buckets:
        in_bucket: dict[str | None, dict] = {}
        for total in totals:
            key = total[by] or None
            _add(in_bucket.setdefault(key, _empty(by, key)), total)
            _add(groups.setdefault(key, _empty(by, key)), total)
        listed.append({"start": start, "groups": _costliest_first(in_bucket, by)})
    return {
        "granularity": granularity,
        "by": by,
        "start": listed[0]["start"],
        "end": rfc3339(now),
        "buckets": listed,
        "totals": _costliest_first(groups, by),
    }


def _day_buckets(ledger, tz, range_s: int, now: float, by: str) -> list[tuple[str, list[dict]]]:
    today = local_day(now, tz)
    first = today - timedelta(days=math.ceil(range_s / 86400) - 1)
    if by == "stage":
        sums = stage_sums(ledger, tz, first, today, "day")
    else:
        sums = daily_sums(ledger, first, today + timedelta(days=1), by)
    by_day: dict[str, list[dict]] = {}
    for total in sums:
        by_day.setdefault(total["day"], []).append(total)
    days = [first + timedelta(days=offset) for offset in range((today - first).days + 1)]
    return [(utc_text(day, tz), by_day.get(day.isoformat(), [])) for day in days]


def _hour_buckets(ledger, tz, range_s: int, now: float, by: str) -> list[tuple[str, list[dict]]]:
    current = hour_of(now)
    first = current - (math.ceil(range_s / HOUR_S) - 1) * HOUR_S
    if by == "stage":
        days = (local_day(first, tz), local_day(current + HOUR_S - 1, tz))
        sums = [row for row in stage_sums(ledger, tz, *days, "hour") if first <= row["hour"] <= current]
    else:
        sums = hourly_sums(ledger, first, current + HOUR_S, by)
    by_hour: dict[int, list[dict]] = {}
    for total in sums:
        by_hour.setdefault(int(total["hour"]), []).append(total)
    return [(rfc3339(hour), by_hour.get(hour, [])) for hour in range(first, current + HOUR_S, HOUR_S)]


def _empty(by: str, key) -> dict:
    return {by: key, "cost_usd": 0.0, "tokens": dict.fromkeys(_TOKENS, 0), "calls": 0, "unpriced_calls": 0}


def _add(group: dict, total: dict) -> None:
    group["cost_usd"] += float(total["cost_usd"])
    for name in _TOKENS:
        group["tokens"][name] += int(total[name])
    group["calls"] += int(total["success"]) + int(total["error"]) + int(total["blocked"])
    group["unpriced_calls"] += int(total["unpriced"])


def _costliest_first(groups: dict, by: str) -> list[dict]:
    ordered = sorted(groups.values(), key=lambda group: (-group["cost_usd"], group[by] or ""))
    for group in ordered:
        group["cost_usd"] = rounded_usd(group["cost_usd"])  # here, so the answer is JSON-ready as it is
    return ordered
