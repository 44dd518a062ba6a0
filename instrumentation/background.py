"""The instrumentation's one background thread per process: its deferred work, done off the caller's path.

Each :data:`FLUSH_INTERVAL_S` (or at once when woken) it runs its tasks, such as ending the calls of streams the
caller dropped, and then its flushes, such as recording the queued GenAI metrics: the tasks first, because ending a
call queues its metrics. Neither side imports the other: each registers its work here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

__all__ = ["FLUSH_INTERVAL_S", "BackgroundThread", "flush_all", "run_with_each_flush", "start_background_thread"]

FLUSH_INTERVAL_S = 1.0

_logger = logging.getLogger(__name__)


class BackgroundThread:
    """The one background thread of this process, and the work it does each interval."""

    def __init__(self) -> None:
        self.tasks: list[Callable[[], None]] = []  # deferred work that may queue more for the flushes
        self.flushes: list[Callable[[], int]] = []  # each records a queue; returns how many calls it recorded
        # Held while recording into the SDK, and by a fork: a child must not inherit an SDK lock this thread held.
        self.recording = threading.RLock()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.running = False

    def start(self) -> None:
        """Start the thread if this process has none yet (a forked child starts its own)."""
        if not self.running:
            with self._lock:
                if not self.running:
                    thread = threading.Thread(target=self._flush_forever, name="spendwatch-semconv", daemon=True)
                    try:
                        thread.start()
                    except RuntimeError:  # no new thread at interpreter shutdown (Python 3.12.0-1): exit flushes
                        _logger.debug("spendwatch: could not start the background thread", exc_info=True)
                        return
                    self.running = True

    def wake(self) -> None:
        """Start the thread if need be, and have it flush now."""
        self.start()
        self._wake.set()

    def forget_thread(self) -> None:
        # Threads do not survive a fork, and the parent's thread may have held these locks: the child's first call
        # starts its own thread, with fresh ones.
        self.running = False
        self.recording = threading.RLock()
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def flush_all(self) -> int:
        with self.recording:  # the tasks end calls (sinks, span processors): a fork must not catch them midway
            for task in self.tasks:
                try:
                    task()
                except Exception:  # noqa: BLE001 - must not end the thread
                    _logger.debug("spendwatch: a deferred task failed", exc_info=True)
            return sum(flush() for flush in self.flushes)

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush_all()


background_thread = BackgroundThread()
os.register_at_fork(
    before=lambda: background_thread.recording.acquire(),
    after_in_parent=lambda: background_thread.recording.release(),
    after_in_child=background_thread.forget_thread,
)


def run_with_each_flush(task: Callable[[], None]) -> None:
    """Have the background thread run ``task`` each interval too (and :func:`flush_all`): one thread does the
    instrumentation's deferred work."""
    background_thread.tasks.append(task)


def start_background_thread() -> None:
    """Make sure this process's background thread runs (say, before anything can be left for its tasks)."""
    background_thread.start()


def flush_all() -> int:
    """Do now what the background thread does each interval (its tasks, then its flushes); returns how many calls
    this recorded. For a clean shutdown, and for ``bench`` to time the work done off the caller's path."""
    return background_thread.flush_all()
