"""Calls on the wire when their process dies: in-flight marks, and the estimate recorded for each one left open.

Before a call's request leaves, the instrumentation hands the sink a mark (``records.begin``): a number that the
call's usage record carries too. The sink writes it into this process's in-flight table (:class:`InflightTable`), a
memory-mapped file of fixed slots beside the journal. Pages of a shared mapping outlive the process, so after
``kill -9`` the table still holds every call that was on the wire. The drainer frees a call's slot once it has read
the call's record from the journal (:meth:`InflightTable.ended`), so a slot still taken at death is a call that was
on the wire, or one whose record is in the journal. Recovery replays the dead process's journal first, then records
each taken slot as an estimate (``estimated`` true, outcome ``error`` with error type ``interrupted``: the outcomes of
``llm_requests_total`` are a contract, and to the app an interrupted call is a failed one). A call and its estimate
share one ledger id (:func:`entry_id`): whichever reaches the ledger first is the one row, and a call whose record
was journaled is counted from it.

The caller's path pays one dict lookup and one struct pack into the table, not a journal append (measured in the
closing note): what repeats from call to call (provider, model, category, service) is written once per kind of call
in the table's kinds area, and a slot names its kind by offset. A slot does not carry the request's size (measuring
a request costs 15 to 60 k instructions), so an interrupted call is estimated as the mean successful call of the same
provider, model and operation in the ledger (the dead process's own replayed calls included); with none it is
counted unpriced.

A call the budget guard admitted is marked after its admission, and its slot holds what the guard reserved for it:
the estimate never exceeds that, so a call the guard let through cannot overshoot a limit by dying.

File layout: a 64-byte header (magic, slot count), the slots ``[u64 mark low][u64 mark high][f64 start][f32 reserved
USD, 0: none][u32 kind]`` (kind 0: free; the kind is written last), then the kinds ``[u32 length][marshal of the kind's
fields]``. The writer holds an exclusive ``flock`` on its file for its lifetime, as a journal's: a file whose lock can
be taken belongs to a dead process. A table that cannot be created anywhere leaves calls unmarked (they are still
counted when they end).
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import math
import mmap
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spendwatch.exporter.journal import dead_files
from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger.history import record_interrupted_calls
from spendwatch.instrumentation.records import CallStart, UsageRecord

__all__ = [
    "INTERRUPTED",
    "SUFFIX",
    "DeadTable",
    "InflightTable",
    "Mark",
    "entry_id",
    "interrupted_entries",
    "orphaned_tables",
    "tell_interrupted",
    "writer_of",
]

_logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # the error type of a call whose process died while it was on the wire
SUFFIX = ".inflight"
_MAGIC = b"SWI2"
_MAGIC_WITHOUT_RESERVATION = b"SWI1"  # a table written before slots held the reservation
_HEADER = struct.Struct("<4sI")  # magic, slot count
_HEADER_SIZE = 64
_SLOT = struct.Struct("<QQdfI")  # mark (low, high 64 bits), start time, guard's reservation, kind's offset (0: free)
_SLOT_WITHOUT_RESERVATION = struct.Struct("<QQdI")
# A reservation is stored just below its value: a float32 rounded to nearest could exceed it by one part in 2**24.
_BELOW = 1 - 2.0**-22
_SLOT_SIZE = 32
_FREE = struct.Struct("<I")
_KIND_OFFSET = _SLOT.size - _FREE.size
_LENGTH = struct.Struct("<I")
_LOW = (1 << 64) - 1
DEFAULT_SLOTS = 8192  # calls in flight at once in one process; past that a call goes unmarked (and is counted)
_KINDS_SIZE = 256 * 1024
_PRICING = "interrupted estimate"  # what priced it: the mean successful call, not a price list


def entry_id(mark: int) -> str:
    """The ledger id of a marked call: its record's and its interrupted estimate's."""
    return f"call:{mark:x}"


@dataclass(slots=True)
class Mark:
    mark: int
    start_time: float
    provider: str
    operation: str
    request_model: str
    price_provider: str
    category: str | None
    service: str | None
    attributes: dict[str, str] | None
    reserved_usd: float = 0.0  # what the budget guard reserved for it (0: not guarded); its estimate stays within


class InflightTable:
    """This process's in-flight table. :meth:`begin` is on the caller's path (the sink's ``begin``: a sink's
    ``service`` names the process's service); :meth:`ended` is the drainer's. Thread-safe: each step is one C-level
    operation under the GIL, and new kinds are written under a lock."""

    def __init__(self, directories: list[Path], sink, *, slots: int = DEFAULT_SLOTS) -> None:
        self.unmarked = 0  # calls that found every slot taken
        self._sink = sink
        self._kinds: dict[tuple, int] = {}  # a kind's fields -> its offset in the file
        self._slots: dict[int, int] = {}  # mark -> the offset of the slot it occupies
        self._free = [_HEADER_SIZE + slot * _SLOT_SIZE for slot in range(slots - 1, -1, -1)]
        self._kinds_start = _HEADER_SIZE + slots * _SLOT_SIZE
        self._kinds_end = self._kinds_start
        self._lock = threading.Lock()
        self.path, self._fd = _create(directories, slots, self._kinds_start + _KINDS_SIZE)
        self._mm = mmap.mmap(self._fd, self._kinds_start + _KINDS_SIZE)
        self._pack = _SLOT.pack_into

    def begin(self, mark: int, call: CallStart) -> None:
        key = (
            call.provider,
            call.operation,
            call.request_model,
            call.price_provider,
            call.category,
            self._sink.service,
        )
        attributes = call.attributes
        if attributes:  # a framework's attributes (a LightRAG stage): part of the kind
            key = (*key, tuple(attributes.items()))
        kind = self._kinds.get(key) or self._new_kind(key)
        free = self._free
        if not free:
            self.unmarked += 1
            return
        offset = free.pop()
        ticket = call.ticket
        reserved = ticket.worst_usd * _BELOW if ticket is not None else 0.0
        self._pack(self._mm, offset, mark & _LOW, mark >> 64, call.start_time, reserved, kind)
        self._slots[mark] = offset

    def ended(self, entries: Iterable[LedgerEntry]) -> None:
        """The drainer read these records from the journal: their calls' slots are free again."""
        slots, mm = self._slots, self._mm
        for entry in entries:
            mark = entry.record.mark
            offset = slots.pop(mark, None) if mark else None
            if offset is not None:
                _FREE.pack_into(mm, offset + _KIND_OFFSET, 0)
                self._free.append(offset)

    def _new_kind(self, key: tuple) -> int:
        payload = marshal.dumps((*key[:6], dict(key[6]) if len(key) > 6 else None))
        with self._lock:
            offset = self._kinds.get(key)
            if offset is not None:
                return offset
            offset, end = self._kinds_end, self._kinds_end + _LENGTH.size + len(payload)
            if end > len(self._mm):
                return 0  # no room for another kind (thousands of models): such calls go unmarked
            self._mm[offset + _LENGTH.size : end] = payload
            _LENGTH.pack_into(self._mm, offset, len(payload))  # written last: a kind is whole or absent
            self._kinds_end = end
            self._kinds[key] = offset
            return offset

    def close(self) -> None:
        """At a clean exit: calls still in flight now end with the process, unrecorded as before."""
        self.path.unlink(missing_ok=True)  # first, while the lock is held: no recovery takes a live table
        self.forget()

    def forget(self) -> None:
        """Let go of the file without removing it: a forked child's copy of its parent's table (the parent keeps its
        lock; the child must not hold the file once the parent is gone)."""
        self._mm.close()
        os.close(self._fd)


def _create(directories: list[Path], slots: int, size: int) -> tuple[Path, int]:
    """A new locked table file in the first of ``directories`` that takes one."""
    problems = []
    for directory in directories:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        building, path = directory / f"{name}.building", directory / f"{name}{SUFFIX}"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            problems.append(f"{directory}: {error.strerror or error}")
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, size)  # blocks allocated now: a sparse mapping on a full disk means SIGBUS
            os.pwrite(fd, _HEADER.pack(_MAGIC, slots), 0)
            os.rename(building, path)  # only a locked file with its header gets the name recovery looks for
        except OSError as error:
            os.close(fd)
            building.unlink(missing_ok=True)
            problems.append(f"{directory}: {error.strerror or error}")
            continue
        return path, fd
    raise OSError("; ".join(problems))


