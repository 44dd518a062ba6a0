"""The ledger's tables, defined once: the CREATE statements, the calls row and the audit's field types come from here.

Each column has a portable type (``text``, ``int``, ``real`` or ``serial``) that a dialect spells in its own SQL
(:mod:`spendwatch.exporter.ledger.dialects`), and the rest of its definition (``NOT NULL``, a default, a key). A
``calls`` column also says how its value comes from a ledger entry; :func:`call_rows` converts it to the column's type,
so the row is MACed exactly as the database will give it back (see :mod:`spendwatch.exporter.ledger.audit`).

Changing a table is a new schema version with an upgrade step (:mod:`spendwatch.exporter.ledger.migrations`).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from spendwatch.exporter.periods import local_day

__all__ = [
    "ASSUMED_PRICE",
    "BUCKET_KEYS",
    "CALL_COLUMNS",
    "CALL_COLUMNS_V1",
    "CALL_COLUMNS_V2",
    "CALL_WIDTHS",
    "CALL_TYPES",
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "HOURLY_TOTALS",
    "REPRICING_COLUMNS",
    "REPRICING_TYPES",
    "SUBSET_TOKENS",
    "TABLES",
    "TOTAL_COUNTERS",
    "TOTAL_KEYS",
    "TOTAL_TABLES",
    "Column",
    "Table",
    "call_rows",
    "create_statements",
    "has_no_price",
]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # text | int | real | serial
    definition: str = "NOT NULL"  # what follows the type in CREATE TABLE
    # For calls: the value before conversion to ``type``, the record attribute it is (a name) or (entry, tz) -> value.
    value: str | Callable | None = None


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # a PRIMARY KEY of several columns (one column says it in its definition)
    indexes: tuple[tuple[str, str], ...] = ()  # (index name, column)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def audit_types(self) -> str:
        """One letter per column, as the audit normalises a value read back: f float, i integer, t text."""
        return "".join({"real": "f", "int": "i", "serial": "i", "text": "t"}[column.type] for column in self.columns)

    def create(self, types: dict[str, str]) -> list[str]:
        columns = [" ".join(filter(None, (c.name, types[c.type], c.definition))) for c in self.columns]
        if self.key:
            columns.append(f"PRIMARY KEY ({', '.join(self.key)})")
        statements = [f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"]
        statements += [f"CREATE INDEX IF NOT EXISTS {name} ON {self.name} ({on})" for name, on in self.indexes]
        return statements


def _text(name: str, definition: str = "NOT NULL") -> Column:
    return Column(name, "text", definition)


def _hex(identifier: int, digits: int) -> str | None:
    if not identifier:
        return None
    if 0 < identifier < 1 << 4 * digits:  # any id OpenTelemetry makes: twice as fast as format()
        return identifier.to_bytes(digits // 2, "big").hex()
    return format(identifier, f"0{digits}x")


# Since 1973 every time zone's UTC offsets, and the instants they change at, are whole minutes: a local day can only
# begin at the start of a UTC minute, so the day of a minute's start is the day of every instant in that minute.
_WHOLE_MINUTES_SINCE = 94694400  # 1973-01-01T00:00:00Z


def _local_day(unix_seconds: float, tz: ZoneInfo) -> str:
    """The local day of an instant, ISO-formatted; looked up once per minute (a batch of calls shares a few)."""
    if unix_seconds >= _WHOLE_MINUTES_SINCE:
        return _day_of_minute(int(unix_seconds // 60), tz)
    return local_day(unix_seconds, tz).isoformat()


@functools.lru_cache(maxsize=1024)
def _day_of_minute(minute: int, tz: ZoneInfo) -> str:
    return local_day(minute * 60, tz).isoformat()


def _json(attributes: dict) -> str | None:
    return json.dumps(attributes) if attributes else None


# The pricing of a call to a model without a price that the guard charged at an assumed upper-bound price
# ([guard] unpriced = "upper-bound"): its budgets count that cost, and it still counts as unpriced (and is alerted).
ASSUMED_PRICE = "upper bound: "


def has_no_price(cost_usd: float | None, pricing: str) -> bool:
    """Whether a call counts as unpriced: no cost, or only the guard's assumed one."""
    return cost_usd is None or pricing.startswith(ASSUMED_PRICE)


# Token counts billed at their own rates: subsets of input_tokens or output_tokens (schema version 2).
SUBSET_TOKENS = (
    "cache_write_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
)

