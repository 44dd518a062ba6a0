"""Budget leases: how several processes share one budget without overshoot, for a few µs a call.

A process may commit money against a budget period only from a lease: an amount the ledger set aside for it in a
transaction that saw the period's spend and every other live lease. Admission is then local arithmetic (see
:mod:`spendwatch.exporter.guard`); the ledger is asked again only when the lease runs short. A call's actual cost
moves from the lease into spend in the same transaction that ingests its record, so at every moment each committed
dollar is counted exactly once, as spend or as outstanding lease, and

    spend + sum(outstanding leases) <= limit

holds across threads, processes and (with PostgreSQL) hosts. A living process renews its leases while its calls are
in flight (the guard's heartbeat), so a call of any length keeps its reservation. A lease names its ``owner``, the
process whose journal holds the calls drawn from it: past its TTL it is kept (still counted against the budget) until
that journal is in the ledger, for its calls' costs move from the lease into spend only as they are ingested; deleting
it sooner would hand that money to other processes a second time. :mod:`spendwatch.exporter.recovery` decides when an
owner's journal is in and releases its leases; a lease without an owner (an earlier release wrote it) ends at its TTL.

Expiry is decided by one clock, the database's, read in the transaction that renews: PostgreSQL's
``clock_timestamp()``, and for SQLite (which has no server) the host clock as SQLite reads it, ``julianday('now')``,
one host's clock for every process sharing the file. A process whose own clock runs ahead therefore neither deletes
other processes' live leases nor gives its own a longer life. Each lease row carries its HMAC (:mod:`.lease_rows`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from spendwatch.exporter.ledger.lease_rows import close_leases, open_lease, write_lease
from spendwatch.exporter.ledger.ledger import Ledger, budget_scope
from spendwatch.exporter.settings import BudgetSpec

__all__ = [
    "HeldLease",
    "LeaseGrant",
    "held_leases",
    "release_by_hand",
    "release_lease",
    "release_leases",
    "renew_lease",
]

# One statement, so PostgreSQL reads spend and leases from one snapshot: a drain moving a cost from a lease into
# spend between two statements could otherwise hide it from both.
_STANDING = """
SELECT
  (SELECT COALESCE(SUM(cost_usd), 0) FROM daily_totals WHERE day >= ? AND day < ? {scope}),
  (SELECT COALESCE(SUM(outstanding_usd), 0) FROM leases
     WHERE budget = ? AND period = ? AND period_start = ? AND lease_id <> ? AND outstanding_usd > 0),
  (SELECT outstanding_usd FROM leases WHERE lease_id = ?)
