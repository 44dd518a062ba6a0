"""Every attempt of a retried call that the provider may have billed, counted on a record of its own.

The SDK retries a failed request (twice by default) and only its last attempt reaches the caller, so only that one
is classified where the call ends (``failures``). An earlier attempt whose request went out and whose answer was lost
(a read timeout, a connection dropped mid-answer) may have been billed all the same: it is counted from the request
and flagged as estimated, on a span of its own under the call's. An attempt the provider cannot have billed (no
connection, an error status) adds nothing. The SDK's retry loop is not touched: its ``_sleep_for_retry``, entered
once per failed attempt while that attempt's error is being handled, is wrapped to look at the error and carry on.
"""

from __future__ import annotations

import logging
import sys
from asyncio import current_task
from threading import get_ident

from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.errors import ReportedError
from spendwatch.instrumentation.openai_sdk.failures import attempt_usage

__all__ = ["IN_FLIGHT", "RETRY_TARGETS", "async_retrying", "retrying"]

_logger = logging.getLogger(__name__)

# (module, class) whose ``_sleep_for_retry`` is wrapped; is_async picks the wrapper.
RETRY_TARGETS = (("openai._base_client", "SyncAPIClient", False), ("openai._base_client", "AsyncAPIClient", True))

# The instrumented calls in flight: the call, its kind and its request keyword arguments, by the thread (sync calls)
# or asyncio task (async calls) making it, of which each makes one at a time. The wrappers add and remove the entry
# around the SDK's send (a dict costs each call less than a context variable). An async call outside asyncio (trio)
# has no entry: only its last attempt is counted.
IN_FLIGHT: dict[object, tuple[Call, str, dict]] = {}


def retrying(wrapped, instance, args, kwargs):
    _count_failed_attempt(get_ident(), kwargs)
    return wrapped(*args, **kwargs)


async def async_retrying(wrapped, instance, args, kwargs):
    try:
        task = current_task()
    except RuntimeError:  # not in asyncio (trio): no entry was made
        task = None
    if task is not None:
        _count_failed_attempt(task, kwargs)
    return await wrapped(*args, **kwargs)


def _count_failed_attempt(in_flight: object, sleep_kwargs: dict) -> None:
    """Record the attempt that just failed, if the provider may have billed it. An attempt answered with an error
    status (``response`` given) was not billed."""
    try:
        current = IN_FLIGHT.get(in_flight)
        error = sys.exc_info()[1]
        if current is None or error is None or sleep_kwargs.get("response") is not None:
            return
        call, kind, request = current
        usage = attempt_usage(kind, error, request)
        if usage is None:
            return
        number = sleep_kwargs.get("retries_taken")
        attributes = {"spendwatch.attempt": number + 1} if type(number) is int else None
        recorder = call.recorder
        attempt = recorder.start(call.operation, call.provider, call.request_model, attributes, call.price_provider)
        attempt.fail(ReportedError(_sdk_error_name(error)), usage)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not count a retried attempt", exc_info=True)


def _sdk_error_name(error: BaseException) -> str:
    """The error the SDK would have raised, had this been the last attempt."""
    return "APITimeoutError" if "Timeout" in type(error).__name__ else "APIConnectionError"
