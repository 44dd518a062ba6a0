"""What happened when: threshold crossings, guard refusals and degradations, and ledger outages, kept as events.

Alertmanager keeps no history, so the ledger does: each happening is a row of ``events`` (chained into the audit
trail like every event) with its time and one of :data:`ALERT_KINDS`. The JSON API's ``/api/v1/alerts`` and the cost
page read them back newest first with :func:`alert_events`.

- ``threshold_crossed``: a budget reached a level (warning, critical, exceeded) in a period. Every process watching
  the budget may see the crossing; only the first one records it (:func:`record_threshold_crossing`).
- ``guard_refused`` / ``guard_degraded``: calls the guard refused (block or throttle) or degraded, one event per
  budget and action for each batch of calls the ledger takes (:func:`add_guard_events`, inside ingest's
  transaction), so a storm of refusals is a handful of rows, each with its count and first and last time.
- ``ledger_unavailable``: a process could not write the ledger from one time to another (:func:`record_outage`,
  written once the ledger takes writes again, which is the only time it can be).
- ``calls_interrupted``: calls a process had on the wire when it died, recorded as estimates when its journal was
  recovered (:func:`record_interrupted_calls`; see :mod:`spendwatch.exporter.inflight`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

__all__ = [
    "ALERT_KINDS",
    "CALLS_INTERRUPTED",
    "GUARD_DEGRADED",
    "GUARD_REFUSED",
    "LEDGER_UNAVAILABLE",
    "THRESHOLD_CROSSED",
    "add_guard_events",
    "alert_events",
    "record_interrupted_calls",
    "record_outage",
    "record_threshold_crossing",
]

THRESHOLD_CROSSED = "threshold_crossed"
GUARD_REFUSED = "guard_refused"
GUARD_DEGRADED = "guard_degraded"
LEDGER_UNAVAILABLE = "ledger_unavailable"
CALLS_INTERRUPTED = "calls_interrupted"
ALERT_KINDS = (THRESHOLD_CROSSED, GUARD_REFUSED, GUARD_DEGRADED, LEDGER_UNAVAILABLE, CALLS_INTERRUPTED)
# The guard's actions that refuse a call, and the one that changes it.
_REFUSALS = ("block", "throttle")
_DEGRADE = "degrade"
# A crossing recorded once per budget, period, period start and level: its marker in the key-value table.
_CROSSING_MARK = "threshold-crossed:{name}:{period}:{start}:{level}"


def record_threshold_crossing(ledger, status, level: str, *, at: float) -> bool:
    """Record that ``status``'s budget reached ``level`` in its current period, unless some process already did.
    True when this call recorded it."""
    mark = _CROSSING_MARK.format(
        name=status.name, period=status.period, start=status.period_start.isoformat(), level=level
    )
    detail = {
        "budget": status.name,
        "period": status.period,
        "level": level,
        "limit_usd": status.limit_usd,
        "spent_usd": status.spent_usd,
        "threshold_ratio": status.thresholds[level],
        "period_start": status.period_start.isoformat(),
    }
    with ledger.chained_transaction() as cursor:
        # The chain's head is held: no other writer checks the same mark between this read and the insert.
        if ledger.backend.execute(cursor, "SELECT 1 FROM spendwatch_meta WHERE key = ?", (mark,)):
            return False
        ledger.backend.execute(cursor, "INSERT INTO spendwatch_meta (key, value) VALUES (?, ?)", (mark, str(at)))
        ledger.chained_event(cursor, THRESHOLD_CROSSED, detail, at=at)
    return True


def add_guard_events(ledger, cursor, records: Iterable) -> None:
    """Inside ingest's transaction: one event per budget and guard action (refusal or degradation) among the
    ``records`` just inserted, with how many calls, the first and last call's time, and an example error."""
    groups: dict[tuple[str, str, str], dict] = {}
    for record in records:
        for budget, action in record.guard_actions:
            kind = GUARD_REFUSED if action in _REFUSALS else GUARD_DEGRADED if action == _DEGRADE else None
            if kind is None:
                continue
            group = groups.setdefault((kind, budget, action), _new_group(budget, action, record))
            group["calls"] += 1
            group["first_at"] = min(group["first_at"], record.start_time)
            group["last_at"] = max(group["last_at"], record.start_time)
    for (kind, _, _), detail in groups.items():
        ledger.chained_event(cursor, kind, detail, at=detail["last_at"])


def _new_group(budget: str, action: str, record) -> dict:
    return {
        "budget": budget,
        "action": action,
        "calls": 0,
        "first_at": record.start_time,
        "last_at": record.start_time,
        "model": record.request_model,
        "provider": record.provider,
    }


def record_outage(ledger, *, since: float, until: float, errors: int, error: str, process: dict) -> int:
    """Record that ``process`` (pid, host) could not write the ledger from ``since`` to ``until``; the event's id."""
    detail = {"since": since, "until": until, "errors": errors, "error": error, **process}
    # Kept at the outage's end, the time it is known whole, so the newest-first history shows it there.
    with ledger.chained_transaction() as cursor:
        return ledger.chained_event(cursor, LEDGER_UNAVAILABLE, detail, at=until)


def record_interrupted_calls(ledger, records: list, *, at: float) -> int:
    """Record that the calls of ``records`` (their estimates just ingested) were on the wire when their process
    died: how many, their estimated cost, their first and last start and models. The event's id."""
    detail = {
        "calls": len(records),
        "cost_usd": sum(record.cost_usd or 0.0 for record in records),
        "unpriced_calls": sum(1 for record in records if record.cost_usd is None),
        "first_at": min(record.start_time for record in records),
        "last_at": max(record.start_time for record in records),
        "models": sorted({record.request_model for record in records}),
    }
    with ledger.chained_transaction() as cursor:
        return ledger.chained_event(cursor, CALLS_INTERRUPTED, detail, at=at)


def alert_events(ledger, since: float, until: float) -> list[dict]:
    """The events of :data:`ALERT_KINDS` from ``since`` to ``until`` (unix seconds, ``until`` excluded), newest
    first: each ``{"id", "at", "kind", "detail"}`` with the detail parsed."""
    kinds = ", ".join("?" for _ in ALERT_KINDS)
    query = f"SELECT id, ts, kind, detail FROM events WHERE ts >= ? AND ts < ? AND kind IN ({kinds})"
    with ledger.snapshot() as rows:
        found = [
            {"id": int(event_id), "at": float(ts), "kind": kind, "detail": _parsed(detail)}
            for event_id, ts, kind, detail in rows(query, (since, until, *ALERT_KINDS))
        ]
    return sorted(found, key=lambda event: (event["at"], event["id"]), reverse=True)


def _parsed(text: str) -> dict:
    try:
        detail = json.loads(text)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}
