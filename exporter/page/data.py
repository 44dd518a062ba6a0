"""What the cost page shows, as one JSON-ready document built from the JSON API's own data functions, so the page
and ``/api/v1/...`` never disagree::

    page_data(ledger, settings, presets=FILE_PRESETS)   # the document ``report --html`` embeds
"""

from __future__ import annotations

import time
from datetime import date, timedelta

from spendwatch.exporter.api import alerts, analytics, overview
from spendwatch.exporter.api.times import rfc3339
from spendwatch.exporter.ledger.history import GUARD_DEGRADED, THRESHOLD_CROSSED
from spendwatch.exporter.ledger.hourly import daily_sums
from spendwatch.exporter.periods import local_day
from spendwatch.exporter.report import grouped_rows
from spendwatch.instrumentation.pricing import rounded_usd

__all__ = ["FILE_PRESETS", "SERVED_CHOICES", "SUMMARY_DAYS", "Presets", "analytics_key", "page_data"]

# The page's fixed window: the summary, top tables, unpriced calls and the alert history cover these last days.
SUMMARY_DAYS = 30
TOP_ROWS = 10


class Presets:
    """The ranges and groupings the reader can pick, and which of their analytics the page carries with it."""

    def __init__(self, ranges: tuple[str, ...], groups: tuple[str, ...], embed_all: bool) -> None:
        self.ranges, self.groups, self.embed_all = ranges, groups, embed_all
        # The top documents are summed from the calls themselves (LightRAG's document is kept per call), seconds on
        # a ledger of millions: a served page loads them from /api/v1/report after it shows, a file carries them.
        self.embed_documents = embed_all

    def embedded(self) -> list[tuple[str, str]]:
        """(range, by) pairs whose analytics go into the page: all of them in a file, the first on a served page
        (the reader's other picks are fetched from /api/v1/analytics)."""
        pairs = [(span, by) for span in self.ranges for by in self.groups]
        return pairs if self.embed_all else pairs[:1]


# A file opens with no server behind it: every choice it offers is in it. 7d by model first: what the page opens on.
FILE_PRESETS = Presets(("7d", "24h", "30d"), ("model", "category", "operation", "stage"), embed_all=True)
SERVED_CHOICES = Presets(("7d", "24h", "30d", "90d"), ("model", "category", "operation", "stage", "provider"), False)


def granularity(span: str) -> str:
    """Hours for a range of a day or two, days for anything longer (a bar per hour of a month is unreadable)."""
    return "hour" if span.endswith("h") else "day"


def analytics_key(span: str, by: str) -> str:
    return f"{span}|{by}"


def page_data(ledger, settings, *, presets: Presets, now: float | None = None, prices_as_of: float | None = None):
    """The page's document: budgets, analytics for the embedded choices, the last SUMMARY_DAYS days' (``window``)
    totals, top categories and documents (None: to be fetched), unpriced calls by model, the alert history, and the
    price data's date."""
    now = time.time() if now is None else now
    window_s = SUMMARY_DAYS * 86400
    by_model = analytics(ledger, settings, range_s=window_s, granularity="day", by="model", now=now)["totals"]
    by_category = analytics(ledger, settings, range_s=window_s, granularity="day", by="category", now=now)["totals"]
    history = alerts(ledger, range_s=window_s, now=now)
    until = local_day(now, settings.timezone)
    since = until - timedelta(days=SUMMARY_DAYS - 1)
    documents = grouped_rows(ledger, since, until, "document")[:TOP_ROWS] if presets.embed_documents else None
    return {
        "generated_at": rfc3339(now),
        "timezone": settings.timezone.key,
        "prices_as_of": None if prices_as_of is None else rfc3339(prices_as_of),
        "summary_days": SUMMARY_DAYS,
        "summary": _summary(ledger, since, until, history["alerts"]),
        "overview": overview(ledger, settings, now),
        "controls": {"ranges": list(presets.ranges), "groups": list(presets.groups)},
        "analytics": {
            analytics_key(span, by): {"range": span, **_analytics(ledger, settings, span, by, now)}
            for span, by in presets.embedded()
        },
        "top_categories": by_category[:TOP_ROWS],
        "top_documents": documents,
        "window": {"start": since, "end": until},
        "unpriced_by_model": [group for group in by_model if group["unpriced_calls"]],
        "alerts": history["alerts"],
    }


def _analytics(ledger, settings, span: str, by: str, now: float) -> dict:
    seconds = int(span[:-1]) * (3600 if span.endswith("h") else 86400)
    return analytics(ledger, settings, range_s=seconds, granularity=granularity(span), by=by, now=now)


def _summary(ledger, first_day: date, last_day: date, events: list[dict]) -> dict:
    """The window's totals from the per-day totals (refused calls are counted there, as outcome ``blocked``);
    degraded calls and crossings from the alert history, which is where they are kept."""
    totals = daily_sums(ledger, first_day, last_day + timedelta(days=1), "provider")

    def summed(column: str) -> int:
        return sum(int(total[column]) for total in totals)

    return {
        "cost_usd": rounded_usd(sum(float(total["cost_usd"]) for total in totals)),
        "calls": summed("success") + summed("error") + summed("blocked"),
        "unpriced_calls": summed("unpriced"),
        "guard_refused_calls": summed("blocked"),
        "guard_degraded_calls": sum(int(event.get("calls", 0)) for event in events if event["kind"] == GUARD_DEGRADED),
        "threshold_crossings": sum(1 for event in events if event["kind"] == THRESHOLD_CROSSED),
    }
