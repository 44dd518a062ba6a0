"""A failed OpenAI call: whether it may have been billed, and what for, and ending its span and record so.

A call the provider cannot have seen (refused by the guard, rejected by the SDK's own argument checks, no connection)
costs nothing; one that may have reached it (a timeout after sending, a lost connection, an unreadable answer) is
counted from its request and flagged as estimated.
"""

from __future__ import annotations

import logging

from openai import APIConnectionError, APIStatusError
from openai import _base_client as openai_base_client

from spendwatch.instrumentation.calls import Call, Usage
from spendwatch.instrumentation.openai_sdk.media import request_usage, result_usage

__all__ = ["attempt_usage", "end_failed"]

_logger = logging.getLogger(__name__)


def end_failed(call: Call, error: BaseException, kind: str, kwargs: dict, *, sent: bool = False) -> None:
    """End ``call`` as failed: the SDK raised (``sent``: known to have reached the provider), or the guard refused it
    (``BudgetExceededError``)."""
    try:
        call.deactivate()
        call.fail(error, _billed_usage(kind, error, kwargs, sent))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a failed call", exc_info=True)


def _billed_usage(kind: str, error: BaseException, kwargs: dict, sent: bool) -> Usage | None:
    """What a failed call may have been billed for; None when it cannot have been billed.

    ``parse()``'s ``LengthFinishReasonError`` and ``ContentFilterFinishReasonError`` carry the billed completion
    (openai 3.x). Otherwise a call that may have reached the provider is counted from the request's input and flagged
    as estimated: a timeout, a lost connection, a cancelled task, an answer the SDK could not read. This is the SDK's
    last attempt; the earlier ones are counted as they fail (``attempts``).
    """
    completion = getattr(error, "completion", None)
    if completion is not None:
        return result_usage(kind, completion, kwargs)
    if not sent and _cannot_be_billed(error):
        return None
    return request_usage(kind, kwargs)


def attempt_usage(kind: str, error: BaseException, kwargs: dict) -> Usage | None:
    """What one failed attempt of a request the SDK retries may have been billed for: ``error`` is the HTTP
    library's own (the SDK wraps only the last attempt's). None when the request was not all sent."""
    if type(error).__name__ not in _LOST_IN_FLIGHT:
        return None
    return request_usage(kind, kwargs)


# The HTTP library's errors (httpx and httpx2 name them alike) that come after the whole request was sent.
_LOST_IN_FLIGHT = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError"})
_SDK_REQUEST_FILE = openai_base_client.__file__


def _cannot_be_billed(error: BaseException) -> bool:
    if isinstance(error, APIStatusError):
        return True  # the provider answered with an error status
    if isinstance(error, APIConnectionError):  # APITimeoutError too, raised from the HTTP library's own error
        return type(error.__cause__).__name__ not in _LOST_IN_FLIGHT  # e.g. no connection: nothing was sent
    # The guard's refusal, like the SDK's own argument checks, is raised before the request machinery is entered.
    return not _entered_the_sdks_request(error)


def _entered_the_sdks_request(error: BaseException) -> bool:
    """Whether ``error`` came from inside the SDK's request machinery: it checks a call's arguments before entering
    it, so an error raised outside it (a missing argument's TypeError) was raised before anything was sent."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == _SDK_REQUEST_FILE:
            return True
        frame = frame.tb_next
    return False