class DeadTable:
    """The in-flight table of a dead process, locked by the recovery reading it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_READ)
        magic = self._mm[: len(_MAGIC)]
        if magic not in (_MAGIC, _MAGIC_WITHOUT_RESERVATION):
            self._mm.close()
            raise ValueError(f"{path} is not an in-flight table")
        self._reserved = magic == _MAGIC

    def marks(self) -> list[Mark]:
        """The calls it had on the wire when it died."""
        magic, slots = _HEADER.unpack_from(self._mm, 0)
        kinds: dict[int, tuple | None] = {}
        found = []
        for slot in range(slots):
            low, high, start_time, reserved, kind = self._slot(_HEADER_SIZE + slot * _SLOT_SIZE)
            if kind == 0:
                continue
            if kind not in kinds:
                kinds[kind] = self._kind(kind)
            if kinds[kind] is not None:
                found.append(Mark(low | high << 64, start_time, *kinds[kind], reserved_usd=reserved))
        return found

    def _slot(self, offset: int) -> tuple[int, int, float, float, int]:
        if self._reserved:
            return _SLOT.unpack_from(self._mm, offset)
        low, high, start_time, kind = _SLOT_WITHOUT_RESERVATION.unpack_from(self._mm, offset)
        return low, high, start_time, 0.0, kind

    def _kind(self, offset: int) -> tuple | None:
        try:
            (length,) = _LENGTH.unpack_from(self._mm, offset)
            return marshal.loads(self._mm[offset + _LENGTH.size : offset + _LENGTH.size + length]) if length else None
        except (ValueError, EOFError, TypeError, struct.error):  # a damaged file: that slot cannot be read
            _logger.warning("spendwatch: %s has a damaged kind at %d", self.path, offset)
            return None

    def close(self, *, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        self._mm.close()
        os.close(self._fd)


def writer_of(path: Path) -> str:
    """The pid of the process that wrote a journal file or in-flight table (both are named ``<pid>-<id><suffix>``)."""
    return path.name.split("-", 1)[0]


def orphaned_tables(directories: list[Path]) -> Iterator[DeadTable]:
    """In-flight tables whose writer is gone (their lock can be taken). The caller records, then closes."""
    for directory in directories:
        yield from dead_files(directory, SUFFIX, DeadTable, "in-flight table")


def interrupted_entries(table: DeadTable, ledger: Ledger, replayed: set[int] = frozenset()) -> list[LedgerEntry]:
    """The estimates of the calls ``table``'s process had on the wire when it died: its taken slots but those of the
    ``replayed`` marks (calls whose records were just replayed from its journal)."""
    marks = [mark for mark in table.marks() if mark.mark not in replayed]
    if not marks:
        return []
    history = _history(ledger, {(mark.provider, mark.request_model, mark.operation) for mark in marks})
    return [LedgerEntry(entry_id(mark.mark), _estimate(mark, history)) for mark in marks]


def _history(ledger: Ledger, wanted: set[tuple]) -> dict[tuple, list[float]]:
    """Cost, input and output tokens and successful calls of each of ``wanted`` (provider, model, operation)."""
    history: dict[tuple, list[float]] = {}
    for row in ledger.totals():
        key = (row["provider"], row["model"], row["operation"])
        if key in wanted and row["success"]:
            sums = history.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            for index, name in enumerate(("cost_usd", "input_tokens", "output_tokens", "success")):
                sums[index] += row[name]
    return history


def _estimate(mark: Mark, history: dict[tuple, list[float]]) -> UsageRecord:
    record = UsageRecord(mark.provider, mark.operation, mark.request_model)
    record.start_time, record.category, record.service = mark.start_time, mark.category, mark.service
    record.attributes = dict(mark.attributes or {})
    record.outcome, record.error_type, record.estimated = "error", INTERRUPTED, True
    record.mark = mark.mark
    sums = history.get((mark.provider, mark.request_model, mark.operation))
    if sums:
        cost, input_tokens, output_tokens, calls = sums
        reserved = mark.reserved_usd if mark.reserved_usd > 0 else math.inf  # the guard let it through for that much
        record.cost_usd, record.pricing = min(cost / calls, reserved), _PRICING
        record.input_tokens, record.output_tokens = round(input_tokens / calls), round(output_tokens / calls)
    return record


def tell_interrupted(ledger: Ledger, entries: list[LedgerEntry]) -> None:
    """Say that the calls of ``entries`` (just recorded) were on the wire when their process died: a warning, and an
    event of the ledger's alert history (``/api/v1/alerts``, the cost page)."""
    records = [entry.record for entry in entries]
    _logger.warning(
        "spendwatch: %d calls were on the wire when their process died; recorded as estimates (error type %s)",
        len(records),
        INTERRUPTED,
    )
    try:
        record_interrupted_calls(ledger, records, at=time.time())
    except Exception:  # noqa: BLE001 - the calls are in the ledger; only their history entry is lost
        _logger.debug("spendwatch: cannot record the interrupted calls' event", exc_info=True)
