"""The spend ledger, and the only code that knows its tables: one row per call, running totals, the audit trail.

SQLite is the embedded default; PostgreSQL (``postgresql://``) lets several hosts share one budget. Both speak the
same SQL; the dialect differences are in :mod:`.dialects`. The package's modules:

- :mod:`.schema`: the tables, defined once (CREATE statements, the calls row, the audit's field types);
- :mod:`.migrations`: schema versions and the steps that open a ledger written by an earlier release;
- :mod:`.locations`: where a ledger is, whether it can be one, connecting to it;
- :mod:`.ledger`: :class:`Ledger`, ingest and every read the rest of spendwatch makes;
- :mod:`.totals`: the one writer of the running totals;
- :mod:`.audit`, :mod:`.leases`, :mod:`.reprice`: the HMAC chain, budget leases, re-pricing stored calls.

Everything outside this package goes through :class:`Ledger`'s public methods, never around them.
"""

from spendwatch.exporter.ledger.ledger import Ledger, LedgerEntry, budget_scope
from spendwatch.exporter.ledger.locations import (
    LEDGER_ENV,
    LedgerUnavailable,
    check_location,
    connect_backend,
    first_line,
    is_postgres_location,
    open_backend,
    shown_location,
    state_directory,
)
from spendwatch.exporter.ledger.migrations import SCHEMA_VERSION
from spendwatch.exporter.ledger.schema import TOTAL_COUNTERS, TOTAL_KEYS
from spendwatch.exporter.ledger.totals import REQUEST_DURATION_BUCKETS

__all__ = [
    "LEDGER_ENV",
    "REQUEST_DURATION_BUCKETS",
    "SCHEMA_VERSION",
    "TOTAL_COUNTERS",
    "TOTAL_KEYS",
    "Ledger",
    "LedgerEntry",
    "LedgerUnavailable",
    "budget_scope",
    "check_location",
    "connect_backend",
    "first_line",
    "is_postgres_location",
    "open_backend",
    "shown_location",
    "state_directory",
]
