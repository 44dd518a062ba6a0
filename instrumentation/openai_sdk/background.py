"""Responses created with ``background=True``: the call ends when its outcome is known, not when ``create`` returns.

``responses.create(background=True)`` returns at once with a ``queued`` response and no usage. The model runs
afterwards (deep research and o3-pro run this way, for minutes), and the caller polls ``responses.retrieve(id)`` or
``cancel``s it. So such a call is parked by response id, its span still open and any budget reservation still held,
and ended from the first response in a final status (completed, incomplete, failed, cancelled) that this process
retrieves for it, priced from the usage that reports.

A call still parked when the instrumentation is removed or the process exits is ended from its request alone
(estimated), so none is lost. A response created in another process is never counted here, so none is counted twice.
Retrieving through ``with_raw_response`` or as a stream does not end a parked call; exit does.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.errors import ReportedError
from spendwatch.instrumentation.openai_sdk.streams import error_code
from spendwatch.instrumentation.openai_sdk.usage import responses_usage, usage_from_request

__all__ = ["end_all_from_request", "park", "settle"]

_logger = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
_MAX_PARKED = 10_000  # a loop that never retrieves must not grow memory without limit: the oldest ends first

_parked: dict[str, tuple[Call, dict]] = {}  # response id -> (call, request keyword arguments), oldest first
_lock = threading.Lock()
_exit_hook = threading.Event()


def park(call: Call, response: Any, kwargs: dict) -> bool:
    """Keep ``call`` open if ``response`` is a background response still running; returns whether it did."""
    response_id = getattr(response, "id", None)
    if getattr(response, "status", None) in FINAL_STATUSES or type(response_id) is not str:
        return False
    with _lock:
        evicted = _parked.pop(next(iter(_parked))) if len(_parked) >= _MAX_PARKED else None
        _parked[response_id] = (call, kwargs)
    if not _exit_hook.is_set():
        _exit_hook.set()
        # Exit hooks run last-registered first: this one before the hook spendwatch.configure() registered at start-up,
        # which drains what was recorded into the ledger.
        atexit.register(end_all_from_request)
    if evicted is not None:
        _end_from_request(*evicted)
    return True


def settle(response: Any) -> None:
    """End the parked call ``response`` belongs to, if it is in a final status."""
    status = getattr(response, "status", None)
    if status not in FINAL_STATUSES:
        return
    with _lock:
        parked = _parked.pop(getattr(response, "id", None), None)
    if parked is None:
        return  # not created here (or already ended): counted by whoever created it
    call, kwargs = parked
    usage = responses_usage(response, kwargs)
    if status == "failed":
        call.fail(ReportedError(error_code(getattr(response, "error", None), "response.failed")), usage)
    else:
        call.succeed(usage)


def end_all_from_request() -> None:
    """End every parked call from its request alone: its outcome will not be seen here."""
    with _lock:
        parked = list(_parked.values())
        _parked.clear()
    for call, kwargs in parked:
        _end_from_request(call, kwargs)


def _forget_parked_in_child() -> None:
    # A forked child did not make its parent's calls, and the parent ends them: ending them here too counts them twice.
    global _lock
    _lock = threading.Lock()  # another thread may have held it during the fork
    _parked.clear()


os.register_at_fork(after_in_child=_forget_parked_in_child)


def _end_from_request(call: Call, kwargs: dict) -> None:
    try:
        call.succeed(usage_from_request(kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not end a background call", exc_info=True)
