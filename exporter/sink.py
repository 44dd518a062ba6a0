"""The usage sink the exporter registers with the instrumentation: journal on the caller's path, ledger behind it.

``record()`` is the only part on the caller's path: encode (~1 µs) and copy into this process's memory-mapped
journal (~1 µs). A daemon thread drains the journal into the ledger in batches. When the ledger cannot be written
(read-only file, full disk, PostgreSQL down) the records wait in the journal, the failure is logged once per
outage and counted in ``ledger_errors``, and draining resumes when the ledger is back. Opening a sink first replays
journals left by processes that died before their drainer caught up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from spendwatch.exporter import codec
from spendwatch.exporter.journal import JournalFile, JournalWriter, orphaned_journals
from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger_backends import is_postgres_location, state_directory
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["LedgerSink", "journal_directory"]

_logger = logging.getLogger(__name__)

DRAIN_INTERVAL_S = 0.25
QUARANTINE_FILE = "quarantine.jsonl"
_BATCH = 2000


def journal_directory(ledger_location: str, state_home: str | None = None) -> Path:
    """Beside a SQLite ledger; under the state directory, one per URL, for PostgreSQL."""
    if is_postgres_location(ledger_location):
        digest = hashlib.sha256(ledger_location.encode()).hexdigest()[:16]
        return state_directory(state_home) / f"journal-{digest}"
    return Path(f"{ledger_location}.journal")


class LedgerSink:
    def __init__(self, ledger: Ledger, directory: str | os.PathLike, *, drain_interval: float = DRAIN_INTERVAL_S):
        self.ledger = ledger
        self.directory = Path(directory)
        self.ledger_errors = 0
        self._failing = False
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.after_drain: list = []  # callables run by the drainer after records reached the ledger
        self.recover()
        self._journal = JournalWriter(self.directory)
        self._thread = threading.Thread(target=self._drain_forever, args=(drain_interval,), daemon=True)
        self._thread.name = "spendwatch-ledger-drain"
        self._thread.start()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # --- the caller's path -------------------------------------------------------------------------------------
    def record(self, record: UsageRecord) -> None:
        self._journal.append(codec.encode(record))

    # --- draining ----------------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Drain everything journaled so far into the ledger now. False when the ledger could not be written."""
        with self._drain_lock:
            ok = all(self._drain_file(journal) for journal in list(self._journal.files))
        if ok:
            self._journal.retire_drained()
        return ok

    def _drain_forever(self, interval: float) -> None:
        while not self._stopping:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
                for hook in self.after_drain:
                    hook()
            except Exception:  # noqa: BLE001 - the drainer must outlive any one failure
                _logger.debug("spendwatch: ledger drain failed", exc_info=True)

    def _drain_file(self, journal: JournalFile) -> bool:
        while True:
            batch, end = [], None
            for offset, payload in journal.records():
                batch.append(_entry(journal, offset, payload))
                end = journal.end_of(offset, payload)
                if len(batch) >= _BATCH:
                    break
            if not batch:
                return True
            if not self._ingest(batch):
                return False
            journal.mark_drained(end)

    def _ingest(self, batch: list[LedgerEntry]) -> bool:
        try:
            self.ledger.ingest(batch)
        except Exception as error:  # noqa: BLE001 - the records stay in the journal until the ledger is back
            self.ledger_errors += 1
            if self.ledger.accepts_writes():
                # The ledger is fine: something in this batch can never be stored. Store the rest, set that aside.
                self._ingest_one_by_one(batch)
                return True
            if not self._failing:
                _logger.warning("spendwatch: cannot write the ledger %s (%s); will retry", self.ledger.location, error)
            self._failing = True
            return False
        if self._failing:
            _logger.warning("spendwatch: the ledger %s is writable again", self.ledger.location)
        self._failing = False
        return True

    def _ingest_one_by_one(self, batch: list[LedgerEntry]) -> None:
        for entry in batch:
            try:
                self.ledger.ingest([entry])
            except Exception as error:  # noqa: BLE001
                self.ledger_errors += 1
                self._quarantine(entry, error)

    def _quarantine(self, entry: LedgerEntry, error: Exception) -> None:
        """Keep a record the ledger refuses (so it is not lost, and does not block every record after it)."""
        path = self.directory / QUARANTINE_FILE
        _logger.warning("spendwatch: the ledger refused record %s (%s); kept in %s", entry.entry_id, error, path)
        line = json.dumps({"entry_id": entry.entry_id, "error": str(error), "record": repr(entry.record)})
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as file:
            file.write(line + "\n")

    def recover(self) -> int:
        """Replay journals whose writer died. Returns how many records were new to the ledger."""
        recovered = 0
        for journal in orphaned_journals(self.directory):
            drained = True
            try:
                entries = [_entry(journal, offset, payload) for offset, payload in journal.records()]
                for start in range(0, len(entries), _BATCH):
                    recovered += self.ledger.ingest(entries[start : start + _BATCH])
            except Exception as error:  # noqa: BLE001
                drained = False
                self.ledger_errors += 1
                _logger.warning("spendwatch: cannot replay journal %s yet (%s)", journal.path, error)
            journal.close(delete=drained)
        return recovered

    def close(self) -> None:
        """Stop the drainer, drain what is left, and remove this process's journal when it is all in the ledger."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        drained = self.flush()
        self._journal.close(delete=drained)

    def _after_fork_in_child(self) -> None:
        # A forked worker must not write into its parent's journal, nor rely on its parent's drainer thread.
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self.ledger.reopen()
        self._journal = JournalWriter(self.directory)
        self._thread = threading.Thread(target=self._drain_forever, args=(DRAIN_INTERVAL_S,), daemon=True)
        self._thread.start()


def _entry(journal: JournalFile, offset: int, payload: bytes) -> LedgerEntry:
    return LedgerEntry(f"{journal.file_id}:{offset}", codec.decode(payload))
