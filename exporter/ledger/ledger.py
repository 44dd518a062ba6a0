"""The :class:`Ledger`: one row per call with its raw usage, and running totals kept in the same transaction.

Ingest is idempotent (each entry has a unique id; a replayed entry is not counted twice), and the totals are only
ever added to for rows that were really inserted, so they always equal a scan of ``calls`` without anyone ever
scanning it: reading the current spend or serving ``/metrics`` costs O(series), never O(history).

Every row written to ``calls``, ``events`` and ``repricings`` is chained into the HMAC audit trail in the same
transaction (see :mod:`spendwatch.exporter.ledger.audit`); such transactions take the chain head first
(:meth:`Ledger.chained_transaction`), so concurrent writers append one after another.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

from spendwatch.exporter.ledger import audit, history
from spendwatch.exporter.ledger.lease_rows import draw_from_leases
from spendwatch.exporter.ledger.locations import LedgerUnavailable, first_line
from spendwatch.exporter.ledger.schema import BUCKET_KEYS, CALL_COLUMNS, TOTAL_COUNTERS, TOTAL_KEYS, call_rows
from spendwatch.exporter.ledger.totals import TotalsChange, add_to
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["Ledger", "LedgerEntry", "budget_scope"]

REOPEN_INTERVAL_S = 1.0  # how often a ledger that could not be opened is tried again
_DAY = CALL_COLUMNS.index("day")
# The tables :meth:`Ledger.table_rows` reads, each with its key.
_KEY_ORDER = {
    "calls": "id",
    "totals": ", ".join(TOTAL_KEYS),
    "daily_totals": ", ".join(("day", *TOTAL_KEYS)),
    "hourly_totals": ", ".join(("hour", *TOTAL_KEYS)),
    "duration_buckets": ", ".join(BUCKET_KEYS),
}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A usage record with its ledger identity: the journal file and offset it was written at."""

    entry_id: str
    record: UsageRecord


