"""The usage record every instrumented call produces, and the sinks it is handed to.

A sampled-out span carries no attributes, so spend cannot be read back from spans: the instrumentation hands each
finished call to the registered sinks directly, sampled or not. A sink is any object with ``record(UsageRecord)``;
``spendwatch.exporter`` registers one that writes the ledger. Sinks run on the caller's path, so they must be quick,
and they must not raise (if one does, the error is logged at debug and the call goes on).

A sink may also have ``begin(mark, call)``: it is told of each call before its request leaves (``call`` is a
:class:`CallStart`), so that a call still on the wire when the process dies can be counted as an estimate. ``mark``
identifies the call: its usage record carries the same number (``UsageRecord.mark``), which completes the mark.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from spendwatch.instrumentation.admission import Ticket

__all__ = [
    "CallStart",
    "InflightSink",
    "UsageRecord",
    "UsageSink",
    "begin",
    "emit",
    "register_sink",
    "sink_changed",
    "unregister_sink",
]

_logger = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRecord:
    """One LLM call as spendwatch counts it. Token counts follow the GenAI semantic conventions:
    ``input_tokens`` includes the cached ones, ``output_tokens`` includes reasoning."""

    provider: str
    operation: str
    request_model: str
    response_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    # Subsets of input_tokens / output_tokens billed at their own rates.
    cache_write_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    # Billed quantities that are not the token counts above, by name (see calls.Usage.units); empty when none.
    units: dict[str, float] = field(default_factory=dict)
    service_tier: str | None = None  # the tier the call was priced at (None: standard); "batch" for a batch discount
    cost_usd: float | None = None  # None means unpriced, never "free"
    pricing: str = "unpriced"  # the price source and version used, or "unpriced"
    estimated: bool = False  # token counts were estimated (a stream without usage)
    outcome: str = "success"  # success | error | blocked
    error_type: str | None = None
    duration_s: float = 0.0
    start_time: float = 0.0  # unix seconds
    category: str | None = None
    trace_id: int = 0
    span_id: int = 0
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. a LightRAG stage
    # Set by a budget guard: the (budget, action) decisions taken for this call, and the budget leases it drew on
    # (the ledger moves the call's cost from those leases into spend when it ingests the record).
    guard_actions: tuple[tuple[str, str], ...] = ()
    leases: tuple[str, ...] = ()
    calls: int = 1  # API calls this record stands for: more than one for a batch recorded at once
    failed_calls: int = 0  # of those, how many failed
    source: str = "sdk"  # who saw the call: "sdk" (an instrumentor here), "span" (another instrumentation's span
    # in this process) or "otlp" (a span sent to spendwatch serve)
    service: str | None = None  # the OpenTelemetry service.name of the process (or OTLP resource) that made the call
    mark: int = 0  # the call's in-flight mark (see begin), 0 when none was made


class UsageSink(Protocol):
    def record(self, record: UsageRecord) -> None: ...


class CallStart(Protocol):
    """What a call about to leave the process says of itself (``calls.Call`` is one)."""

    provider: str
    operation: str
    request_model: str
    price_provider: str
    category: str | None
    attributes: dict[str, str] | None
    start_time: float
    ticket: Ticket | None  # the budget guard's admission (its ``worst_usd`` was reserved), None when unguarded


class InflightSink(UsageSink, Protocol):
    def begin(self, mark: int, call: CallStart) -> None: ...


_sinks: tuple[UsageSink, ...] = ()
beginners: tuple[InflightSink, ...] = ()  # the sinks that take in-flight marks; empty: no call is marked


def _new_marks() -> Iterator[int]:
    # Marks are ledger ids (a call and its interrupted estimate share one), unique across processes and restarts:
    # 88 random bits per process above a 40-bit count of its calls.
    return itertools.count(uuid.uuid4().int >> 40 << 40)


def _new_marks_in_child() -> None:
    global _marks
    _marks = _new_marks()  # a forked child must not repeat its parent's marks


_marks = _new_marks()
os.register_at_fork(after_in_child=_new_marks_in_child)


def register_sink(sink: UsageSink) -> None:
    """Hand every future usage record to ``sink``; registering the same sink twice keeps one."""
    global _sinks
    if not any(existing is sink for existing in _sinks):
        _sinks = (*_sinks, sink)
    _sinks_changed()


def unregister_sink(sink: UsageSink) -> None:
    global _sinks
    _sinks = tuple(existing for existing in _sinks if existing is not sink)
    _sinks_changed()


def sink_changed() -> None:
    """A registered sink took up ``begin`` (or gave it up) after it registered: mark calls for it from now on."""
    _sinks_changed()


def _sinks_changed() -> None:
    global beginners
    beginners = tuple(sink for sink in _sinks if callable(getattr(sink, "begin", None)))


def begin(call: CallStart) -> int:
    """Tell every sink that takes marks that ``call`` is about to leave; returns its mark. Never raises."""
    mark = next(_marks)
    for sink in beginners:
        try:
            sink.begin(mark, call)
        except Exception:  # noqa: BLE001 - a broken sink must not break the caller's LLM call
            _logger.debug("spendwatch: usage sink %r could not mark a call", sink, exc_info=True)
    return mark


def emit(record: UsageRecord) -> None:
    """Give ``record`` to every sink. Never raises: a sink's failure must not reach the user's call."""
    for sink in _sinks:
        try:
            sink.record(record)
        except Exception:  # noqa: BLE001 - a broken sink must not break the caller's LLM call
            _logger.debug("spendwatch: usage sink %r failed", sink, exc_info=True)
