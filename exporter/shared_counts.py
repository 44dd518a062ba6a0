"""Counts that add up over every process writing one ledger: ledger errors and dropped records.

An app process counts its own failed ledger writes and the records it had to drop, but ``/metrics`` may be served by
another process (``spendwatch serve``, maybe on another host). So each process keeps what it counted in the ledger
itself, as ``exporter_counts`` events (chained into the audit trail like every event) holding what it counted since
its previous one, written by its drainer once the ledger takes writes. Whoever serves ``/metrics`` adds up those
events and what it counted itself but has not kept yet. A count made while the ledger is down reaches other
processes when the ledger is back: no other place is shared by every host.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

__all__ = ["COUNTS_EVENT", "SharedCounts"]

COUNTS_EVENT = "exporter_counts"
NAMES = ("ledger_errors", "records_dropped")

_logger = logging.getLogger(__name__)


class SharedCounts:
    """This process's counts (``own``, a callable giving the current values by name) and every process's in the
    ledger. :meth:`keep` writes what is new of ours; :meth:`total` reads everyone's."""

    def __init__(self, ledger, own) -> None:
        self.ledger = ledger
        self._own = own
        self._kept = dict.fromkeys(NAMES, 0)  # of our counts, how much is in the ledger already
        self._read = dict.fromkeys(NAMES, 0)  # sums of the events read so far (ours included)
        self._read_up_to = 0  # the id of the last event read
        self._shown = dict.fromkeys(NAMES, 0)  # the last totals given out
        self._lock = threading.Lock()

    def keep(self) -> None:
        """Write our counts not yet in the ledger as one event (none when nothing is new). Raises when the ledger
        cannot be written; the caller retries on its next pass."""
        now = self._own()
        new = {name: now[name] - self._kept[name] for name in NAMES}
        if not any(new.values()):
            return
        detail = {**new, "pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
        with self._lock:  # total() must not see the event and still count its counts as not kept
            self.ledger.add_event(COUNTS_EVENT, detail)
            self._kept = {name: now[name] for name in NAMES}

    def total(self, name: str) -> int:
        """Every process's ``name`` count: the events in the ledger (as last read, while it cannot be read), and
        ours not kept there yet."""
        with self._lock:
            try:
                for event in self.ledger.events_since(COUNTS_EVENT, self._read_up_to):
                    detail = json.loads(event["detail"])
                    for counted in NAMES:
                        self._read[counted] += int(detail.get(counted, 0))
                    self._read_up_to = int(event["id"])
            except Exception:  # noqa: BLE001 - the ledger is down: what was read, and ours, which keep counting
                _logger.debug("spendwatch: cannot read the exporter counts in the ledger", exc_info=True)
            # A counter never goes down, not even while an event we kept cannot be read back yet.
            total = max(self._shown[name], self._read[name] + self._own()[name] - self._kept[name])
            self._shown[name] = total
            return total

    def after_fork(self) -> None:
        """A forked child counts from zero (its own counts start at zero too), and has kept nothing yet."""
        self._lock = threading.Lock()
        self._kept = dict.fromkeys(NAMES, 0)
