"""Writing a lease row with its HMAC: every write to ``leases`` goes through here, so ``audit verify`` tells a lease
spendwatch wrote from one forged or altered in the database (a forged lease with a negative amount would hand out
budget nobody has; one with a large amount would starve every process).

A lease changes in place (renewed, drawn on as its calls are ingested), so its values are not a link of the audit chain:
its row carries the MAC of its own values, written with them, under the audit key (see :mod:`.audit`). Its life is:
:func:`open_lease` and :func:`close_leases` append a ``lease_open`` / ``lease_close`` record (MACed over the lease id)
in the transaction that inserts or deletes the row, so ``audit verify`` finds a lease the chain opened and never closed
deleted, and a lease row the chain never opened (or closed) inserted. Renewals and draws only rewrite the row: they
happen many times a minute per process, and appending to the chain would serialise them on its head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "LEASE_CHAIN_KINDS",
    "LEASE_CLOSE",
    "LEASE_COLUMNS",
    "LEASE_OPEN",
    "close_leases",
    "draw_from_leases",
    "lease_mac",
    "lease_record_content",
    "open_lease",
    "write_lease",
]

LEASE_OPEN, LEASE_CLOSE = "lease_open", "lease_close"  # the chain records' kinds; the lease id is their call_id
LEASE_CHAIN_KINDS = (LEASE_OPEN, LEASE_CLOSE)
LEASE_COLUMNS = ("lease_id", "budget", "period", "period_start", "outstanding_usd", "expires_at", "owner")
_KIND = "lease"  # the row MAC's kind, with seq 0: chain records (call, event, reprice, lease_open...) count from 1
_UPSERT = (
    f"INSERT INTO leases ({', '.join(LEASE_COLUMNS)}, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (lease_id) DO UPDATE SET outstanding_usd = excluded.outstanding_usd,"
    " expires_at = excluded.expires_at, owner = excluded.owner, mac = excluded.mac"
)


def lease_mac(key, row: Sequence) -> str:
    """The MAC of a lease row (:data:`LEASE_COLUMNS`, in order), its values normalised as they read back. A lease
    without an owner (schema 5 wrote none) is MACed without it, so those rows still verify; setting a lease's owner
    to NULL changes what its MAC covers, and is caught."""
    lease_id, budget, period, period_start, outstanding, expires_at, owner = row
    content = [str(lease_id), str(budget), str(period), str(period_start), float(outstanding), float(expires_at)]
    if owner is not None:
        content.append(str(owner))
    return key.mac(0, _KIND, "", content)


def write_lease(backend, cursor, key, row: Sequence) -> None:
    """Insert or update a lease (:data:`LEASE_COLUMNS`) with its MAC, inside the caller's transaction."""
    backend.execute(cursor, _UPSERT, (*row, lease_mac(key, row)))


def lease_record_content(lease_id: str) -> list:
    """What a lease's chain record MACs: its id (the row itself changes in place and carries its own MAC)."""
    return [str(lease_id)]


def open_lease(backend, cursor, key, row: Sequence) -> None:
    """Insert a new lease (:data:`LEASE_COLUMNS`) with its MAC and its ``lease_open`` chain record, inside the caller's
    chained transaction (Ledger.chained_transaction: it holds the chain's head)."""
    write_lease(backend, cursor, key, row)
    _chain(backend, cursor, key, LEASE_OPEN, [row[0]])


def close_leases(backend, cursor, key, lease_ids: Iterable[str], *, expired_only: bool = False) -> list[str]:
    """Delete these leases (``expired_only``: those past their TTL by the database's clock, checked here) with a
    ``lease_close`` chain record each, inside the caller's chained transaction. Returns the ids deleted. A lease an
    earlier release opened has no opening record; its closing record is harmless."""
    query = "DELETE FROM leases WHERE lease_id = ?"
    if expired_only:
        query += f" AND expires_at < {backend.now_sql}"
    closed = []
    for lease_id in lease_ids:
        backend.execute(cursor, query, (lease_id,))
        if cursor.rowcount > 0:
            closed.append(lease_id)
    _chain(backend, cursor, key, LEASE_CLOSE, closed)
    return closed


def _chain(backend, cursor, key, kind: str, lease_ids: Sequence[str]) -> None:
    from spendwatch.exporter.ledger.audit import append  # audit imports this module for LEASE_COLUMNS and lease_mac

    append(
        backend, cursor, key, [(kind, str(lease_id), None, lease_record_content(lease_id)) for lease_id in lease_ids]
    )


def draw_from_leases(backend, cursor, key, costs: Mapping[str, float]) -> None:
    """Move ingested calls' costs out of the leases they were drawn from (they are spend now), in the ingesting
    transaction. Each row is read locked (PostgreSQL: FOR UPDATE; SQLite's writer holds the file) and written back
    whole with its new MAC, so a renewal in between cannot pair one writer's amount with the other's MAC."""
    query = f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases WHERE lease_id = ?{backend.row_lock}"
    for lease_id, cost in costs.items():
        found = backend.execute(cursor, query, (lease_id,))
        if found:  # an expired lease was deleted: nothing left to draw from
            *identity, outstanding, expires_at, owner = found[0]
            write_lease(backend, cursor, key, (*identity, float(outstanding) - cost, float(expires_at), owner))
