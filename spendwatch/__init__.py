"""spendwatch: see and cap what LLM API calls cost.

Start an app with ``opentelemetry-instrument python app.py``, or call :func:`configure` once at start-up::

    import spendwatch
    spendwatch.configure(daily_budget_usd=50, monthly_budget_usd=1000)

Every OpenAI call then gets a span with its token usage and USD cost, lands in the durable spend ledger, and shows
on ``http://127.0.0.1:9464/metrics``. :func:`budgets` reports each budget and changes limits at run time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from spendwatch.attribution import category
    from spendwatch.instrumentation.errors import BudgetExceededError, ConfigError
    from spendwatch.tracking import track

__all__ = ["BudgetExceededError", "ConfigError", "budgets", "category", "configure", "on_threshold", "track"]

# Where each lazily loaded public name lives. Importing spendwatch.instrumentation runs this file first (it is a
# subpackage of spendwatch), so this file imports nothing that imports the instrumentation back: the names load
# on first use (PEP 562) and are then kept here, so later uses cost a plain attribute lookup.
_LAZY = {
    "category": "spendwatch.attribution",
    "track": "spendwatch.tracking",
    "BudgetExceededError": "spendwatch.instrumentation.errors",
    "ConfigError": "spendwatch.instrumentation.errors",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def configure(**settings: Any):
    """Attach spendwatch to this process: instrument what is installed, open the ledger, serve ``/metrics``.

    Takes the settings of DESIGN.md as keyword arguments (``ledger``, ``daily_budget_usd``, ``monthly_budget_usd``,
    ``metrics_address``, ``timezone``, ``thresholds``, ``enforce``, ``categories``, ``prices_file``, ``config``);
    a keyword beats the environment, which beats the ``SPENDWATCH_CONFIG`` file. Calling it again returns what the
    first call attached. Bad settings raise :class:`ConfigError`.
    """
    from spendwatch import runtime

    return runtime.attach(**settings)


def budgets():
    """The budgets of the attached process (see :class:`spendwatch.exporter.budgets.Budgets`)."""
    from spendwatch import runtime
    from spendwatch.exporter.budgets import Budgets

    attached = runtime.current() or runtime.attach()
    return Budgets(attached.ledger, attached.settings)


def on_threshold(callback):
    """Call ``callback(status, level)`` once per budget, period and level (``warning``, ``critical``,
    ``exceeded``) when spend crosses that line; ``status`` is a ``BudgetStatus``. Runs off the call path, shortly
    after the crossing call's record reaches the ledger. Usable as a decorator; returns ``callback``."""
    from spendwatch import runtime

    attached = runtime.current() or runtime.attach()
    attached.thresholds.add(callback)
    return callback
