"""The usage record every instrumented call produces, and the sinks it is handed to.

A sampled-out span carries no attributes, so spend cannot be read back from spans: the instrumentation hands each
finished call to the registered sinks directly, sampled or not. A sink is any object with ``record(UsageRecord)``;
``spendwatch.exporter`` registers one that writes the ledger. Sinks run on the caller's path, so they must be quick,
and they must not raise (if one does, the error is logged at debug and the call goes on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from spendwatch.instrumentation.errors import BudgetExceededError, as_sdk_error

__all__ = [
    "CallRequest",
    "Guard",
    "Ticket",
    "UsageRecord",
    "UsageSink",
    "admit",
    "current_guard",
    "emit",
    "register_guard",
    "register_sink",
    "unregister_guard",
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


class UsageSink(Protocol):
    def record(self, record: UsageRecord) -> None: ...


_sinks: tuple[UsageSink, ...] = ()


def register_sink(sink: UsageSink) -> None:
    """Hand every future usage record to ``sink``; registering the same sink twice keeps one."""
    global _sinks
    if not any(existing is sink for existing in _sinks):
        _sinks = (*_sinks, sink)


def unregister_sink(sink: UsageSink) -> None:
    global _sinks
    _sinks = tuple(existing for existing in _sinks if existing is not sink)


def emit(record: UsageRecord) -> None:
    """Give ``record`` to every sink. Never raises: a sink's failure must not reach the user's call."""
    for sink in _sinks:
        try:
            sink.record(record)
        except Exception:  # noqa: BLE001 - a broken sink must not break the caller's LLM call
            _logger.debug("spendwatch: usage sink %r failed", sink, exc_info=True)


# --- admission: the budget guard asks before a call leaves the process ---------------------------------------------


@dataclass(slots=True)
class CallRequest:
    """What a guard is told about a call before it is made."""

    provider: str
    operation: str
    model: str
    category: str | None
    input_tokens: int  # an upper bound, not an estimate: UTF-8 bytes of the input plus per-message overhead
    max_output_tokens: int | None  # what the request caps the output at, if it does
    output_cap_argument: str | None  # the keyword that caps it ("max_tokens", "max_output_tokens", ...)


class Ticket(Protocol):
    """An admitted call's reservation. ``request_changes`` are keyword arguments to replace (a degrade action)."""

    request_changes: dict | None

    def settle(self, record: UsageRecord) -> None: ...


class Guard(Protocol):
    def admit(self, request: CallRequest) -> Ticket | None:
        """Admit (a ticket, or None when no budget applies) or refuse by raising ``BudgetExceededError``."""


_guard: Guard | None = None


def register_guard(guard: Guard) -> None:
    global _guard
    _guard = guard


def unregister_guard(guard: Guard) -> None:
    global _guard
    if _guard is guard:
        _guard = None


def current_guard() -> Guard | None:
    return _guard


def admit(guard: Guard, request: CallRequest, sdk_error: type[Exception] | None = None) -> Ticket | None:
    """Ask ``guard``. Its refusal (``BudgetExceededError``) reaches the caller, as the user asked; any other failure
    of the guard (its ledger unreachable, say) is logged and the call goes ahead unguarded: the guard exists to stop
    spending, not to turn its own trouble into the caller's.

    An instrumentor passes its SDK's base error class as ``sdk_error``: the refusal is then an instance of it too,
    so the app's handlers for that SDK's errors catch it. It is raised before the SDK's request machinery is
    entered, so the SDK's own retries never see it.
    """
    try:
        return guard.admit(request)
    except BudgetExceededError as refusal:
        if sdk_error is None:
            raise
        raise as_sdk_error(refusal, sdk_error) from None
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: the budget guard failed; the call goes ahead unguarded", exc_info=True)
        return None
