"""The usage sink the exporter registers with the instrumentation: journal on the caller's path, ledger behind it.

``record()`` is the only part on the caller's path: encode (~1 µs) and copy into this process's memory-mapped
journal (~1 µs). A daemon thread drains the journal into the ledger in batches. When the ledger cannot be reached or
written (PostgreSQL down, a read-only or locked file) the records wait in the journal, the failure is logged once
per outage and counted in ``ledger_errors``, and draining resumes when the ledger is back. So a sink never waits for
its ledger: it starts with one that is down, and its drainer connects when it can. Its first pass also replays
journals left by processes that died before their drainer caught up, and runs the tasks queued with
:meth:`LedgerSink.when_reachable` (the app's start-up record).

The journal lives beside a SQLite ledger. Where that directory cannot be written either (a read-only directory
holding a read-only ledger), it falls back to the state directory rather than stop the app.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spendwatch.exporter import codec
from spendwatch.exporter.journal import SUFFIX, JournalFile, JournalWriter, orphaned_journals
from spendwatch.exporter.ledger import (
    Ledger,
    LedgerEntry,
    first_line,
    is_postgres_location,
    shown_location,
    state_directory,
)
from spendwatch.exporter.ledger.history import record_outage
from spendwatch.exporter.spans.records import entry_id_of
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["LedgerSink", "fallback_journal_directory", "journal_directory", "waiting_records"]

_logger = logging.getLogger(__name__)

DRAIN_INTERVAL_S = 0.25
QUARANTINE_FILE = "quarantine.jsonl"
_BATCH = 2000


def journal_directory(ledger_location: str, state_home: str | None = None) -> Path:
    """Beside a SQLite ledger; under the state directory, one per URL, for PostgreSQL."""
    if is_postgres_location(ledger_location):
        return fallback_journal_directory(ledger_location, state_home)
    return Path(f"{ledger_location}.journal")


def fallback_journal_directory(ledger_location: str, state_home: str | None = None) -> Path:
    """Under the state directory, one per ledger: where a journal goes when its own directory cannot be written."""
    digest = hashlib.sha256(ledger_location.encode()).hexdigest()[:16]
    return state_directory(state_home) / f"journal-{digest}"


class LedgerSink:
    def __init__(self, ledger: Ledger, directory: str | os.PathLike, *, drain_interval: float = DRAIN_INTERVAL_S):
        self.ledger = ledger
        self.directories = _unique([Path(directory), fallback_journal_directory(ledger.location)])
        self.ledger_errors = 0
        self._failing = False
        self._outage: tuple[float, int, str] | None = None  # since when, errors before it, its first error
        self._warned_unjournaled = False
        self._recovered = False
        self._pending: list[Callable[[], object]] = []  # run once the ledger takes writes (see when_reachable)
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._drain_interval = drain_interval
        self.after_drain: list = []  # callables run by the drainer after records reached the ledger
        # The OpenTelemetry service.name of this process, read once when the exporter attaches: given to every record
        # that names none (an instrumented call's), so budgets and reports can tell services sharing a ledger apart.
        self.service: str | None = None
        self._journal = self._open_journal()
        self._start_drainer()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    @property
    def directory(self) -> Path:
        """Where this process journals now: beside the ledger, or the fallback when that cannot be written."""
        journal = self._journal
        return journal.directory if journal is not None else self.directories[0]

    # --- the caller's path -------------------------------------------------------------------------------------
    def record(self, record: UsageRecord) -> None:
        if record.service is None:
            record.service = self.service
        journal = self._journal
        if journal is None:
            self._lost()
            return
        journal.append(codec.encode(record))

    def journal_all(self, records: list[UsageRecord]) -> bool:
        """Journal every record now, or return False: for a caller that must not say "taken" for a record it could
        not keep (the OTLP intake then answers 503 and the sender retries; a record journaled twice is one row)."""
        journal = self._journal
        if journal is None:
            return not records
        try:
            for record in records:
                if record.service is None:
                    record.service = self.service
                journal.append(codec.encode(record))
        except (OSError, ValueError) as error:  # a full disk, a file that cannot be created or mapped
            _logger.warning("spendwatch: cannot journal in %s (%s)", journal.directory, first_line(error))
            return False
        return True

    def _lost(self) -> None:
        # No journal could be created anywhere: the call is counted as a ledger error, never dropped in silence.
        self.ledger_errors += 1
        if not self._warned_unjournaled:
            self._warned_unjournaled = True
            _logger.warning("spendwatch: no journal can be written in %s; calls go unrecorded", self.directories)

    def count_ledger_error(self) -> None:
        """Count a failed ledger access made outside the drainer (the guard's), with the drainer's own."""
        self.ledger_errors += 1

    def when_reachable(self, task: Callable[[], object]) -> None:
        """Run ``task`` (a ledger write) on the drainer once the ledger takes writes; retried until it succeeds."""
        self._pending.append(task)
        self._wake.set()

    # --- draining ----------------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Drain everything journaled so far into the ledger now. False when the ledger could not be written."""
        with self._drain_lock:
            if self._journal is None:
                self._journal = self._open_journal(quiet=True)
            # Each step is tried whatever the one before did: a dead process's journal the ledger refuses must not
            # hold back this process's records.
            recovered = self._recover_once()
            drained = all(self._drain_file(journal) for journal in list(self._files()))
            ok = drained and self._run_pending() and recovered
        if ok and self._journal is not None:
            self._journal.retire_drained()
        return ok

    def _files(self) -> list[JournalFile]:
        return self._journal.files if self._journal is not None else []

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

    def _start_drainer(self) -> None:
        self._thread = threading.Thread(target=self._drain_forever, args=(self._drain_interval,), daemon=True)
        self._thread.name = "spendwatch-ledger-drain"
        self._thread.start()

    def _recover_once(self) -> bool:
        if not self._recovered:
            before = self.ledger_errors
            self.recover()
            self._recovered = self.ledger_errors == before
        return self._recovered

    def _run_pending(self) -> bool:
        while self._pending:
            try:
                self._pending[0]()
            except Exception as error:  # noqa: BLE001 - kept for the next pass, as the journal's records are
                self._failed(error)
                return False
            self._pending.pop(0)
        return True

    def _open_journal(self, *, quiet: bool = False) -> JournalWriter | None:
        """This process's journal, in the first directory that takes one; None (logged once) if none does."""
        problems = []
        for directory in self.directories:
            try:
                journal = JournalWriter(directory)
            except OSError as error:
                problems.append(f"{directory}: {first_line(error)}")
                continue
            if problems and not quiet:
                _logger.warning("spendwatch: cannot journal in %s; journaling in %s instead", problems[0], directory)
            return journal
        if not quiet:
            _logger.warning("spendwatch: cannot create a journal (%s); will retry", "; ".join(problems))
        return None

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
            if self.ledger.is_open and self.ledger.accepts_writes():
                # The ledger is fine: something in this batch can never be stored. Store the rest, set that aside.
                self.ledger_errors += 1
                self._ingest_one_by_one(batch)
                return True
            self._failed(error)
            return False
        self._succeeded()
        return True

    def _failed(self, error: Exception) -> None:
        """Count a failed ledger write; log the first of an outage."""
        self.ledger_errors += 1
        if not self._failing:
            where = shown_location(self.ledger.location)
            _logger.warning("spendwatch: cannot write the ledger %s (%s); calls wait in the journal", where, error)
            self._outage = (time.time(), self.ledger_errors - 1, first_line(error))
        self._failing = True

    def _succeeded(self) -> None:
        if self._failing:
            _logger.warning("spendwatch: the ledger %s is writable again", shown_location(self.ledger.location))
            self._record_outage()
        self._failing = False

    def _record_outage(self) -> None:
        """Keep the outage that just ended in the ledger's alert history: now is the first time it can be written."""
        if self._outage is None:
            return
        (since, errors_before, error), self._outage = self._outage, None
        process = {"pid": os.getpid(), "host": socket.gethostname()}
        errors = self.ledger_errors - errors_before
        try:
            record_outage(self.ledger, since=since, until=time.time(), errors=errors, error=error, process=process)
        except Exception:  # noqa: BLE001 - the history entry is lost, the records it was about are not
            _logger.debug("spendwatch: cannot record the ledger outage", exc_info=True)

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
        """Replay journals whose writer died (in the journal directory and its fallback). Returns how many records
        were new to the ledger; a journal that cannot be replayed yet is kept, and counted as a ledger error."""
        recovered = 0
        for directory in self.directories:
            for journal in orphaned_journals(directory):
                drained = True
                try:
                    entries = [_entry(journal, offset, payload) for offset, payload in journal.records()]
                    for start in range(0, len(entries), _BATCH):
                        recovered += self.ledger.ingest(entries[start : start + _BATCH])
                except Exception as error:  # noqa: BLE001
                    drained = False
                    self._failed(error)
                journal.close(delete=drained)
        return recovered

    def close(self) -> None:
        """Stop the drainer, drain what is left, and remove this process's journal when it is all in the ledger."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        drained = self.flush()
        if self._journal is not None:
            self._journal.close(delete=drained)

    def _after_fork_in_child(self) -> None:
        # A forked worker must not write into its parent's journal, nor rely on its parent's drainer thread.
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = []  # the parent runs its own start-up record
        self.ledger.reopen()
        self._journal = self._open_journal()
        self._drain_interval = DRAIN_INTERVAL_S
        self._start_drainer()


def _entry(journal: JournalFile, offset: int, payload: bytes) -> LedgerEntry:
    record = codec.decode(payload)
    if record.source != "sdk":  # a span's call: one ledger row per span, however many times it was handed in
        return LedgerEntry(entry_id_of(record.trace_id, record.span_id), record)
    return LedgerEntry(f"{journal.file_id}:{offset}", record)


def waiting_records(directories: list[Path]) -> int:
    """How many journaled records are not in the ledger yet, over every journal in ``directories`` (live or not)."""
    waiting = 0
    for directory in directories:
        for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else ():
            try:
                journal = JournalFile.open(path)
            except (OSError, ValueError):
                continue  # retired or replayed meanwhile
            try:
                waiting += sum(1 for _ in journal.records())
            finally:
                journal.close()
    return waiting


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
