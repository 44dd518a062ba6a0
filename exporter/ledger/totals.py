"""The running totals: the one writer of ``totals``, ``daily_totals``, ``hourly_totals`` and ``duration_buckets``.

The totals must always equal a scan of ``calls`` (``spendwatch audit verify`` checks it), so whatever changes a calls
row changes the totals in the same transaction, through :class:`TotalsChange`: ingest adds each new call's counters,
a re-pricing adds the difference in cost. Changes are gathered per series first, so a batch of calls costs one
upsert per series touched, not one per call; and the calls of a batch are grouped per series and hour before any
counter is added, so the adding is done a column at a time by ``sum`` rather than a Python loop per call.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from spendwatch.exporter.ledger.schema import BUCKET_KEYS, TOTAL_COUNTERS, TOTAL_KEYS, has_no_price
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["HOUR_S", "REQUEST_DURATION_BUCKETS", "TotalsChange", "add_to", "counters", "hour_of"]

# Upper bounds (seconds) of llm_request_duration_seconds; LLM calls take from 100 ms to minutes.
REQUEST_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HOUR_S = 3600


def hour_of(unix_seconds: float) -> int:
    """The start of the UTC hour an instant is in: the ``hour`` of ``hourly_totals``."""
    return int(unix_seconds // HOUR_S) * HOUR_S


def counters(r: UsageRecord) -> list[float]:
    """A call's contribution to each of :data:`TOTAL_COUNTERS`."""
    return [
        r.cost_usd or 0.0,
        r.input_tokens,
        r.output_tokens,
        r.cache_read_tokens,
        r.reasoning_tokens,
        (r.calls - r.failed_calls) if r.outcome == "success" else 0,
        r.failed_calls + (r.calls if r.outcome == "error" else 0),
        r.calls if r.outcome == "blocked" else 0,
        int(has_no_price(r.cost_usd, r.pricing)),
        int(r.estimated),
        r.duration_s,
        1,
        r.cache_write_tokens,
        r.input_audio_tokens,
        r.output_audio_tokens,
        r.input_image_tokens,
        r.output_image_tokens,
    ]


def add_to(into: dict, key: tuple, values: Sequence[float]) -> None:
    """Add ``values`` to what ``into`` holds for ``key``, element by element."""
    current = into.get(key)
    if current is None:
        into[key] = list(values)
    else:
        for index, value in enumerate(values):
            current[index] += value


def _bucket_of(duration_s: float) -> float | None:
    """The duration bucket a call is counted in (the first that bounds it), or None: a call longer than the last
    bucket is only in the sum and count."""
    index = bisect.bisect_left(REQUEST_DURATION_BUCKETS, duration_s)
    if index < len(REQUEST_DURATION_BUCKETS) and duration_s <= REQUEST_DURATION_BUCKETS[index]:
        return REQUEST_DURATION_BUCKETS[index]
    return None


class TotalsChange:
    """What one transaction adds to the running totals, per series and per local day, then written by :meth:`apply`.

    ``columns`` are the counters it changes (all of them for new calls; a re-pricing changes cost and unpriced)."""

    def __init__(self, columns: Sequence[str] = TOTAL_COUNTERS) -> None:
        self.columns = tuple(columns)
        self.totals: dict[tuple, list[float]] = {}
        self.daily: dict[tuple, list[float]] = {}
        self.hourly: dict[tuple, list[float]] = {}
        self.buckets: dict[tuple, list[float]] = {}

    def add(self, day: str, key: tuple, values: Sequence[float], *, at: float) -> None:
        """``values`` (one per column) for the series ``key`` (:data:`TOTAL_KEYS`) of a call that started at ``at``
        (unix seconds) on local day ``day``."""
        add_to(self.totals, key, values)
        add_to(self.daily, (day, *key), values)
        add_to(self.hourly, (hour_of(at), *key), values)

    def add_calls(self, calls: Iterable[tuple[str, UsageRecord]]) -> None:
        """New calls, each with its local day: all their counters, in the series, day and hour of each."""
        groups: dict[tuple, list[list[float]]] = {}
        durations: dict[tuple, int] = {}
        for day, r in calls:
            series = (r.provider, r.request_model, r.operation, r.category or "", r.service or "")
            key = (day, hour_of(r.start_time), *series)
            group = groups.get(key)
            if group is None:
                groups[key] = [counters(r)]
            else:
                group.append(counters(r))
            bucket = _bucket_of(r.duration_s)
            if bucket is not None:
                bucket_key = (r.provider, r.request_model, r.operation, bucket)
                durations[bucket_key] = durations.get(bucket_key, 0) + 1
        for (day, hour, *key), values in groups.items():
            self.add(day, tuple(key), [sum(column) for column in zip(*values, strict=True)], at=hour)
        for bucket_key, count in durations.items():
            add_to(self.buckets, bucket_key, [count])

    def apply(self, backend, cursor) -> None:
        backend.add_totals(cursor, "totals", TOTAL_KEYS, self.columns, self.totals)
        backend.add_totals(cursor, "daily_totals", ("day", *TOTAL_KEYS), self.columns, self.daily)
        backend.add_totals(cursor, "hourly_totals", ("hour", *TOTAL_KEYS), self.columns, self.hourly)
        backend.add_totals(cursor, "duration_buckets", BUCKET_KEYS, ("count",), self.buckets)
