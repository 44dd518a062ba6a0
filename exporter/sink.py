"""The usage sink the exporter registers with the instrumentation: journal on the caller's path, ledger behind it.

``record()`` is the only part on the caller's path: encode (~1 µs) and copy into this process's memory-mapped
journal (~1 µs). A daemon thread drains the journal into the ledger in batches. When the ledger cannot be reached or
written (PostgreSQL down, a read-only or locked file) the records wait in the journal, the failure is logged once
per outage and counted in ``ledger_errors``, and draining resumes when the ledger is back. So a sink never waits for
its ledger: it starts with one that is down, and its drainer connects when it can. Its first pass also replays
journals left by processes that died before their drainer caught up, and runs the tasks queued with
:meth:`LedgerSink.when_reachable` (the app's start-up record).

The journal lives beside a SQLite ledger. A journal file that cannot be written there (a read-only directory, a full
disk) goes to the next place of the chain (:func:`journal_directories`): ``$XDG_RUNTIME_DIR``, then the state
directory; when none takes one, records wait in memory (``SPENDWATCH_JOURNAL_MEMORY_RECORDS`` of them) and the
drainer writes them to the first place that accepts them, or straight into the ledger. Only past that bound is a
record dropped, and it is counted (``spendwatch_records_dropped_total``) and kept in the ledger with this process's
ledger errors (:mod:`~spendwatch.exporter.shared_counts`), so ``spendwatch serve`` reports both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spendwatch.exporter import codec, inflight, quarantine
from spendwatch.exporter.journal import (
    DEFAULT_MEMORY_RECORDS,
    SUFFIX,
    JournalFile,
    JournalWriter,
    orphaned_journals,
)
from spendwatch.exporter.ledger import (
    Ledger,
    LedgerEntry,
    first_line,
    is_postgres_location,
    shown_location,
    state_directory,
)
from spendwatch.exporter.ledger.errors import is_poison
from spendwatch.exporter.ledger.history import record_outage
from spendwatch.exporter.recovery import DeadJournalWatch, journal_left
from spendwatch.exporter.shared_counts import SharedCounts
from spendwatch.exporter.spans.records import entry_id_of
from spendwatch.instrumentation.records import UsageRecord, sink_changed

__all__ = [
    "LedgerSink",
    "fallback_journal_directory",
    "journal_directories",
    "journal_directory",
    "runtime_journal_directory",
    "waiting_records",
]

_logger = logging.getLogger(__name__)

DRAIN_INTERVAL_S = 0.25
STORE_WAIT_S = 1.0  # how long record_spans waits for another writer of the ledger before it journals instead
_BATCH = 2000


def journal_directory(ledger_location: str, state_home: str | None = None) -> Path:
    """Beside a SQLite ledger; under the state directory, one per URL, for PostgreSQL."""
    if is_postgres_location(ledger_location):
        return fallback_journal_directory(ledger_location, state_home)
    return Path(f"{ledger_location}.journal")


def fallback_journal_directory(ledger_location: str, state_home: str | None = None) -> Path:
    """Under the state directory, one per ledger: where a journal goes when its own directory cannot be written."""
    return state_directory(state_home) / _per_ledger(ledger_location)


def runtime_journal_directory(ledger_location: str, environ=os.environ) -> Path | None:
    """Under ``$XDG_RUNTIME_DIR``, one per ledger (None when it is not set, or relative, which the spec says to
    ignore): another file system than the ledger's, most often, and one that outlives the process."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if not os.path.isabs(runtime):
        return None
    return Path(runtime) / "spendwatch" / _per_ledger(ledger_location)


def journal_directories(ledger_location: str, state_home: str | None = None, environ=os.environ) -> list[Path]:
    """Every place a journal of this ledger may be, in the order a process tries them: its own directory, then
    ``$XDG_RUNTIME_DIR``, then the state directory. Recovery and :func:`waiting_records` look in all of them."""
    return _chain(journal_directory(ledger_location, state_home), ledger_location, state_home, environ)


def _chain(first: Path, ledger_location: str, state_home: str | None = None, environ=os.environ) -> list[Path]:
    runtime = runtime_journal_directory(ledger_location, environ)
    fallback = fallback_journal_directory(ledger_location, state_home)
    return _unique([first, *([runtime] if runtime is not None else []), fallback])


def _per_ledger(ledger_location: str) -> str:
    return f"journal-{hashlib.sha256(ledger_location.encode()).hexdigest()[:16]}"