CALLS = Table(
    "calls",
    (
        Column("id", "text", "PRIMARY KEY", lambda entry, tz: entry.entry_id),
        Column("ts", "real", "NOT NULL", "start_time"),
        Column("day", "text", "NOT NULL", lambda entry, tz: _local_day(entry.record.start_time, tz)),
        Column("provider", "text", "NOT NULL", "provider"),
        Column("operation", "text", "NOT NULL", "operation"),
        Column("model", "text", "NOT NULL", "request_model"),
        Column("response_model", "text", "", "response_model"),
        Column("category", "text", "NOT NULL", lambda entry, tz: entry.record.category or ""),
        Column("input_tokens", "int", "NOT NULL", "input_tokens"),
        Column("output_tokens", "int", "NOT NULL", "output_tokens"),
        Column("cache_read_tokens", "int", "NOT NULL", "cache_read_tokens"),
        Column("reasoning_tokens", "int", "NOT NULL", "reasoning_tokens"),
        Column("cost_usd", "real", "", "cost_usd"),
        Column("pricing", "text", "NOT NULL", "pricing"),
        Column("estimated", "int", "NOT NULL", "estimated"),
        Column("outcome", "text", "NOT NULL", "outcome"),
        Column("error_type", "text", "", "error_type"),
        Column("duration_s", "real", "NOT NULL", "duration_s"),
        Column("trace_id", "text", "", lambda entry, tz: _hex(entry.record.trace_id, 32)),
        Column("span_id", "text", "", lambda entry, tz: _hex(entry.record.span_id, 16)),
        Column("attributes", "text", "", lambda entry, tz: _json(entry.record.attributes)),
        # Added by schema version 2 (every billed unit kept raw, so a re-pricing can recompute any of them).
        *(Column(name, "int", "NOT NULL DEFAULT 0", name) for name in SUBSET_TOKENS),
        Column("units", "text", "", lambda entry, tz: _json(entry.record.units)),
        Column("service_tier", "text", "", "service_tier"),
        # Added by schema version 5: who saw the call (NULL: an instrumentor of the process, "span": another
        # instrumentation's span in it, "otlp": a span sent to spendwatch serve) and the service that made it.
        Column("source", "text", "", lambda entry, tz: None if entry.record.source == "sdk" else entry.record.source),
        # '' when none, as for category: a key of the running totals.
        Column("service", "text", "NOT NULL DEFAULT ''", lambda entry, tz: entry.record.service or ""),
    ),
    indexes=(("calls_by_day", "day"),),
)
# The calls columns of schema version 1. A row's MAC covers the columns added since only when one of them holds more
# than its default, so the MAC of a row written before they existed still verifies (see audit.call_content).
CALL_COLUMNS_V1 = 21
CALL_COLUMNS_V2 = 28  # and of versions 2 to 4

# The running totals: one row per series (and per local day), added to in the transaction that writes the calls.
# ``service`` ('' when a call names none) is a key since schema version 5, which rebuilt these tables with it.
TOTAL_KEYS = ("provider", "model", "operation", "category", "service")
BUCKET_KEYS = ("provider", "model", "operation", "le")
_COUNTERS = tuple(
    Column(name, "real" if name in ("cost_usd", "duration_sum") else "int", "NOT NULL DEFAULT 0")
    for name in (
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
        *SUBSET_TOKENS,  # schema version 2
    )
)
TOTAL_COUNTERS = tuple(column.name for column in _COUNTERS)
_COUNT = Column("count", "int", "NOT NULL DEFAULT 0")
_TOTAL_KEY_COLUMNS = tuple(_text(name) for name in TOTAL_KEYS)

