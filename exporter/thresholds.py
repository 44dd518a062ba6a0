"""In-process threshold callbacks: ``spendwatch.on_threshold(fn)`` calls ``fn(status)`` once per budget, period and
level when spend crosses the warning, critical or exceeded line, so an app can react (switch models, notify)
without Alertmanager. Checked off the call path, after the journal drains into the ledger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from spendwatch.exporter.budgets import LEVELS, BudgetStatus

__all__ = ["ThresholdWatcher"]

_logger = logging.getLogger(__name__)


class ThresholdWatcher:
    def __init__(self, statuses: Callable[[], list[BudgetStatus]]) -> None:
        self._statuses = statuses
        self._callbacks: list[Callable[[BudgetStatus, str], None]] = []
        self._fired: set[tuple[str, str, str, str]] = set()
        self._lock = threading.Lock()

    def add(self, callback: Callable[[BudgetStatus, str], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def check(self) -> None:
        """Fire every callback for each level newly reached; a level is reached once per period."""
        if not self._callbacks:
            return
        for status in self._statuses():
            for level in LEVELS:
                if status.used_ratio < status.thresholds[level]:
                    break
                key = (status.name, status.period, status.period_start.isoformat(), level)
                with self._lock:
                    if key in self._fired:
                        continue
                    self._fired.add(key)
                    callbacks = list(self._callbacks)
                for callback in callbacks:
                    _call_user_hook(callback, status, level)


def _call_user_hook(callback: Callable[[BudgetStatus, str], None], status: BudgetStatus, level: str) -> None:
    try:
        callback(status, level)
    except Exception:  # noqa: BLE001 - a user's hook must not stop the drainer or other hooks
        _logger.warning("spendwatch: on_threshold callback %r failed", callback, exc_info=True)
