"""Schema versions, and the steps that bring a ledger written by an earlier release up to this one.

A ledger records its schema version in ``spendwatch_meta``. Version ``n + 1`` is version ``n`` after
``UPGRADES[n - 1]``, so the current version is one more than the number of steps, and a ledger of any earlier
version opens: the steps it lacks run in order, in the transaction that creates what is missing, under the same
advisory lock (several processes or hosts may open one ledger at once). A step gets the backend and the open cursor.
A ledger of a version this release does not know (a later release wrote it) is refused, naming both versions.

A step that adds a counter to the running totals must also fill it from a scan of ``calls``: the totals must keep
equalling that scan (see :mod:`spendwatch.exporter.ledger.audit`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from spendwatch.exporter.ledger.schema import (
    CALL_COLUMNS_V1,
    CALL_COLUMNS_V2,
    CALLS,
    HOURLY_TOTALS,
    SUBSET_TOKENS,
    TOTAL_COUNTERS,
    TOTAL_KEYS,
    TOTAL_TABLES,
    Column,
    Table,
    has_no_price,
)
from spendwatch.exporter.ledger.totals import add_to, hour_of
from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "SCANNED_COLUMNS",
    "SCHEMA_VERSION",
    "UNCHAINED_LEASES_KEY",
    "UNSEALED_LEASES_KEY",
    "UPGRADES",
    "VERSION_KEY",
    "VERSION_QUERY",
    "check_version",
    "create_or_upgrade",
    "scanned_counters",
]

Step = Callable[[object, object], None]


def _add_columns(backend, cursor, table: str, columns) -> None:
    for column in columns:
        definition = f"{column.name} {backend.types[column.type]} {column.definition}"
        backend.execute(cursor, f"ALTER TABLE {table} ADD COLUMN {definition}")


def _every_billed_unit(backend, cursor) -> None:
    """Version 2: calls keep the token counts billed at their own rates, other billed units and the service tier,
    and the running totals count those tokens. Every earlier call has none of them, so the new counters start at 0,
    which is what a scan of calls gives."""
    added = CALLS.columns[CALL_COLUMNS_V1:CALL_COLUMNS_V2]
    _add_columns(backend, cursor, "calls", added)
    counters = [column for column in added if column.name in SUBSET_TOKENS]
    for table in ("totals", "daily_totals"):
        _add_columns(backend, cursor, table, [Column(c.name, "int", "NOT NULL DEFAULT 0") for c in counters])


# The totals' key before version 5 added the service: what the steps before it work with.
_KEYS_BEFORE_SERVICE = tuple(key for key in TOTAL_KEYS if key != "service")


def _before_service(table: Table) -> Table:
    """A totals table as versions 3 and 4 defined it, without the service key."""
    columns = tuple(column for column in table.columns if column.name != "service")
    return Table(table.name, columns, key=tuple(key for key in table.key if key != "service"), indexes=table.indexes)


def _hourly_totals(backend, cursor) -> None:
    """Version 3: the running totals per UTC hour, filled from a scan of ``calls`` one local day at a time (the hour
    of an instant is plain arithmetic in Python, not in both SQL dialects). A call row stands for one API call here,
    as for every counter a scan can check."""
    for statement in _before_service(HOURLY_TOTALS).create(backend.types):
        backend.execute(cursor, statement)
    scanned = ("ts", *_KEYS_BEFORE_SERVICE, *SCANNED_COLUMNS)
    columns = ", ".join(scanned)
    for (day,) in backend.execute(cursor, "SELECT DISTINCT day FROM calls"):
        hourly: dict[tuple, list[float]] = {}
        for ts, *rest in backend.execute(cursor, f"SELECT {columns} FROM calls WHERE day = ?", (day,)):
            key, (cost, pricing, outcome, estimated, duration, *tokens) = tuple(rest[:4]), rest[4:]
            counters = scanned_counters(cost, pricing, outcome, estimated, duration, tokens)
            add_to(hourly, (hour_of(float(ts)), *key), counters)
        backend.add_totals(cursor, "hourly_totals", ("hour", *_KEYS_BEFORE_SERVICE), TOTAL_COUNTERS, hourly)


_SCANNED_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens", *SUBSET_TOKENS)
# The calls columns scanned_counters reads, in its arguments' order.
SCANNED_COLUMNS = ("cost_usd", "pricing", "outcome", "estimated", "duration_s", *_SCANNED_TOKENS)


def scanned_counters(cost, pricing: str, outcome: str, estimated, duration, tokens: list) -> list[float]:
    """A calls row's contribution to each of TOTAL_COUNTERS, in their order."""
    by_name = dict(zip(_SCANNED_TOKENS, (int(count or 0) for count in tokens), strict=True))
    by_name |= {"cost_usd": float(cost or 0.0), "unpriced": int(has_no_price(cost, pricing))}
    by_name["estimated"] = int(estimated or 0)
    by_name |= {outcome_name: int(outcome == outcome_name) for outcome_name in ("success", "error", "blocked")}
    by_name |= {"duration_sum": float(duration or 0.0), "duration_count": 1}
    return [by_name[name] for name in TOTAL_COUNTERS]


