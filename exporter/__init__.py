"""spendwatch.exporter: usage records into a durable ledger, budgets, and Prometheus metrics.

``open_ledger(settings)`` opens the ledger a :class:`Settings` names; :class:`LedgerSink` is the usage sink that
journals each record on the caller's path and drains it into that ledger.
"""

from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger_backends import open_backend
from spendwatch.exporter.settings import BudgetSpec, Settings, load_settings
from spendwatch.exporter.sink import LedgerSink, journal_directory

__all__ = [
    "BudgetSpec",
    "Ledger",
    "LedgerEntry",
    "LedgerSink",
    "Settings",
    "journal_directory",
    "load_settings",
    "open_ledger",
]


def open_ledger(settings: Settings) -> Ledger:
    """The ledger ``settings.ledger`` names, created on first use; a ConfigError if it cannot be one."""
    return Ledger(open_backend(settings.ledger, settings.ledger_label), settings.timezone)
