"""LightRAG spend per stage for the API's analytics: the stage is kept per call (``spendwatch.lightrag.stage`` in the
call's attributes), not in the running totals, so this scans the calls of the range's days, as ``report --by stage``
does. Rows come shaped like the totals' sums (:func:`spendwatch.exporter.ledger.hourly.daily_sums`), so analytics
buckets and groups them the same way. Cache hits cost nothing and are not calls to a model: they are left out."""

from __future__ import annotations

from datetime import date

from spendwatch.exporter.ledger.hourly import SUMMED, hour_of
from spendwatch.exporter.periods import local_day
from spendwatch.exporter.stage_report import STAGE_GROUPINGS, call_attributes

__all__ = ["stage_sums"]

_STAGE = STAGE_GROUPINGS["stage"]
_CACHE_HIT = "cache_hit"
_OUTCOMES = ("success", "error", "blocked")


def stage_sums(ledger, tz, first_day: date, last_day: date, granularity: str) -> list[dict]:
    """:data:`SUMMED` per bucket (``day``: local day as ISO text; ``hour``: UTC hour start) and LightRAG stage."""
    sums: dict[tuple, dict] = {}
    for call in ledger.calls_with_attributes(first_day, last_day):
        stage = call_attributes(call["attributes"]).get(_STAGE)
        if stage is None or call["operation"] == _CACHE_HIT:
            continue
        at = float(call["ts"])
        bucket = local_day(at, tz).isoformat() if granularity == "day" else hour_of(at)
        row = sums.setdefault((bucket, stage), {granularity: bucket, "stage": stage} | dict.fromkeys(SUMMED, 0))
        _add(row, call)
    return list(sums.values())


def _add(row: dict, call: dict) -> None:
    row["cost_usd"] += float(call["cost_usd"] or 0.0)
    row["unpriced"] += call["cost_usd"] is None
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"):
        row[name] += int(call[name] or 0)
    if call["outcome"] in _OUTCOMES:
        row[call["outcome"]] += 1
