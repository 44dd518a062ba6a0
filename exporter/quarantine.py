"""Records the ledger can never store as they are (poison, see :mod:`.ledger.errors`), kept aside, visible, replayable.

The drainer sets such a record aside with :func:`keep` rather than let it block every record journaled after it. It
goes into ``quarantine.jsonl`` in a journal directory, one JSON line per record: its ledger ``entry_id``, the
journal codec's bytes (base64; the same bytes the journal held, so nothing about the call is lost or re-typed), the
error, and when. ``spendwatch doctor`` and the ``spendwatch_records_quarantined`` gauge count them
(:func:`count`); ``spendwatch quarantine list`` shows them and ``spendwatch quarantine replay`` ingests them again
once their cause is fixed (:func:`replay`: a widened column, a ledger with the constraint dropped), keeps an audited
event of what it replayed, and removes the replayed lines. A record replayed twice is one row: its entry id is kept.

Lines written by an earlier release (a ``repr()`` of the record) cannot be replayed; they are listed and counted,
and never removed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spendwatch.exporter import codec
from spendwatch.exporter.ledger import LedgerEntry, first_line
from spendwatch.exporter.ledger.errors import is_poison
from spendwatch.instrumentation.records import UsageRecord

__all__ = [
    "QUARANTINE_FILE",
    "REPLAYED_EVENT",
    "Quarantined",
    "ReplayResult",
    "count",
    "directories_of",
    "keep",
    "quarantined",
    "replay",
    "summary",
]

_logger = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.jsonl"
_LOCK_FILE = "quarantine.lock"  # held while the file is appended to or rewritten (the file itself is replaced)
REPLAYED_EVENT = "quarantine_replayed"


@dataclass(frozen=True)
class Quarantined:
    """One quarantined record: ``record`` is None for a line an earlier release wrote (not replayable)."""

    entry_id: str
    error: str
    at: float | None
    path: Path
    record: UsageRecord | None = field(default=None, compare=False)

    def entry(self) -> LedgerEntry:
        assert self.record is not None
        return LedgerEntry(self.entry_id, self.record)


@dataclass
class ReplayResult:
    replayed: list[str] = field(default_factory=list)  # now in the ledger (new, or there already)
    new: int = 0  # of which the ledger did not hold before
    refused: dict[str, str] = field(default_factory=dict)  # entry id -> why the ledger still refuses it
    event_id: int | None = None


def directories_of(location: str) -> list[Path]:
    """Every journal directory of the ledger at ``location`` (the sink's chain): where its quarantine files are."""
    # Imported here: the sink imports this module to keep what its drainer cannot store.
    from spendwatch.exporter.sink import journal_directories

    return journal_directories(location)


# --- setting a record aside (the drainer) ----------------------------------------------------------------------


def keep(directories: Iterable[Path], entry: LedgerEntry, error: BaseException) -> Path:
    """Set ``entry`` aside in the first of ``directories`` that takes it (fsync'd); the file's path. A record kept
    before (same entry id, e.g. its batch retried) is not written twice. Raises OSError when no directory takes it:
    the caller then keeps the record in its journal."""
    line = json.dumps(
        {
            "entry_id": entry.entry_id,
            "call": summary(entry.record),
            "record": base64.b64encode(codec.encode(entry.record)).decode("ascii"),
            "error": f"{type(error).__name__}: {first_line(error)}",
            "at": time.time(),
        }
    )
    problems: list[OSError] = []
    for directory in directories:
        try:
            path = _append(Path(directory), entry.entry_id, line)
        except OSError as problem:
            problems.append(problem)
            continue
        _logger.warning("spendwatch: the ledger refuses record %s (%s); kept in %s", entry.entry_id, error, path)
        return path
    raise problems[0] if problems else OSError("no directory to keep a quarantined record in")


def summary(record: UsageRecord) -> dict:
    """What a person reading the file (or ``quarantine list``) needs to tell the call; the record itself is replayed."""
    return {
        "provider": record.provider,
        "model": record.request_model,
        "operation": record.operation,
        "cost_usd": record.cost_usd,
        "start_time": record.start_time,
    }


def _append(directory: Path, entry_id: str, line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / QUARANTINE_FILE
    with _locked(directory):
        if any(item.entry_id == entry_id for item in _read(path)):
            return path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- reading ---------------------------------------------------------------------------------------------------


def quarantined(directories: Iterable[Path]) -> list[Quarantined]:
    """Every quarantined record in ``directories``, oldest first in each file."""
    return [item for directory in directories for item in _read(Path(directory) / QUARANTINE_FILE)]


def count(directories: Iterable[Path]) -> int:
    """How many records wait in quarantine: the ``spendwatch_records_quarantined`` gauge (read on every scrape, so
    lines are counted, not decoded)."""
    total = 0
    for directory in directories:
        try:
            total += len(_lines(Path(directory) / QUARANTINE_FILE))
        except FileNotFoundError:
            continue
    return total


def _read(path: Path) -> list[Quarantined]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [_parsed(line, path) for line in text.splitlines() if line.strip()]


def _parsed(line: str, path: Path) -> Quarantined:
    try:
        fields = json.loads(line)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        return Quarantined("?", "unreadable line", None, path)
    entry_id, error, at = str(fields.get("entry_id", "?")), str(fields.get("error", "")), fields.get("at")
    try:
        record = codec.decode(base64.b64decode(fields["record"], validate=True))
    except (KeyError, TypeError, ValueError, EOFError, binascii.Error):
        record = None  # an earlier release's repr(), or a line cut short
    return Quarantined(entry_id, error, at if isinstance(at, int | float) else None, path, record)


# --- replaying -------------------------------------------------------------------------------------------------


def replay(
    ledger, directories: Iterable[Path], *, entry_ids: Iterable[str] = (), reason: str = "", by: str = ""
) -> ReplayResult:
    """Ingest the quarantined records (those of ``entry_ids``, or all) into ``ledger`` again; then keep an audited
    ``quarantine_replayed`` event naming them, and only then remove them. A record the ledger still refuses stays,
    with its new error. A transient error (the ledger down) stops the replay and is raised, removing nothing: a record
    ingested meanwhile is found there on the next replay (its entry id is kept), never counted twice."""
    wanted = set(entry_ids)
    result = ReplayResult()
    files = [Path(d) / QUARANTINE_FILE for d in dict.fromkeys(Path(d) for d in directories)]
    with contextlib.ExitStack() as stack:
        files = [path for path in files if path.exists()]
        for path in files:
            stack.enter_context(_locked(path.parent))  # no drainer appends while the files are replayed
        for path in files:
            _ingest_file(ledger, _read(path), wanted, result)
        if not result.replayed and not result.refused:
            return result
        result.event_id = _record_replay(ledger, result, reason, by)
        for path in files:
            _rewrite(path, set(result.replayed), result.refused)
    return result


def _ingest_file(ledger, items: list[Quarantined], wanted: set[str], result: ReplayResult) -> None:
    for item in items:
        if item.record is None or (wanted and item.entry_id not in wanted) or item.entry_id in result.replayed:
            continue
        try:
            result.new += ledger.ingest([item.entry()])
        except Exception as error:
            if not is_poison(error):
                raise
            result.refused[item.entry_id] = f"{type(error).__name__}: {first_line(error)}"
            continue
        result.replayed.append(item.entry_id)


def _rewrite(path: Path, done: set[str], refused: dict[str, str]) -> None:
    """The quarantine file less the records now in the ledger, replaced whole (never a file half written)."""
    lines = [line for line in _lines(path) if _parsed(line, path).entry_id not in done]
    lines = [_with_error(line, refused) for line in lines]
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def _with_error(line: str, refused: dict[str, str]) -> str:
    """The line with the error of its latest replay, when it was tried again and refused."""
    try:
        fields = json.loads(line)
    except ValueError:
        return line
    if not isinstance(fields, dict) or fields.get("entry_id") not in refused:
        return line
    return json.dumps(fields | {"error": refused[fields["entry_id"]], "replay_failed_at": time.time()})


def _record_replay(ledger, result: ReplayResult, reason: str, by: str) -> int:
    detail = {
        "reason": reason,
        "replayed": result.replayed,
        "new": result.new,
        "refused": sorted(result.refused),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    return ledger.add_event(REPLAYED_EVENT, detail | ({"by": by} if by else {}))
