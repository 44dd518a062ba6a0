"""Months of generated call history for the JSON API and FOCUS tests: every hour of the last ``days`` days has calls
of three models (one unpriced), three categories (one call in three has none), two operations and two providers,
some failed and some refused by the guard, each hour's calls a little different, so sums over the wrong range, group
or hour come out wrong."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from spendwatch.exporter import LedgerEntry
from spendwatch.instrumentation.records import UsageRecord

MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-unknown-model"))
SERVICES = ("checkout", "search", None)  # the service.name of the process that made the call; None: none known
CATEGORIES = ("search", "summarise", None)
HOUR = 3600.0
_ids = itertools.count()


def generated_history(end: float, days: int) -> list[LedgerEntry]:
    """Calls from ``days`` days before ``end`` up to ``end`` (unix seconds, excluded), oldest first."""
    first_hour = int(end // HOUR) * HOUR - days * 86400
    entries = []
    for hour_index in range(days * 24 + 1):
        hour = first_hour + hour_index * HOUR
        for slot in range(1 + hour_index % 3):
            at = hour + 60.0 + slot * 900.0 + (hour_index * 7) % 600
            if at < end:
                entries.append(_call(hour_index, slot, at))
    return entries


def _call(hour_index: int, slot: int, at: float) -> LedgerEntry:
    n = hour_index * 3 + slot
    provider, model = MODELS[n % len(MODELS)]
    record = UsageRecord(
        provider,
        "embeddings" if n % 5 == 0 else "chat",
        model,
        input_tokens=100 + n % 400,
        output_tokens=0 if n % 5 == 0 else 20 + n % 90,
        cache_read_tokens=(n % 4) * 10,
        outcome="blocked" if n % 47 == 0 else "error" if n % 31 == 0 else "success",
        category=CATEGORIES[n % len(CATEGORIES)],
        service=SERVICES[n % len(SERVICES)],
    )
    if record.outcome == "blocked":
        record.guard_actions = (("global", "block"),)
        record.input_tokens = record.output_tokens = record.cache_read_tokens = 0
    priced = model != "claude-unknown-model" and record.outcome != "blocked"
    record.cost_usd = 0.000001 * (1 + (n * 37) % 997) if priced else None
    record.pricing = "test" if priced else "unpriced"
    record.start_time = at
    return LedgerEntry(f"history-{next(_ids)}", record)


def ingest_all(ledger, entries: Iterable[LedgerEntry], batch: int = 2000) -> None:
    entries = list(entries)
    for start in range(0, len(entries), batch):
        ledger.ingest(entries[start : start + batch])


def in_range(entries: Iterable[LedgerEntry], since: float, until: float) -> list:
    """The records of calls that started in ``[since, until)``."""
    return [entry.record for entry in entries if since <= entry.record.start_time < until]
