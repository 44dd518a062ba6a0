"""In-process threshold callbacks: ``spendwatch.on_threshold(fn)`` calls ``fn(status)`` once per budget, period and
level when spend crosses the warning, critical or exceeded line, so an app can react (switch models, notify)
without Alertmanager. Checked off the call path, after the journal drains into the ledger.

Given ``record``, each crossing is also handed to it (the runtime keeps it in the ledger's alert history), whether
or not the app registered a callback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from spendwatch.exporter.budgets import LEVELS, BudgetStatus

__all__ = ["ThresholdWatcher"]

_logger = logging.getLogger(__name__)

# Without callbacks, only for the record: the budgets are read at most this often, not after every drain.
RECORD_INTERVAL_S = 1.0


class ThresholdWatcher:
    def __init__(
        self,
        statuses: Callable[[], list[BudgetStatus]],
        record: Callable[[BudgetStatus, str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._statuses = statuses
        self._record = record
        self._clock = clock
        self._next_record_check = 0.0
        self._callbacks: list[Callable[[BudgetStatus, str], None]] = []
        self._fired: set[tuple[str, str, str, str]] = set()
        self._lock = threading.Lock()

    def add(self, callback: Callable[[BudgetStatus, str], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def check(self) -> None:
        """Fire every callback (and the record) for each level newly reached; a level is reached once per period."""
        if not self._callbacks and not self._due_for_record():
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
                if self._record is not None:
                    _call_record(self._record, status, level)
                for callback in callbacks:
                    _call_user_hook(callback, status, level)

    def _due_for_record(self) -> bool:
        if self._record is None:
            return False
        now = self._clock()
        if now < self._next_record_check:
            return False
        self._next_record_check = now + RECORD_INTERVAL_S
        return True


def _call_record(record: Callable[[BudgetStatus, str], object], status: BudgetStatus, level: str) -> None:
    try:
        record(status, level)
    except Exception:  # noqa: BLE001 - an unreachable ledger loses the history entry, never the callbacks
        _logger.debug("spendwatch: cannot record the %s crossing of budget %s", level, status.name, exc_info=True)


def _call_user_hook(callback: Callable[[BudgetStatus, str], None], status: BudgetStatus, level: str) -> None:
    try:
        callback(status, level)
    except Exception:  # noqa: BLE001 - a user's hook must not stop the drainer or other hooks
        _logger.warning("spendwatch: on_threshold callback %r failed", callback, exc_info=True)
