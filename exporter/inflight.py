"""Calls on the wire when their process dies: in-flight marks, and the estimate recorded for each one left open.

Before a call's request leaves, the instrumentation hands the sink a mark (``records.begin``); the sink journals it
(:func:`encode`), and the call's usage record, which carries the same number, completes it. A process killed while
a call was on the wire leaves a mark with no record: the provider has most likely served and billed that call, so
recovery records it as an estimate (``estimated`` true, outcome ``error`` with error type ``interrupted``: the
outcomes of ``llm_requests_total`` are a contract, and to the app an interrupted call is a failed one).

A call and its interrupted estimate share one ledger id (:func:`entry_id`), so whichever reaches the ledger first is
the one row. Marks cost the caller's path one journal append: the fields that repeat from call to call (provider,
model, category, service) are encoded once and kept; only the mark and the start time are packed per call. What a
mark does not carry is the request's size (measuring a request costs 15-60 k instructions, the mark about 3 k), so
an interrupted call is estimated as the mean completed call of the same provider, model and operation: the dead
process's own journaled ones, else the ledger's running totals; with neither it is counted unpriced.

Life cycle: the live drainer keeps the marks it has read that are still open (:class:`OpenMarks`) and, before it
retires a drained journal file, appends those to the file being written, so an open mark outlives its file.
Recovery reads a dead writer's files from their start (marks and records already drained included).
"""

from __future__ import annotations

import logging
import marshal
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spendwatch.exporter.codec import MARK, decode, is_mark
from spendwatch.exporter.journal import HEADER_SIZE, JournalFile, JournalWriter
from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger.history import record_interrupted_calls
from spendwatch.instrumentation.records import CallStart, UsageRecord

__all__ = [
    "INTERRUPTED",
    "Mark",
    "OpenMarks",
    "decode_mark",
    "encode",
    "entry_id",
    "interrupted_entries",
    "tell_interrupted",
]

_logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # the error type of a call whose process died while it was on the wire
_HEAD = struct.Struct("<QQd")  # the mark (low, high 64 bits), the call's start time
_LOW = (1 << 64) - 1
_PRICING = "interrupted estimate"  # what priced it: the mean completed call, not a price list


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


def entry_id(mark: int) -> str:
    """The ledger id of a marked call: its record's and its interrupted estimate's."""
    return f"call:{mark:x}"


_encoded: dict[tuple, bytes] = {}  # the repeating fields of a mark, encoded once per kind of call


def encode(mark: int, call: CallStart, service: str | None) -> bytes:
    """A mark's journal payload. The caller's path: one struct pack, and the rest from a cache in the usual case."""
    head = _HEAD.pack(mark & _LOW, mark >> 64, call.start_time)
    if call.attributes:  # a framework's attributes (a LightRAG stage): not cached, they vary
        fields = (call.provider, call.operation, call.request_model, call.price_provider, call.category, service)
        return MARK + head + marshal.dumps((*fields, dict(call.attributes)))
    key = (call.provider, call.operation, call.request_model, call.price_provider, call.category, service)
    fields = _encoded.get(key)
    if fields is None:
        if len(_encoded) > 4096:  # models and categories are few; a caller inventing model names is not
            _encoded.clear()
        fields = _encoded[key] = marshal.dumps((*key, None))
    return MARK + head + fields


def decode_mark(payload: bytes) -> Mark:
    low, high, start_time = _HEAD.unpack_from(payload, len(MARK))
    fields = marshal.loads(payload[len(MARK) + _HEAD.size :])
    return Mark(low | high << 64, start_time, *fields)