def _sealed_leases(backend, cursor) -> None:
    """Version 4: every lease row carries its HMAC. The key is not at hand here, so the leases an earlier release
    wrote stay unsealed; they end within their TTL, and the audit accepts an unsealed lease only if it expires by the
    latest expiry among them (kept in ``spendwatch_meta``), so one forged later is still caught."""
    _add_columns(backend, cursor, "leases", [Column("mac", "text", "")])
    ((latest,),) = backend.execute(cursor, "SELECT COALESCE(MAX(expires_at), 0) FROM leases")
    backend.set_meta(cursor, UNSEALED_LEASES_KEY, repr(float(latest)))


UNSEALED_LEASES_KEY = "leases_unsealed_until"


def _service(backend, cursor) -> None:
    """Version 5: calls keep who saw them (``source``: NULL for an instrumentor, ``span`` or ``otlp``) and the service
    that made them, and the running totals are kept per service. A key column cannot be added in place, so each
    totals table is rebuilt, its rows copied with service '' (no earlier call names one): what a scan of calls gives."""
    _add_columns(backend, cursor, "calls", CALLS.columns[CALL_COLUMNS_V2:])
    for table in TOTAL_TABLES:
        name, kept = table.name, ", ".join(column for column in table.column_names if column != "service")
        backend.execute(cursor, f"CREATE TABLE {name}_before_service AS SELECT {kept} FROM {name}")
        backend.execute(cursor, f"DROP TABLE {name}")
        for statement in table.create(backend.types):
            backend.execute(cursor, statement)
        copy = f"INSERT INTO {name} ({kept}, service) SELECT {kept}, '' FROM {name}_before_service"
        backend.execute(cursor, copy)
        backend.execute(cursor, f"DROP TABLE {name}_before_service")


def _lease_owner(backend, cursor) -> None:
    """Version 6: a lease names the process whose journal holds its calls, so it outlives its TTL until that journal
    is in the ledger. The leases an earlier release wrote name none and expire by their TTL as they did."""
    _add_columns(backend, cursor, "leases", [Column("owner", "text", "")])


def _chained_leases(backend, cursor) -> None:
    """Version 7: a lease's opening and closing are records of the audit chain (see lease_rows.py), so a deleted
    lease is caught. The leases an earlier release opened have no such record: their ids are kept in
    ``spendwatch_meta``, and the audit accepts a lease the chain never opened only if it is one of them."""
    unchained = [str(lease_id) for (lease_id,) in backend.execute(cursor, "SELECT lease_id FROM leases")]
    backend.set_meta(cursor, UNCHAINED_LEASES_KEY, json.dumps(sorted(unchained)))


UNCHAINED_LEASES_KEY = "leases_unchained"

# Version 1 is the first schema; UPGRADES[n - 1] takes version n to n + 1.
UPGRADES: tuple[Step, ...] = (
    _every_billed_unit,
    _hourly_totals,
    _sealed_leases,
    _service,
    _lease_owner,
    _chained_leases,
)
SCHEMA_VERSION = str(len(UPGRADES) + 1)
VERSION_KEY = "schema_version"
VERSION_QUERY = "SELECT value FROM spendwatch_meta WHERE key = ?"
_SCHEMA_LOCK = 0x5350454E44  # "SPEND": the advisory lock key for creating or upgrading the schema
_META = "CREATE TABLE IF NOT EXISTS spendwatch_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def check_version(found: Sequence[tuple], named: str, upgrades: Sequence[Step] = UPGRADES) -> int | None:
    """The version a ledger was written with (None for a new one), or a ConfigError when this release cannot read it."""
    if not found:
        return None
    current = len(upgrades) + 1
    version = str(found[0][0])
    if not version.isdigit() or not 1 <= int(version) <= current:
        raise ConfigError(f"{named} has ledger schema {version}, this is {current}")
    return int(version)


def create_or_upgrade(backend, named: str, upgrades: Sequence[Step] = UPGRADES) -> None:
    """Create a new ledger's tables, or run the steps an older ledger lacks; either way it ends at this version."""
    with backend.transaction() as cursor:
        # PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against processes creating the same table at once.
        backend.lock_budget(cursor, _SCHEMA_LOCK)
        backend.execute(cursor, _META)
        version = check_version(backend.execute(cursor, VERSION_QUERY, (VERSION_KEY,)), named, upgrades)
        for step in upgrades[(version or len(upgrades) + 1) - 1 :]:
            step(backend, cursor)
        backend.create_tables(cursor)
        if version is None:
            query = "INSERT INTO spendwatch_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
            backend.execute(cursor, query, (VERSION_KEY, str(len(upgrades) + 1)))
        elif version <= len(upgrades):
            backend.set_meta(cursor, VERSION_KEY, str(len(upgrades) + 1))
