"""Admission: the budget guard is asked before a call leaves the process.

An instrumentor describes the call it is about to make as a :class:`CallRequest` and asks the registered
:class:`Guard` through :func:`admit`; the guard admits it (a :class:`Ticket` settled with the call's
:class:`~spendwatch.instrumentation.records.UsageRecord` when it ends) or refuses it with ``BudgetExceededError``.
``spendwatch.exporter`` registers the guard, so the instrumentation never imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from spendwatch.instrumentation.errors import BudgetExceededError, as_sdk_error
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["CallRequest", "Guard", "Ticket", "admit", "current_guard", "register_guard", "unregister_guard"]

_logger = logging.getLogger(__name__)


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
    # What else the request says about its price. Each defaults to "not said", which the guard bounds pessimistically.
    price_provider: str | None = None  # whose price list prices the call, when not provider's (CallRecorder.start)
    service_tier: str | None = None  # as asked ("priority", "flex", "auto"); None when the request names none
    cache_write_possible: bool = True  # False only when the request cannot write to the prompt cache
    tool_units: tuple[str, ...] = ()  # per-call billed units of the built-in tools it enables ("web_search_calls")
    server_tools: bool = False  # the provider may run tools within this one request, each adding a model turn
    max_tool_calls: int | None = None  # the request's own bound on those tool calls, if it sets one


class Ticket(Protocol):
    """An admitted call's reservation. ``request_changes`` are keyword arguments to replace (a degrade action)."""

    request_changes: dict | None
    worst_usd: float  # what the guard reserved for the call: the most it may cost

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
