"""spendwatch.exporter: usage records into a durable ledger, budgets, and Prometheus metrics.

``open_ledger(settings)`` opens the ledger a :class:`Settings` names (the command line's way: it must be there);
``open_ledger_later(settings)`` checks the location and connects on first use (an app's way: it starts whether
or not its ledger is up). :class:`LedgerSink` is the usage sink that journals each record on the caller's path and
drains it into that ledger.
"""

from spendwatch.exporter.ledger import (
    Ledger,
    LedgerEntry,
    LedgerUnavailable,
    check_location,
    connect_backend,
    open_backend,
)
from spendwatch.exporter.settings import BudgetSpec, Settings, load_settings
from spendwatch.exporter.sink import LedgerSink, journal_directory

__all__ = [
    "BudgetSpec",
    "Ledger",
    "LedgerEntry",
    "LedgerSink",
    "LedgerUnavailable",
    "Settings",
    "journal_directory",
    "load_settings",
    "open_ledger",
    "open_ledger_later",
]


def open_ledger(settings: Settings) -> Ledger:
    """The ledger ``settings.ledger`` names, created on first use; a ConfigError if it cannot be one."""
    return Ledger(open_backend(settings.ledger, settings.ledger_label), settings.timezone)


def open_ledger_later(settings: Settings) -> Ledger:
    """The ledger ``settings.ledger`` names, connected on first use and retried while it cannot be reached.
    A ConfigError now only for a location that could never work (a malformed URL, a path under a file)."""
    check_location(settings.ledger, settings.ledger_label)
    return Ledger.opened_later(
        settings.ledger, settings.timezone, lambda: connect_backend(settings.ledger, settings.ledger_label)
    )
