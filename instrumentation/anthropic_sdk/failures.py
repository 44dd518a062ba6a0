"""A failed Anthropic call: whether it may have been billed, and ending its span and record so.

A call Anthropic cannot have answered (refused by the guard, rejected by the SDK's own argument checks, no
connection, an error status) costs nothing; one that may have reached it (a timeout after sending, a lost connection,
an unreadable answer) is counted from its request and flagged as estimated. Only the SDK's last attempt is looked at.
"""

from __future__ import annotations

import logging

from anthropic import APIConnectionError, APIStatusError
from anthropic import _base_client as anthropic_base_client

from spendwatch.instrumentation.calls import Call, Usage

from .usage import usage_from_request

__all__ = ["end_failed"]

_logger = logging.getLogger(__name__)

# The HTTP library's errors (httpx and httpx2 name them alike) that come after the whole request was sent.
_LOST_IN_FLIGHT = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError"})
_SDK_REQUEST_FILE = anthropic_base_client.__file__


def end_failed(call: Call, error: BaseException, kwargs: dict, *, sent: bool = False) -> None:
    """End ``call`` as failed (``sent``: known to have reached Anthropic); never raises."""
    try:
        call.deactivate()
        call.fail(error, _billed_usage(error, kwargs, sent))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a failed call", exc_info=True)


def _billed_usage(error: BaseException, kwargs: dict, sent: bool) -> Usage | None:
    if not sent and _cannot_be_billed(error):
        return None
    return usage_from_request(kwargs)


def _cannot_be_billed(error: BaseException) -> bool:
    if isinstance(error, APIStatusError):
        return True  # Anthropic answered with an error status (a stream's error event is raised as one too)
    if isinstance(error, APIConnectionError):  # APITimeoutError too, raised from the HTTP library's own error
        return type(error.__cause__).__name__ not in _LOST_IN_FLIGHT
    return not _entered_the_sdks_request(error)


def _entered_the_sdks_request(error: BaseException) -> bool:
    """Whether ``error`` came from inside the SDK's request machinery (else it was raised before anything was sent:
    the guard's refusal, a missing argument's TypeError)."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == _SDK_REQUEST_FILE:
            return True
        frame = frame.tb_next
    return False
