"""The spend ledger: one row per call with its raw usage, and running totals kept in the same transaction.

SQLite is the embedded default; PostgreSQL (``postgresql://``) lets several hosts share one budget. Both speak the
same SQL here; the dialect differences are in :mod:`spendwatch.exporter.ledger_backends`. Ingest is idempotent (each
entry has a unique id; a replayed entry is not counted twice), and the totals are only ever added to for rows that
were really inserted, so they always equal a scan of ``calls`` without anyone ever scanning it: reading the
current spend or serving ``/metrics`` costs O(series), never O(history).

Every row written to ``calls``, ``events`` and ``repricings`` is chained into the HMAC audit trail in the same
transaction (see :mod:`spendwatch.exporter.audit`); such transactions take the chain head first
(:meth:`Ledger.chained_transaction`), so concurrent writers append one after another.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from spendwatch.exporter import audit
from spendwatch.exporter.periods import local_day
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["Ledger", "LedgerEntry", "DURATION_BUCKETS", "TOTAL_KEYS", "TOTAL_COUNTERS", "budget_scope"]

# Upper bounds (seconds) of llm_request_duration_seconds; LLM calls take from 100 ms to minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOTAL_KEYS = ("provider", "model", "operation", "category")
BUCKET_KEYS = ("provider", "model", "operation", "le")
TOTAL_COUNTERS = (
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "success",
    "error",
    "blocked",
    "unpriced",
    "estimated",
    "duration_sum",
    "duration_count",
)
CALL_COLUMNS = (
    "id",
    "ts",
    "day",
    "provider",
    "operation",
    "model",
    "response_model",
    "category",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "cost_usd",
    "pricing",
    "estimated",
    "outcome",
    "error_type",
    "duration_s",
    "trace_id",
    "span_id",
    "attributes",
)
SCHEMA_VERSION = "1"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A usage record with its ledger identity: the journal file and offset it was written at."""

    entry_id: str
    record: UsageRecord


def _call_row(entry: LedgerEntry, tz: ZoneInfo) -> tuple:
    """The calls row, each value already of its column's type: it is MACed as is (see audit.call_content)."""
    r = entry.record
    return (
        entry.entry_id,
        float(r.start_time),
        local_day(r.start_time, tz).isoformat(),
        r.provider,
        r.operation,
        r.request_model,
        r.response_model,
        r.category or "",
        int(r.input_tokens),
        int(r.output_tokens),
        int(r.cache_read_tokens),
        int(r.reasoning_tokens),
        None if r.cost_usd is None else float(r.cost_usd),
        r.pricing,
        int(r.estimated),
        r.outcome,
        r.error_type,
        float(r.duration_s),
        format(r.trace_id, "032x") if r.trace_id else None,
        format(r.span_id, "016x") if r.span_id else None,
        json.dumps(r.attributes) if r.attributes else None,
    )


def _counters(r: UsageRecord) -> list[float]:
    return [
        r.cost_usd or 0.0,
        r.input_tokens,
        r.output_tokens,
        r.cache_read_tokens,
        r.reasoning_tokens,
        (r.calls - r.failed_calls) if r.outcome == "success" else 0,
        r.failed_calls + (r.calls if r.outcome == "error" else 0),
        r.calls if r.outcome == "blocked" else 0,
        int(r.cost_usd is None),
        int(r.estimated),
        r.duration_s,
        1,
    ]


def _add(into: dict, key: tuple, values: Sequence[float]) -> None:
    current = into.get(key)
    if current is None:
        into[key] = list(values)
    else:
        for index, value in enumerate(values):
            current[index] += value