# Schema version 3: the same counters per UTC hour (``hour``: its start in unix seconds), for the JSON API's hourly
# analytics and the budgets' recent burn rate (see hourly.py).
HOURLY_TOTALS = Table(
    "hourly_totals", (Column("hour", "int"), *_TOTAL_KEY_COLUMNS, *_COUNTERS), key=("hour", *TOTAL_KEYS)
)
TOTAL_TABLES = (
    Table("totals", (*_TOTAL_KEY_COLUMNS, *_COUNTERS), key=TOTAL_KEYS),
    Table("daily_totals", (_text("day"), *_TOTAL_KEY_COLUMNS, *_COUNTERS), key=("day", *TOTAL_KEYS)),
    HOURLY_TOTALS,
)
EVENTS = Table("events", (Column("id", "serial", ""), Column("ts", "real"), _text("kind"), _text("detail")))
REPRICINGS = Table(
    # A call's cost before and after each re-pricing (see reprice.py); the calls row holds the latest.
    "repricings",
    (
        Column("id", "serial", ""),
        _text("call_id"),
        Column("ts", "real"),
        Column("event_id", "int"),
        Column("old_cost_usd", "real", ""),
        Column("new_cost_usd", "real"),
        _text("old_pricing"),
        _text("new_pricing"),
    ),
    indexes=(("repricings_by_call", "call_id"),),
)
TABLES = (
    Table("spendwatch_meta", (_text("key", "PRIMARY KEY"), _text("value"))),
    CALLS,
    *TOTAL_TABLES,
    Table(
        "duration_buckets",
        (
            *(_text(name) for name in BUCKET_KEYS[:3]),
            Column("le", "real"),
            _COUNT,
        ),
        key=BUCKET_KEYS,
    ),
    Table(
        "budget_limits",
        (_text("name"), _text("period"), Column("limit_usd", "real"), Column("changed_at", "real")),
        key=("name", "period"),
    ),
    EVENTS,
    Table(
        "guard_decisions",
        (_text("budget"), _text("action"), _COUNT),
        key=("budget", "action"),
    ),
    # Money a process may still commit against a budget period without asking again (see leases.py).
    Table(
        "leases",
        (
            _text("lease_id", "PRIMARY KEY"),
            _text("budget"),
            _text("period"),
            _text("period_start"),
            Column("outstanding_usd", "real"),
            Column("expires_at", "real"),  # by the database's clock (see leases.py)
            # Schema version 4: each write's HMAC over the other columns, so a forged or altered lease is caught
            # (see lease_rows.py); NULL only on a lease an earlier release wrote.
            _text("mac", ""),
            # Schema version 6: the process whose journal holds the calls drawn from the lease (``writer@host``, see
            # exporter/recovery.py): an expired lease is kept until that journal is in the ledger. NULL: no owner known.
            _text("owner", ""),
        ),
    ),
    REPRICINGS,
    # The HMAC chain over calls, events and repricings, in the order they were written (see audit.py).
    Table(
        "audit",
        (
            Column("seq", "int", "PRIMARY KEY"),
            _text("kind"),
            _text("call_id", ""),
            Column("row_id", "int", ""),
            _text("mac"),
        ),
    ),
)

CALL_COLUMNS = CALLS.column_names
assert CALL_COLUMNS[CALL_COLUMNS_V1 - 1] == "attributes"
assert CALL_COLUMNS[CALL_COLUMNS_V2 - 1] == "service_tier"
# The widths a calls row has been MACed at, narrowest first (see audit.call_mac_content).
CALL_WIDTHS = (CALL_COLUMNS_V1, CALL_COLUMNS_V2, len(CALL_COLUMNS))
CALL_TYPES = CALLS.audit_types
EVENT_COLUMNS = EVENTS.column_names
EVENT_TYPES = EVENTS.audit_types
REPRICING_COLUMNS = REPRICINGS.column_names
REPRICING_TYPES = REPRICINGS.audit_types

_CONVERT = {"int": int, "real": float, "text": None}
# Per calls column: how its values are read from a batch's entries, and converted (None: as they are).
_CALL_VALUES = tuple(
    (
        operator.attrgetter(column.value) if isinstance(column.value, str) else column.value,
        isinstance(column.value, str),
        _CONVERT[column.type],
        "NOT NULL" in column.definition or "PRIMARY KEY" in column.definition,
    )
    for column in CALLS.columns
)


def create_statements(types: dict[str, str]) -> list[str]:
    """Every table and index, in a dialect's column types; each statement does nothing when its object exists."""
    return [statement for table in TABLES for statement in table.create(types)]


def call_rows(entries: Sequence, tz: ZoneInfo) -> list[tuple]:
    """The calls rows of ledger entries, each value already of its column's type: they are MACed as they are.

    Built a column at a time: a record attribute is read and converted by ``map`` over the batch, in C, rather than by
    a Python call per value, which was most of what a batch cost to ingest."""
    records = [entry.record for entry in entries]
    columns = []
    for read, of_record, convert, not_null in _CALL_VALUES:
        values = map(read, records) if of_record else [read(entry, tz) for entry in entries]
        if convert is not None:
            # A NULL in a NOT NULL column fails here, as the INSERT would: the batch is refused, then its entries
            # are taken one by one (LedgerSink) and the one at fault is set aside.
            values = map(convert, values) if not_null else [None if v is None else convert(v) for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))