class LedgerSink:
    def __init__(
        self,
        ledger: Ledger,
        directory: str | os.PathLike,
        *,
        drain_interval: float = DRAIN_INTERVAL_S,
        memory_records: int = DEFAULT_MEMORY_RECORDS,
    ):
        self.ledger = ledger
        self.directories = _chain(Path(directory), ledger.location)
        self.ledger_errors = 0
        self.counts = SharedCounts(ledger, self._own_counts)
        self._failing = False
        self._storing = threading.Lock()  # record_spans' straight writes
        self._outage: tuple[float, int, str] | None = None  # since when, errors before it, its first error
        self._memory_records = memory_records
        self._journal_problem: str | None = None  # why records wait in memory, as last logged
        self._dropped_logged = 0  # records dropped before the current outage of the journal
        self._dropping = False  # said that this outage drops records
        self._recovered = False
        self._pending: list[Callable[[], object]] = []  # run once the ledger takes writes (see when_reachable)
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._drain_interval = drain_interval
        # Callables run by the drainer after records reached the ledger; the first picks up dead processes' journals.
        self.after_drain: list = [DeadJournalWatch(self)]
        # The OpenTelemetry service.name of this process, read once when the exporter attaches: given to every record
        # that names none (an instrumented call's), so budgets and reports can tell services sharing a ledger apart.
        self.service: str | None = None
        self._journal = self._open_journal()
        self.inflight = self._open_inflight()  # this process's calls on the wire (inflight)
        self._start_drainer()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    @property
    def directory(self) -> Path:
        """Where this process journals now: beside the ledger, or the first fallback that takes a journal file."""
        return self._journal.directory

    @property
    def records_dropped(self) -> int:
        """This process's records that neither a journal file nor memory could keep (past the memory bound)."""
        return self._journal.dropped

    def _own_counts(self) -> dict[str, int]:
        return {"ledger_errors": self.ledger_errors, "records_dropped": self._journal.dropped}

    def all_ledger_errors(self) -> int:
        """Every process's ledger errors over this ledger (what ``/metrics`` serves), this one's included."""
        return self.counts.total("ledger_errors")

    def all_records_dropped(self) -> int:
        """Every process's dropped records over this ledger (what ``/metrics`` serves), this one's included."""
        return self.counts.total("records_dropped")

    # --- the caller's path -------------------------------------------------------------------------------------
    def record(self, record: UsageRecord) -> None:
        if record.service is None:
            record.service = self.service
        try:
            self._journal.append(codec.encode(record))  # in a file, else in memory, else counted as dropped
        except Exception:  # noqa: BLE001 - never into the caller's call; a record that cannot be encoded is counted
            self._journal.dropped += 1
            _logger.debug("spendwatch: cannot journal a usage record", exc_info=True)

    def journal_all(self, records: list[UsageRecord]) -> bool:
        """Journal every record now, or return False: for a caller that must not say "taken" for a record it could
        not keep (the OTLP intake then answers 503 and the sender retries; a record journaled twice is one row)."""
        journal = self._journal
        if not journal.durable:
            return not records
        try:
            for record in records:
                if not journal.append(codec.encode(record)):  # kept in memory: not durable, so not "taken"
                    _logger.warning("spendwatch: cannot journal in %s (%s)", journal.directory, journal.problem)
                    return False
        except ValueError as error:  # a record the codec cannot encode
            _logger.warning("spendwatch: cannot journal a span (%s)", first_line(error))
            return False
        return True

    def record_spans(self, records: list[UsageRecord]) -> bool:
        """Store spans' records (the OTLP intake's) in the ledger now, else journal them all; False when neither
        took them. Written straight in, a batch skips the journal's encode, append, read and decode (the OTLP intake's
        throughput). It waits at most ``STORE_WAIT_S`` for another writer, and not at all while the drainer finds the
        ledger failing: a sender's export must not time out on a busy or absent ledger when the journal can keep its
        spans. Anything that stops a batch going straight in (busy, down, a value the ledger refuses) leaves it to the
        journal and the drainer, which tell those apart. Either way a span is one ledger row, however many times it
        comes (its id is its trace and span id)."""
        service = self.service
        for record in records:
            if record.service is None:  # a span whose resource named no service: this process's
                record.service = service
        if records and not self._failing:
            with self._storing:  # one at a time, as the ledger takes one writer anyway
                try:
                    self.ledger.ingest(self._span_entries(records), wait_s=STORE_WAIT_S)
                    return True
                except Exception:  # noqa: BLE001 - journaled below, and the drainer's pass says what went wrong
                    _logger.debug("spendwatch: spans go to the journal: the ledger did not take them", exc_info=True)
        return self.journal_all(records)

    def _span_entries(self, records: list[UsageRecord]) -> list[LedgerEntry]:
        return [LedgerEntry(entry_id_of(record.trace_id, record.span_id), record) for record in records]

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
            self._find_journal_place()
            self._find_inflight_place()
            # Each step is tried whatever the one before did: a dead process's journal the ledger refuses must not
            # hold back this process's records.
            recovered = self._recover_once()
            drained = all(self._drain_file(journal) for journal in list(self._journal.files))
            drained = self._drain_memory() and drained
            ok = drained and self._run_pending() and recovered
            if ok:
                self._keep_counts()
        if ok:
            self._journal.retire_drained()
        return ok

    def _find_journal_place(self) -> None:
        """While records wait in memory, look for a journal file to put them in; say when that starts and ends."""
        journal = self._journal
        if journal.problem is not None:
            journal.reopen()
        if journal.problem is not None and self._journal_problem is None:
            _logger.warning(
                "spendwatch: no journal file can be written (%s); records wait in memory (up to %d, "
                "SPENDWATCH_JOURNAL_MEMORY_RECORDS) until a place or the ledger takes them",
                journal.problem,
                journal.memory_records,
            )
        elif journal.problem is None and self._journal_problem is not None:
            dropped = journal.dropped - self._dropped_logged
            _logger.warning("spendwatch: journaling in %s again (%d usage records dropped)", journal.directory, dropped)
            self._dropped_logged = journal.dropped
        self._journal_problem = journal.problem
        if journal.problem is not None and journal.dropped > self._dropped_logged and not self._dropping:
            # Once per outage, not once per pass: the count is in spendwatch_records_dropped_total meanwhile.
            _logger.error(
                "spendwatch: usage records are being dropped (%d so far): no journal file can be written and %d "
                "already wait in memory (counted in spendwatch_records_dropped_total)",
                journal.dropped - self._dropped_logged,
                journal.memory_records,
            )
        self._dropping = journal.problem is not None and journal.dropped > self._dropped_logged

    def _drain_memory(self) -> bool:
        """Records waiting in memory (no journal file takes them, or too large for one) go straight into the ledger."""
        while True:
            waiting = self._journal.waiting_in_memory(_BATCH)
            if not waiting:
                return True
            entries = [_entry_of(entry_id, payload) for entry_id, payload in waiting]
            if not self._ingest(entries):
                return False
            self._marks_done(entries)  # (inflight) in the ledger now
            self._journal.forget_memory(len(waiting))

    def _keep_counts(self) -> None:
        try:
            self.counts.keep()
        except Exception:  # noqa: BLE001 - kept on a later pass; the counts stay in this process meanwhile
            _logger.debug("spendwatch: cannot keep the exporter's counts in the ledger", exc_info=True)

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

    def _open_journal(self) -> JournalWriter:
        """This process's journal, in the first directory of the chain that takes a file, else waiting in memory."""
        journal = JournalWriter(self.directories, memory_records=self._memory_records)
        if journal.problem is None and journal.passed_over:
            _logger.warning(
                "spendwatch: cannot journal in %s; journaling in %s instead", journal.passed_over, journal.directory
            )
        return journal

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
            self._marks_done(batch)  # (inflight) journaled: a recovery would count them from their records
            if not self._ingest(batch):
                return False
            journal.mark_drained(end)

    def _ingest(self, batch: list[LedgerEntry]) -> bool:
        return self._ingest_counted(batch) is not None

    def _ingest_counted(self, batch: list[LedgerEntry]) -> int | None:
        """How many of ``batch`` were new to the ledger; None when it cannot take them now (they stay where they
        are, for the next pass: a full disk, a lost connection, a restart are retried until they succeed)."""
        try:
            new = self.ledger.ingest(batch)
        except Exception as error:  # noqa: BLE001 - the records stay in the journal until the ledger takes them
            if not is_poison(error):
                self._failed(error)
                return None
            # Something in this batch can never be stored: store the rest, set that aside.
            self.ledger_errors += 1
            return self._ingest_one_by_one(batch)
        self._succeeded()
        return new

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

    def _ingest_one_by_one(self, batch: list[LedgerEntry]) -> int | None:
        """Store what can be stored, set aside in quarantine what never can; None (all kept where they are, ingest
        is idempotent) on a transient error or when no directory takes the quarantined record."""
        new = 0
        for entry in batch:
            try:
                new += self.ledger.ingest([entry])
            except Exception as error:  # noqa: BLE001
                if not is_poison(error):
                    self._failed(error)
                    return None
                self.ledger_errors += 1
                try:
                    quarantine.keep(self.directories, entry, error)
                except OSError as kept_error:
                    self._failed(kept_error)
                    return None
        self._succeeded()
        return new

    def recover(self) -> int:
        """Replay journals whose writer died (in the journal directory and its fallback). Returns how many records
        were new to the ledger; a journal that cannot be replayed yet is kept, and counted as a ledger error."""
        recovered, marks, waiting = 0, set(), set()
        for directory in self.directories:
            for journal in orphaned_journals(directory):
                drained = True
                try:
                    entries = [_entry(journal, offset, payload) for offset, payload in journal.records()]
                except Exception as error:  # noqa: BLE001 - a record that cannot be read: keep the file
                    entries, drained = [], False
                    self._failed(error)
                for start in range(0, len(entries), _BATCH):
                    new = self._ingest_counted(entries[start : start + _BATCH])
                    if new is None:
                        drained = False
                        break
                    recovered += new
                journal.close(delete=drained)
                marks.update(entry.record.mark for entry in entries)
                if not drained:  # (inflight) its writer's calls on the wire wait for it: counted from their records
                    waiting.add(inflight.writer_of(journal.path))
        return recovered + self._record_interrupted(marks, waiting)

    # --- calls on the wire (inflight) ----------------------------------------------------------------------------
    def _open_inflight(self, *, quiet: bool = False) -> inflight.InflightTable | None:
        """This process's in-flight table; its ``begin`` is this sink's (``records.begin`` calls it before a request
        leaves). None, and no ``begin``, when no directory takes one (tried again on each drain pass)."""
        self.__dict__.pop("begin", None)
        try:
            table = inflight.InflightTable(self.directories, self)
        except OSError as error:  # calls are still counted when they end; only a kill -9 mid-call goes unseen
            if not quiet:
                message = "spendwatch: cannot create an in-flight table (%s); calls go unmarked until one can be"
                _logger.warning(message, first_line(error))
            return None
        self.begin = table.begin  # no hop through the sink on the caller's path
        return table

    def _find_inflight_place(self) -> None:
        """A table no place took at start-up (a full disk) is tried again, so calls are marked once one does."""
        if self.inflight is None and not self._stopping:
            self.inflight = self._open_inflight(quiet=True)
            if self.inflight is not None:
                sink_changed()

    def _marks_done(self, entries: list[LedgerEntry]) -> None:
        if self.inflight is not None:
            self.inflight.ended(entries)

    def _record_interrupted(self, replayed_marks: set[int], waiting_writers: set[str]) -> int:
        """Record the calls dead processes had on the wire, once their journals are in (see ``recover``): a call
        whose record was journaled is counted from that record (its estimate would add nothing: the same ledger id)."""
        recorded = 0
        for table in inflight.orphaned_tables(self.directories):
            writer = inflight.writer_of(table.path)
            if writer in waiting_writers or journal_left(writer, self.directories):
                table.close(delete=False)
                continue
            try:
                entries = inflight.interrupted_entries(table, self.ledger, replayed_marks)
            except Exception as error:  # noqa: BLE001 - kept for the next pass
                self._failed(error)
                table.close(delete=False)
                continue
            new = self._ingest_counted(entries) if entries else 0
            if new:
                inflight.tell_interrupted(self.ledger, entries)
            table.close(delete=new is not None)
            recorded += new or 0
        return recorded

    def close(self) -> None:
        """Stop the drainer, drain what is left, and remove this process's journal when it is all in the ledger."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        drained = self.flush()
        left = len(self._journal.memory)
        if left:  # neither a journal file nor the ledger took them in time: lost, but not in silence
            self._journal.dropped += left
            _logger.error(
                "spendwatch: %d usage records waiting in memory are lost at exit (%s)", left, self._journal.problem
            )
        self._journal.close(delete=drained)
        if self.inflight is not None:
            self.inflight.close()

    def _after_fork_in_child(self) -> None:
        # A forked worker must not write into its parent's journal, nor rely on its parent's drainer thread.
        self._drain_lock = threading.Lock()
        self._storing = threading.Lock()
        self._wake = threading.Event()
        self._pending = []  # the parent runs its own start-up record (the ledger reopened itself at the fork)
        self.ledger_errors = 0  # the parent's are the parent's to keep
        self.counts.after_fork()
        self._dropped_logged, self._dropping = 0, False
        self._journal = self._open_journal()
        if self.inflight is not None:
            self.inflight.forget()  # the parent's calls are the parent's
        self.inflight = self._open_inflight()
        self._drain_interval = DRAIN_INTERVAL_S
        self._start_drainer()


def _entry(journal: JournalFile, offset: int, payload: bytes) -> LedgerEntry:
    return _entry_of(f"{journal.file_id}:{offset}", payload)


def _entry_of(place: str, payload: bytes) -> LedgerEntry:
    """The ledger entry of a journaled record; ``place`` names where it was kept (file and offset, or memory)."""
    record = codec.decode(payload)
    if record.source != "sdk":  # a span's call: one ledger row per span, however many times it was handed in
        return LedgerEntry(entry_id_of(record.trace_id, record.span_id), record)
    if record.mark:  # (inflight) the id its interrupted estimate would have: whichever comes first is the one row
        return LedgerEntry(inflight.entry_id(record.mark), record)
    return LedgerEntry(place, record)


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
