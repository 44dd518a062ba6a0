"""Writing a lease row with its HMAC: every write to ``leases`` goes through here, so ``audit verify`` tells a lease
spendwatch wrote from one forged or altered in the database (a forged lease with a negative amount would hand out
budget nobody has; one with a large amount would starve every process).

A lease changes in place (renewed, drawn on as its calls are ingested), so it is not a link of the audit chain; its
row carries the MAC of its own values, written with them, under the audit key (see :mod:`.audit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["LEASE_COLUMNS", "draw_from_leases", "lease_mac", "write_lease"]

LEASE_COLUMNS = ("lease_id", "budget", "period", "period_start", "outstanding_usd", "expires_at", "owner")
_KIND = "lease"  # the MAC's kind: chain records are call, event and reprice, with seq from 1
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
