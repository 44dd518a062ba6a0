"""A failed or refused ``google-genai`` call: whether it may have been billed, and the guard's refusal as an SDK error.

A call the provider answered with an error status (``google.genai.errors.APIError``), or that never left (the
guard's refusal, the SDK's own argument checks, no connection) costs nothing; one that may have reached Google (a
read timeout, a connection lost after sending, a cancelled task) is counted from its request and flagged as
estimated.
"""

from __future__ import annotations

import asyncio
import logging

from google.genai.errors import APIError

from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.google_genai_sdk.usage import usage_from_request

__all__ = ["BudgetRefusal", "end_failed"]

_logger = logging.getLogger(__name__)

# The HTTP libraries' errors (httpx, httpx2 and aiohttp name them alike or close) that come after the request was sent.
_LOST_IN_FLIGHT = frozenset(
    {"ReadTimeout", "ReadError", "RemoteProtocolError", "ServerDisconnectedError", "ClientPayloadError"}
)


class BudgetRefusal(APIError):
    """The guard's refusal as a ``google.genai.errors.APIError``, the SDK's base error, so the app's handlers of the
    SDK's errors catch it. ``APIError.__init__`` wants an HTTP answer that a refusal does not have, so this one takes
    the refusal's message (``BudgetExceededError`` passes it on) and fills the fields an answer would: code 429 and
    status ``RESOURCE_EXHAUSTED``, Google's own words for a quota used up, which is what a spent budget is. It is not
    a ``ClientError``: nothing was sent, and no HTTP response exists (``response`` is None)."""

    def __init__(self, message: str) -> None:
        self.response = None
        self.code = 429
        self.status = "RESOURCE_EXHAUSTED"
        self.message = message
        self.details = {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}}
        Exception.__init__(self, message)


def end_failed(call: Call, error: BaseException, kwargs: dict, *, sent: bool = False) -> None:
    """End ``call`` as failed (``sent``: known to have reached Google); never raises."""
    try:
        call.deactivate()
        call.fail(error, usage_from_request(kwargs) if sent or _may_be_billed(error) else None)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a failed call", exc_info=True)


def _may_be_billed(error: BaseException) -> bool:
    if isinstance(error, APIError):
        return False  # Google answered with an error status (or the guard refused: nothing was sent)
    if isinstance(error, asyncio.CancelledError):
        return True  # cancelled while waiting for the answer: the request may have been read
    cause = error.__cause__ or error.__context__
    return type(error).__name__ in _LOST_IN_FLIGHT or type(cause).__name__ in _LOST_IN_FLIGHT
