"""spendwatch: see and cap what LLM API calls cost.

Start an app with ``opentelemetry-instrument python app.py``, or call :func:`configure` once at start-up::

    import spendwatch
    spendwatch.configure(daily_budget_usd=50, monthly_budget_usd=1000)

Every OpenAI call then gets a span with its token usage and USD cost, lands in the durable spend ledger, and shows
on ``http://127.0.0.1:9464/metrics``. :func:`budgets` reports each budget and changes limits at run time.
"""

from __future__ import annotations

from typing import Any

from spendwatch.attribution import category
from spendwatch.instrumentation.errors import BudgetExceededError, ConfigError
from spendwatch.tracking import track

__all__ = ["BudgetExceededError", "ConfigError", "budgets", "category", "configure", "on_threshold", "track"]


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