class Ledger:
    """Backend-neutral ledger logic over a backend from :mod:`.dialects` (see :mod:`.locations` to open one)."""

    def __init__(self, backend, tz: ZoneInfo, *, audit_key: audit.AuditKey | None = None) -> None:
        """``audit_key`` defaults to ``SPENDWATCH_AUDIT_KEY`` or the key file; a bad one is a ConfigError."""
        self._backend = backend
        self._location = backend.location
        self.tz = tz
        self._lock = threading.Lock()
        self._opening = _Opening(None)
        self.audit_key = audit_key or audit.load_audit_key(backend.location)
        audit.check_key(backend, self.audit_key)
        self._pid = os.getpid()
        _ledgers.add(self)

    @classmethod
    def opened_later(cls, location: str, tz: ZoneInfo, connect: Callable[[], object]) -> Ledger:
        """A ledger that connects on first use, so that an app starts whether or not its ledger is up.

        ``connect()`` returns a backend or raises. Until it succeeds, every use raises :class:`LedgerUnavailable`
        and it is tried again at most every :data:`REOPEN_INTERVAL_S`, by whichever thread uses the ledger next.
        """
        ledger = cls.__new__(cls)
        ledger._backend, ledger._location, ledger.tz = None, location, tz
        ledger._lock = threading.Lock()
        ledger._opening = _Opening(connect)
        # A key given in the environment is checked now (a bad one is configuration); a key file is created
        # beside a new ledger, so it is read once the ledger is there.
        key_at_hand = audit.AUDIT_KEY_ENV in os.environ or audit.key_file_path(location).exists()
        ledger.audit_key = audit.load_audit_key(location) if key_at_hand else None
        ledger._pid = os.getpid()
        _ledgers.add(ledger)
        return ledger

    @property
    def location(self) -> str:
        return self._location

    @property
    def backend(self):
        """The open backend; connected now if it was not yet (see :meth:`opened_later`)."""
        backend = self._backend
        return backend if backend is not None else self._connect()

    @property
    def is_open(self) -> bool:
        return self._backend is not None

    def _connect(self):
        opening = self._opening
        with opening.lock:
            if self._backend is not None:
                return self._backend
            if opening.connect is None or time.monotonic() < opening.retry_at:
                raise LedgerUnavailable(opening.error or "the ledger is closed")
            backend = None
            try:
                backend = opening.connect()
                key = self.audit_key or audit.load_audit_key(self._location)
                audit.check_key(backend, key)
            except (Exception, ConfigError) as error:  # ConfigError: someone else's database, another audit key
                if backend is not None:
                    with contextlib.suppress(Exception):
                        backend.close()
                opening.error = error.message if isinstance(error, ConfigError) else first_line(error)
                opening.retry_at = time.monotonic() + REOPEN_INTERVAL_S
                raise LedgerUnavailable(opening.error) from error
            self.audit_key, self._backend = key, backend
            return backend

    # --- writing -----------------------------------------------------------------------------------------------
    def ingest(self, entries: Iterable[LedgerEntry], *, wait_s: float | None = None) -> int:
        """Add entries not already present; returns how many were new. One transaction; ``wait_s`` bounds how long it
        waits for another writer (else the backend's own timeout), for a caller with somewhere else to put them."""
        entries = list(entries)
        if not entries:
            return 0
        rows = call_rows(entries, self.tz)
        records = {entry.entry_id: entry.record for entry in reversed(entries)}  # the first entry of an id is kept
        with self.chained_transaction(wait_s) as cursor:
            inserted = self.backend.insert_calls(cursor, rows)
            # Typed by call_rows: MACed as is, less the version-2 columns when they hold their defaults.
            chained = [("call", row[0], None, audit.call_mac_content(row)) for row in inserted]
            audit.append(self.backend, cursor, self.audit_key, chained)
            new = [(row, records[row[0]]) for row in inserted]
            change = TotalsChange()
            change.add_calls((row[_DAY], record) for row, record in new)
            change.apply(self.backend, cursor)
            self._guarded(cursor, [record for _, record in new])
        return len(inserted)

    def _guarded(self, cursor, records: list[UsageRecord]) -> None:
        """What ingesting ``records`` changes of the guard's state: its decisions, events and leases."""
        decisions: dict[tuple, list[float]] = {}
        lease_costs: dict[str, float] = {}
        for r in records:
            for decision in r.guard_actions:
                add_to(decisions, decision, [1])
            for lease in r.leases:
                lease_costs[lease] = lease_costs.get(lease, 0.0) + (r.cost_usd or 0.0)
        self.backend.add_totals(cursor, "guard_decisions", ("budget", "action"), ("count",), decisions)
        if decisions:
            history.add_guard_events(self, cursor, records)
        # The costs are spend now: they leave the leases they were drawn from, in the same transaction.
        draw_from_leases(self.backend, cursor, self.audit_key, lease_costs)

    def set_budget_limit(self, name: str, period: str, limit_usd: float, *, reason: str = "", by: str = "") -> None:
        """Change a budget's limit from now on; the change itself is kept as an event (with who made it, if known)."""
        at = time.time()
        with self.chained_transaction() as cursor:
            self.backend.upsert_budget_limit(cursor, name, period, limit_usd, at)
            detail = {"name": name, "period": period, "limit_usd": limit_usd, "reason": reason}
            self.chained_event(cursor, "budget_limit_changed", detail | ({"by": by} if by else {}), at=at)

    def clear_budget_limit(self, name: str, period: str, *, reason: str = "", by: str = "") -> float | None:
        """Drop a budget's run-time limit, so its configured one is in force again; kept as an event.
        Returns the limit dropped, or None (and records nothing) when there was none."""
        at = time.time()
        with self.chained_transaction() as cursor:
            key = (name, period)
            query = "SELECT limit_usd FROM budget_limits WHERE name = ? AND period = ?"
            rows = self.backend.execute(cursor, query, key)
            if not rows:
                return None
            self.backend.execute(cursor, "DELETE FROM budget_limits WHERE name = ? AND period = ?", key)
            detail = {"name": name, "period": period, "dropped_limit_usd": float(rows[0][0]), "reason": reason}
            self.chained_event(cursor, "budget_limit_cleared", detail | ({"by": by} if by else {}), at=at)
        return float(rows[0][0])

    def add_event(self, kind: str, detail: dict) -> int:
        """Keep an event (chained into the audit trail); its id."""
        with self.chained_transaction() as cursor:
            return self.chained_event(cursor, kind, detail, at=time.time())

    @contextlib.contextmanager
    def transaction(self, wait_s: float | None = None) -> Iterator:
        """A write transaction of this package's modules; one thread of this process at a time."""
        with self._lock, self.backend.transaction(wait_s) as cursor:
            yield cursor

    @contextlib.contextmanager
    def chained_transaction(self, wait_s: float | None = None) -> Iterator:
        """A write transaction that holds the audit chain's head: for anything that appends to the chain."""
        with self.transaction(wait_s) as cursor:
            audit.lock(self.backend, cursor)
            yield cursor

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Callable[[str, Sequence], Iterator[tuple]]]:
        """One consistent read of the whole ledger, for this package's modules; yields ``rows(query, parameters)``."""
        with self._lock, self.backend.snapshot() as rows:
            yield rows

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

    def spend(
        self,
        first_day: date,
        end_day: date,
        *,
        category: str | None = None,
        model: str | None = None,
        service: str | None = None,
    ) -> float:
        scope, scope_values = budget_scope(category, model, service)
        query = f"SELECT COALESCE(SUM(cost_usd), 0) FROM daily_totals WHERE day >= ? AND day < ?{scope}"
        return float(self._select(query, (first_day.isoformat(), end_day.isoformat(), *scope_values))[0][0])

    def accepts_writes(self) -> bool:
        """Whether a write transaction commits now (to tell an outage from a record the ledger cannot store)."""
        try:
            with self.transaction() as cursor:
                query = "UPDATE spendwatch_meta SET value = value WHERE key = ?"
                self.backend.execute(cursor, query, ("schema_version",))
        except Exception:  # noqa: BLE001
            return False
        return True

    def write_problem(self) -> str | None:
        """Why a write fails now (its first line), or None; keeps nothing. The row goes into the key-value
        ``spendwatch_meta`` table: a rolled-back insert into a table with a serial id (events) would still use up a
        PostgreSQL sequence number and leave a gap in the audited history."""
        try:
            with self.transaction() as cursor:
                backend = self.backend
                query = "INSERT INTO spendwatch_meta (key, value) VALUES (?, ?)"
                backend.execute(cursor, query, (f"write-test-{os.getpid()}-{time.time()}", "rolled back"))
                raise _RollBack
        except _RollBack:
            return None
        except Exception as error:  # noqa: BLE001 - any driver error is the answer
            return first_line(error)

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another process's write before it fails (SQLite; PostgreSQL waits as it does)."""
        self.backend.set_busy_timeout(seconds)

    def guard_decisions(self) -> dict[tuple[str, str], int]:
        rows = self._select("SELECT budget, action, count FROM guard_decisions")
        return {(budget, action): int(count) for budget, action, count in rows}

    def budget_limits(self) -> dict[tuple[str, str], float]:
        rows = self._select("SELECT name, period, limit_usd FROM budget_limits")
        return {(name, period): float(limit) for name, period, limit in rows}

    def events(self, kind: str | None = None) -> list[dict]:
        query = "SELECT ts, kind, detail FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return self._select_dicts(query, (kind,) if kind else ())

    def events_since(self, kind: str, after_id: int = 0) -> list[dict]:
        """The events of ``kind`` with an id above ``after_id``, oldest first, each with its ``id``: lets a reader
        that polls (``spendwatch serve``) read only what is new."""
        query = "SELECT id, ts, detail FROM events WHERE id > ? AND kind = ? ORDER BY id"
        return self._select_dicts(query, (after_id, kind))

    def call_count(self) -> int:
        return int(self._select("SELECT COUNT(*) FROM calls")[0][0])

    def latest_call_time(self) -> float | None:
        """When the newest call started (epoch seconds), or None for an empty ledger."""
        # The latest day is read from the index, then only that day's calls: never a scan of the whole history.
        rows = self._select("SELECT MAX(ts) FROM calls WHERE day = (SELECT MAX(day) FROM calls)")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def calls_with_attributes(self, first_day: date, last_day: date) -> list[dict]:
        """The calls of days ``first_day`` to ``last_day`` (both included) that carry attributes: ``ts``,
        ``operation``, the token counts, ``cost_usd``, ``outcome`` and ``attributes`` (JSON text). A scan of those days,
        off the hot path."""
        query = (
            "SELECT ts, operation, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, cost_usd, outcome,"
            " attributes"
            " FROM calls WHERE day >= ? AND day <= ? AND attributes IS NOT NULL"
        )
        return self._select_dicts(query, (first_day.isoformat(), last_day.isoformat()))

    def table_rows(self, table: str) -> list[dict]:
        """Every row of ``calls`` or one of the totals tables, in key order: for comparing two ledgers."""
        return self._select_dicts(f"SELECT * FROM {table} ORDER BY {_KEY_ORDER[table]}")

    def row_counts(self) -> dict[str, int]:
        """How many rows ``calls`` and the totals tables hold (counting ``calls`` scans it)."""
        return {table: int(self._select(f"SELECT COUNT(*) FROM {table}")[0][0]) for table in _KEY_ORDER}

    def _select(self, query: str, parameters: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self.backend.select(query, parameters)

    def _select_dicts(self, query: str, parameters: Sequence = ()) -> list[dict]:
        with self._lock:
            return self.backend.select_dicts(query, parameters)

    def reopen(self) -> None:
        """In a forked child: fresh locks, and a fresh connection on first use (connections must not cross a fork).
        Done once per process; a ledger does it itself at a fork, so a second call is harmless."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        inherited, self._backend = self._backend, None
        self._lock = threading.Lock()
        self._opening = _Opening(self._opening.connect or _fresh_backend(inherited), error=self._opening.error)
        if inherited is not None:
            with contextlib.suppress(Exception):  # the child connects afresh either way
                inherited.close_inherited()

    def _hold_for_fork(self) -> None:
        self._lock.acquire()  # in the order every user takes them: the ledger's lock, then the opening's
        self._opening.lock.acquire()

    def _release_after_fork(self) -> None:
        self._opening.lock.release()
        self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._opening.connect = None  # a closed ledger stays closed
            if self._backend is not None:
                self._backend.close()


class _RollBack(Exception):
    """Raised inside :meth:`Ledger.write_problem`'s transaction so that nothing it wrote is kept."""


@dataclass
class _Opening:
    """How a ledger opened later connects, and when it may try again after a failure."""

    connect: Callable[[], object] | None
    error: str | None = None
    retry_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _fresh_backend(inherited) -> Callable[[], object] | None:
    """How a child connects anew to the database ``inherited`` is connected to (None: it was never connected)."""
    if inherited is None:
        return None

    def connect():
        backend = type(inherited)(inherited.location)
        backend.prepare()
        return backend

    return connect


# A fork waits until no thread of this process is inside one of its ledgers. A child forked while its parent's
# drainer was inside a SQLite transaction inherits SQLite's in-process record of that lock, and every write it makes
# then waits out the busy timeout and fails ("database is locked"): a gunicorn worker forked at that moment could never
# write its ledger, and took minutes to exit. The child then connects afresh (see :meth:`Ledger.reopen`).
_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()
_held_for_fork: list[Ledger] = []


def _before_fork() -> None:
    for ledger in list(_ledgers):
        ledger._hold_for_fork()
        _held_for_fork.append(ledger)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop()._release_after_fork()


def _after_fork_in_child() -> None:
    while _held_for_fork:
        _held_for_fork.pop().reopen()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def budget_scope(category: str | None, model: str | None, service: str | None = None) -> tuple[str, tuple]:
    """The ``AND ...`` clauses (and their values) that narrow totals rows to a budget's category, model or service."""
    clauses, values = "", ()
    if category is not None:
        clauses += " AND category = ?"
        values += (category,)
    if model is not None:
        clauses += " AND model = ?"
        values += (model,)
    if service is not None:
        clauses += " AND service = ?"
        values += (service,)
    return clauses, values