class OpenMarks:
    """The live drainer's view of this process's open marks: which file holds each one, so that none is lost when a
    drained file is retired. Only the drainer thread uses it."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[str, bytes]] = {}  # mark -> (the file id it was last read in, its payload)
        self._carried: set[int] = set()  # marks appended again by carry_forward, not yet read again
        self._ended_carried: set[int] = set()  # carried marks whose call ended before their copy was read

    def saw(self, file_id: str, payload: bytes) -> bool:
        """Note ``payload`` if it is a mark (True: no ledger row comes of it)."""
        if not is_mark(payload):
            return False
        mark = decode_mark_number(payload)
        if mark in self._ended_carried:  # the copy carry_forward wrote after the call had already ended
            self._ended_carried.discard(mark)
        else:
            self._open[mark] = (file_id, payload)
        return True

    def ended(self, entries: Iterable[LedgerEntry]) -> None:
        """The records of ``entries`` are in the ledger: their marks are complete."""
        for entry in entries:
            mark = entry.record.mark
            if mark and self._open.pop(mark, None) is not None and mark in self._carried:
                self._carried.discard(mark)
                self._ended_carried.add(mark)

    def carry_forward(self, journal: JournalWriter) -> None:
        """Append every open mark read in a file other than the one being written to that one, before the drained
        files are retired: a call in flight across a file's retirement keeps its mark."""
        if not journal.durable or not journal.files:
            return  # no file to carry them to; the old files are kept until one can be written (not retired)
        current = journal.files[-1].file_id
        for mark, (file_id, payload) in list(self._open.items()):
            if file_id != current and journal.append(payload):
                self._open[mark] = (current, payload)
                self._carried.add(mark)

    def __len__(self) -> int:
        return len(self._open)


def decode_mark_number(payload: bytes) -> int:
    low, high, _ = _HEAD.unpack_from(payload, len(MARK))
    return low | high << 64


def interrupted_entries(journals: Sequence[JournalFile], ledger: Ledger | None = None) -> list[LedgerEntry]:
    """The estimates of the calls whose marks in ``journals`` (every file of dead writers, read from their start)
    no record completes."""
    marks: dict[int, Mark] = {}
    completed: set[int] = set()
    history: dict[tuple, list[float]] = {}
    for journal in journals:
        for _, payload in journal.records(HEADER_SIZE):
            if is_mark(payload):
                mark = decode_mark(payload)
                marks[mark.mark] = mark
                continue
            record = decode(payload)
            completed.add(record.mark)
            _add_to_history(history, record)
    open_marks = [mark for number, mark in marks.items() if number not in completed]
    if open_marks and ledger is not None:
        _add_ledger_history(history, ledger, {(m.provider, m.request_model, m.operation) for m in open_marks})
    return [LedgerEntry(entry_id(mark.mark), _estimate(mark, history)) for mark in open_marks]


def _add_to_history(history: dict[tuple, list[float]], record: UsageRecord) -> None:
    if record.outcome != "success" or record.cost_usd is None or record.estimated or record.source != "sdk":
        return
    sums = history.setdefault((record.provider, record.request_model, record.operation), [0.0, 0.0, 0.0, 0.0])
    for index, value in enumerate((record.cost_usd, record.input_tokens, record.output_tokens, record.calls)):
        sums[index] += value


def _add_ledger_history(history: dict[tuple, list[float]], ledger: Ledger, wanted: set[tuple]) -> None:
    """The ledger's running totals, for the kinds of call the dead process's own journal has no completed one of."""
    missing = wanted - history.keys()
    if not missing:
        return
    for row in ledger.totals():
        key = (row["provider"], row["model"], row["operation"])
        if key not in missing or not row["success"]:
            continue
        sums = history.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        for index, name in enumerate(("cost_usd", "input_tokens", "output_tokens", "success")):
            sums[index] += row[name]


def _estimate(mark: Mark, history: dict[tuple, list[float]]) -> UsageRecord:
    record = UsageRecord(mark.provider, mark.operation, mark.request_model)
    record.start_time, record.category, record.service = mark.start_time, mark.category, mark.service
    record.attributes = dict(mark.attributes or {})
    record.outcome, record.error_type, record.estimated = "error", INTERRUPTED, True
    record.mark = mark.mark
    sums = history.get((mark.provider, mark.request_model, mark.operation))
    if sums and sums[3] > 0:
        cost, input_tokens, output_tokens, calls = sums
        record.cost_usd, record.pricing = cost / calls, _PRICING
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