"""


@dataclass(frozen=True)
class LeaseGrant:
    granted_usd: float  # added to the lease now (0 when the budget cannot spare what was needed)
    outstanding_usd: float  # the lease's amount in the ledger after this renewal
    spent_usd: float  # the period's spend in the ledger
    others_usd: float  # what other processes' live leases hold
    existed: bool  # False when the lease had expired (or never was): the caller's local view must start over


def renew_lease(
    ledger: Ledger,
    lease_id: str,
    budget: BudgetSpec,
    limit_usd: float,
    period: tuple[date, date],
    *,
    need_usd: float,
    want_usd: float,
    ttl_s: float,
    owner: str | None = None,
) -> LeaseGrant:
    """Extend a lease by ``want_usd`` (or whatever is left, if at least ``need_usd``), atomically, and make it live
    for ``ttl_s`` from now by the database's clock. ``owner``: the process whose journal will hold its calls.

    A renewal only rewrites the lease's row. Opening it, or closing others' unowned leases past their TTL, appends to
    the audit chain (lease_rows.py), so when the first try finds either to do it is done again holding the chain's
    head (taken first, as every chained transaction does, so no lock order is inverted)."""
    renewal = _Renewal(lease_id, budget, limit_usd, period, need_usd, want_usd, ttl_s, owner)
    with ledger.transaction() as cursor:
        grant = renewal.run(ledger, cursor, chained=False)
    if grant is None:
        with ledger.chained_transaction() as cursor:
            grant = renewal.run(ledger, cursor, chained=True)
    return grant


@dataclass(frozen=True)
class _Renewal:
    lease_id: str
    budget: BudgetSpec
    limit_usd: float
    period: tuple[date, date]
    need_usd: float
    want_usd: float
    ttl_s: float
    owner: str | None

    def run(self, ledger: Ledger, cursor, *, chained: bool) -> LeaseGrant | None:
        """The renewal in this transaction; None (having written nothing) when it needs the chain and has not it."""
        backend, (first, end), budget, lease_id = ledger.backend, self.period, self.budget, self.lease_id
        backend.lock_budget(cursor, zlib.crc32(f"{budget.name}/{budget.period}".encode()))
        ((now,),) = backend.execute(cursor, f"SELECT {backend.now_sql}")  # after the lock: no stale read
        now = float(now)
        # Only a lease nobody owns ends at its TTL here: an owned one waits for its owner's journal (see above).
        ended = [row[0] for row in backend.execute(cursor, _ENDED, (now,))]
        if ended and not chained:
            return None
        close_leases(backend, cursor, ledger.audit_key, ended)
        scope, scope_values = budget_scope(budget.category, budget.model)
        parameters = (first.isoformat(), end.isoformat(), *scope_values)
        parameters += (budget.name, budget.period, first.isoformat(), lease_id, lease_id)
        ((spent, others, mine),) = backend.execute(cursor, _STANDING.format(scope=scope), parameters)
        existed = mine is not None
        if not existed and not chained:
            return None
        spent, others, mine = float(spent), float(others), float(mine or 0.0)
        available = self.limit_usd - spent - others - mine
        granted = min(self.want_usd, available) if available >= self.need_usd else 0.0
        outstanding = mine + granted
        row = (lease_id, budget.name, budget.period, first.isoformat(), outstanding, now + self.ttl_s, self.owner)
        (write_lease if existed else open_lease)(backend, cursor, ledger.audit_key, row)
        return LeaseGrant(granted, outstanding, spent, others, existed)


_ENDED = "SELECT lease_id FROM leases WHERE expires_at < ? AND owner IS NULL"


def release_lease(ledger: Ledger, lease_id: str) -> None:
    """Give a lease back (at exit, after the journal was drained: its costs are spend by then)."""
    release_leases(ledger, [lease_id])


@dataclass(frozen=True)
class HeldLease:
    """A lease with an owner, as the database's clock sees it now."""

    lease_id: str
    budget: str
    period: str
    period_start: str
    outstanding_usd: float
    owner: str
    expired_for_s: float  # how long ago its TTL ended (negative: still live)

    @property
    def expired(self) -> bool:
        return self.expired_for_s > 0


def held_leases(ledger: Ledger) -> list[HeldLease]:
    """Every lease that names an owner, live or past its TTL."""
    backend = ledger.backend
    query = (
        f"SELECT lease_id, budget, period, period_start, outstanding_usd, owner, {backend.now_sql} - expires_at"
        " FROM leases WHERE owner IS NOT NULL ORDER BY lease_id"
    )
    rows = ledger._select(query)  # a read: doctor and ``spendwatch leases list`` may have a read-only ledger
    return [HeldLease(str(i), str(b), str(p), str(s), float(o), str(w), float(e)) for i, b, p, s, o, w, e in rows]


def release_leases(ledger: Ledger, lease_ids: Iterable[str], *, expired_only: bool = False) -> int:
    """Delete these leases (``expired_only``: those of them past their TTL by the database's clock, checked in the
    deleting transaction, so one its owner renewed meanwhile stays). Returns how many were deleted."""
    with ledger.chained_transaction() as cursor:
        return len(close_leases(ledger.backend, cursor, ledger.audit_key, lease_ids, expired_only=expired_only))


def release_by_hand(ledger: Ledger, lease_ids: Iterable[str], *, by: str, reason: str) -> tuple[list[HeldLease], int]:
    """Release leases past their TTL whose owner's journal will never be replayed (its host is gone), with an audited
    ``lease_released`` event naming each one, its owner and amount, who and why: the money they held is the
    budget's again. A lease still live is left alone (its owner renews it). Returns the released ones and the event."""
    wanted = set(lease_ids)
    released = [lease for lease in held_leases(ledger) if lease.lease_id in wanted and lease.expired]
    if not released:
        return [], 0
    with ledger.chained_transaction() as cursor:
        ids = [lease.lease_id for lease in released]
        closed = set(close_leases(ledger.backend, cursor, ledger.audit_key, ids, expired_only=True))
        gone = [lease for lease in released if lease.lease_id in closed]
        leases = [{"lease": g.lease_id, "budget": g.budget, "owner": g.owner, "usd": g.outstanding_usd} for g in gone]
        detail = {"leases": leases, "by": by, "reason": reason}
        event_id = ledger.chained_event(cursor, "lease_released", detail, at=time.time()) if gone else 0
    return gone, event_id