class Ledger:
    """Backend-neutral ledger logic over a DB-API connection from :mod:`ledger_backends`."""

    def __init__(self, backend, tz: ZoneInfo, *, audit_key: audit.AuditKey | None = None) -> None:
        """``audit_key`` defaults to ``SPENDWATCH_AUDIT_KEY`` or the key file; a bad one is a ConfigError."""
        self.backend = backend
        self.tz = tz
        self._lock = threading.Lock()
        self.audit_key = audit_key or audit.load_audit_key(backend.location)
        audit.check_key(backend, self.audit_key)

    @property
    def location(self) -> str:
        return self.backend.location

    # --- writing -----------------------------------------------------------------------------------------------
    def ingest(self, entries: Iterable[LedgerEntry]) -> int:
        """Add entries not already present; returns how many were new. One transaction."""
        entries = list(entries)
        if not entries:
            return 0
        rows = [_call_row(entry, self.tz) for entry in entries]
        with self.chained_transaction() as cursor:
            inserted = [
                (entry, row) for entry, row in zip(entries, rows, strict=True) if self.backend.insert_call(cursor, row)
            ]
            chained = [("call", row[0], None, row) for _, row in inserted]  # typed by _call_row: MACed as is
            audit.append(self.backend, cursor, self.audit_key, chained)
            fresh = [entry for entry, _ in inserted]
            totals: dict[tuple, list[float]] = {}
            daily: dict[tuple, list[float]] = {}
            buckets: dict[tuple, list[float]] = {}
            decisions: dict[tuple, list[float]] = {}
            lease_costs: dict[str, float] = {}
            for entry in fresh:
                r = entry.record
                for decision in r.guard_actions:
                    _add(decisions, decision, [1])
                for lease in r.leases:
                    lease_costs[lease] = lease_costs.get(lease, 0.0) + (r.cost_usd or 0.0)
                key = (r.provider, r.request_model, r.operation, r.category or "")
                counters = _counters(r)
                _add(totals, key, counters)
                _add(daily, (local_day(r.start_time, self.tz).isoformat(), *key), counters)
                for le in DURATION_BUCKETS:
                    if r.duration_s <= le:
                        _add(buckets, (r.provider, r.request_model, r.operation, le), [1])
                        break
            self.backend.add_totals(cursor, "totals", TOTAL_KEYS, TOTAL_COUNTERS, totals)
            self.backend.add_totals(cursor, "daily_totals", ("day", *TOTAL_KEYS), TOTAL_COUNTERS, daily)
            self.backend.add_totals(cursor, "duration_buckets", BUCKET_KEYS, ("count",), buckets)
            self.backend.add_totals(cursor, "guard_decisions", ("budget", "action"), ("count",), decisions)
            for lease, cost in lease_costs.items():
                # The cost is spend now: it leaves the lease it was drawn from, in the same transaction.
                query = "UPDATE leases SET outstanding_usd = outstanding_usd - ? WHERE lease_id = ?"
                self.backend.execute(cursor, query, (cost, lease))
        return len(fresh)

    def set_budget_limit(self, name: str, period: str, limit_usd: float, *, reason: str = "") -> None:
        """Change a budget's limit from now on; the change itself is kept as an event."""
        at = time.time()
        with self.chained_transaction() as cursor:
            self.backend.upsert_budget_limit(cursor, name, period, limit_usd, at)
            detail = {"name": name, "period": period, "limit_usd": limit_usd, "reason": reason}
            self.chained_event(cursor, "budget_limit_changed", detail, at=at)

    def add_event(self, kind: str, detail: dict) -> int:
        """Keep an event (chained into the audit trail); its id."""
        with self.chained_transaction() as cursor:
            return self.chained_event(cursor, kind, detail, at=time.time())

    @contextlib.contextmanager
    def chained_transaction(self) -> Iterator:
        """A write transaction that holds the audit chain's head: for anything that appends to the chain."""
        with self._lock, self.backend.transaction() as cursor:
            audit.lock(self.backend, cursor)
            yield cursor

    def chained_event(self, cursor, kind: str, detail: dict, *, at: float) -> int:
        """Add an event and its audit record inside a :meth:`chained_transaction`; the event's id."""
        text = json.dumps(detail, default=str)
        event_id = self.backend.add_event(cursor, at, kind, text)
        audit.append(
            self.backend,
            cursor,
            self.audit_key,
            [("event", None, event_id, audit.event_content((event_id, at, kind, text)))],
        )
        return event_id

    # --- reading (never scans calls) ---------------------------------------------------------------------------
    def totals(self) -> list[dict]:
        return self._select_dicts(f"SELECT {', '.join(TOTAL_KEYS + TOTAL_COUNTERS)} FROM totals")

    def duration_buckets(self) -> list[dict]:
        return self._select_dicts(f"SELECT {', '.join(BUCKET_KEYS)}, count FROM duration_buckets")

    def daily_totals(self, first_day: date, end_day: date) -> list[dict]:
        """Per-day totals for days in ``[first_day, end_day)``."""
        columns = ", ".join(("day", *TOTAL_KEYS, *TOTAL_COUNTERS))
        query = f"SELECT {columns} FROM daily_totals WHERE day >= ? AND day < ? ORDER BY day"
        return self._select_dicts(query, (first_day.isoformat(), end_day.isoformat()))

    def spend(self, first_day: date, end_day: date, *, category: str | None = None, model: str | None = None) -> float:
        scope, scope_values = budget_scope(category, model)
        query = f"SELECT COALESCE(SUM(cost_usd), 0) FROM daily_totals WHERE day >= ? AND day < ?{scope}"
        return float(self._select(query, (first_day.isoformat(), end_day.isoformat(), *scope_values))[0][0])

    def accepts_writes(self) -> bool:
        """Whether a write transaction commits now (to tell an outage from a record the ledger cannot store)."""
        try:
            with self._lock, self.backend.transaction() as cursor:
                query = "UPDATE spendwatch_meta SET value = value WHERE key = ?"
                self.backend.execute(cursor, query, ("schema_version",))
        except Exception:  # noqa: BLE001
            return False
        return True

    def guard_decisions(self) -> dict[tuple[str, str], int]:
        rows = self._select("SELECT budget, action, count FROM guard_decisions")
        return {(budget, action): int(count) for budget, action, count in rows}

    def budget_limits(self) -> dict[tuple[str, str], float]:
        rows = self._select("SELECT name, period, limit_usd FROM budget_limits")
        return {(name, period): float(limit) for name, period, limit in rows}

    def events(self, kind: str | None = None) -> list[dict]:
        query = "SELECT ts, kind, detail FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return self._select_dicts(query, (kind,) if kind else ())

    def call_count(self) -> int:
        return int(self._select("SELECT COUNT(*) FROM calls")[0][0])

    def _select(self, query: str, parameters: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self.backend.select(query, parameters)

    def _select_dicts(self, query: str, parameters: Sequence = ()) -> list[dict]:
        with self._lock:
            return self.backend.select_dicts(query, parameters)

    def reopen(self) -> None:
        """A fresh connection, for a forked child: database connections must not cross a fork."""
        self._lock = threading.Lock()
        self.backend = type(self.backend)(self.backend.location)  # the audit key stays
        self.backend.prepare()

    def close(self) -> None:
        with self._lock:
            self.backend.close()


def budget_scope(category: str | None, model: str | None) -> tuple[str, tuple]:
    """The ``AND ...`` clauses (and their values) that narrow ``daily_totals`` rows to a budget's category or model."""
    clauses, values = "", ()
    if category is not None:
        clauses += " AND category = ?"
        values += (category,)
    if model is not None:
        clauses += " AND model = ?"
        values += (model,)
    return clauses, values
