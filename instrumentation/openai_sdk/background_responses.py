"""Background responses (``responses.create(background=True)``): the output is counted when the result arrives.

The create call answers at once with a queued response and no usage, so its record counts the request's input only
(estimated). Its id waits in a bounded map; when this process later reads the finished response (``retrieve``,
polling until the status is final, ``cancel``, or a retrieved stream's final event) a second record counts what
the final usage adds to what the first counted: the output, and any input beyond the estimate. Counted once, however
often the response is read again; never less than zero (counters never go down). The second record's span belongs
to the trace the create call was made in, with its category and attributes, and names the response's id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from openai import AsyncStream, BaseModel, Stream
from openai._legacy_response import LegacyAPIResponse
from opentelemetry import context
from wrapt import ObjectProxy

from spendwatch.instrumentation.calls import Call, CallRecorder, Usage
from spendwatch.instrumentation.errors import ReportedError
from spendwatch.instrumentation.openai_sdk.usage import responses_usage, text

__all__ = ["FINAL_STATUSES", "RETRIEVAL_TARGETS", "async_retrieved", "awaiting", "remember", "retrieved"]

_logger = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
# Ids awaiting a result, oldest first. A process that starts background responses and never reads them back
# forgets the oldest beyond this many: their output is not counted (logged at debug).
_MAX_AWAITED = 4096
# (module, class, method, is_async): the reads of a response that may bring its final usage.
RETRIEVAL_TARGETS = tuple(
    ("openai.resources.responses", prefix + "Responses", method, prefix == "Async")
    for prefix in ("", "Async")
    for method in ("retrieve", "cancel")
)
_TOKEN_FIELDS = ("input_tokens", "output_tokens")
_INPUT_PARTS = ("cache_read_tokens", "cache_write_tokens", "input_audio_tokens", "input_image_tokens")
_OUTPUT_PARTS = ("reasoning_tokens", "output_audio_tokens", "output_image_tokens")


@dataclass(slots=True)
class _Awaited:
    """What the create call's record was and counted: the second record is made alike."""

    recorder: CallRecorder
    operation: str
    provider: str
    price_provider: str
    request_model: str
    parent_context: context.Context
    counted: Usage


_awaited: dict[str, _Awaited] = {}


def awaiting(response_id: str) -> bool:
    """Whether this process waits for the result of the background response ``response_id``."""
    return response_id in _awaited


def remember(call: Call, response: Any, counted: Usage) -> None:
    """Keep a background response's id until its result is read (``call`` counted ``counted`` of it)."""
    try:
        response_id = text(getattr(response, "id", None))
        if response_id is None or text(getattr(response, "status", None)) in FINAL_STATUSES:
            return  # finished already: its record counted it all
        while len(_awaited) >= _MAX_AWAITED:
            forgotten = next(iter(_awaited))
            _awaited.pop(forgotten, None)
            _logger.debug("spendwatch: background response %s never read back: its output is not counted", forgotten)
        _awaited[response_id] = _Awaited(
            call.recorder,
            call.operation,
            call.provider,
            call.price_provider,
            call.request_model,
            context.get_current(),  # the caller's: the create call's span has ended and is no longer current
            counted,
        )
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not keep a background response", exc_info=True)


def _settle(response: Any) -> None:
    """Record what a finished background response adds, the first time it is read finished."""
    status = text(getattr(response, "status", None))
    if status not in FINAL_STATUSES:
        return
    response_id = text(getattr(response, "id", None))
    awaited = _awaited.pop(response_id, None) if response_id is not None else None
    if awaited is None or not awaited.recorder.active:
        return
    usage = _added(responses_usage(response, {}), awaited.counted)
    token = context.attach(awaited.parent_context)
    try:
        call = awaited.recorder.start(
            awaited.operation,
            awaited.provider,
            awaited.request_model,
            {"gen_ai.response.id": response_id},
            awaited.price_provider,
        )
    finally:
        context.detach(token)
    if status == "failed":
        error = getattr(response, "error", None)
        call.fail(ReportedError(text(getattr(error, "code", None)) or "response.failed"), usage)
    else:
        call.succeed(usage)


def _added(final: Usage, counted: Usage) -> Usage:
    """What ``final`` adds to ``counted``, field by field and never below zero; estimated when ``counted`` held more
    than ``final`` somewhere (the pair's total is then above the truth) or ``final`` is itself estimated."""
    added = Usage(response_model=final.response_model, service_tier=final.service_tier, units=None)
    exact = not final.estimated
    for name in _TOKEN_FIELDS:
        more = getattr(final, name) - getattr(counted, name)
        exact = exact and more >= 0
        setattr(added, name, max(more, 0))
    for parts, whole in ((_INPUT_PARTS, added.input_tokens), (_OUTPUT_PARTS, added.output_tokens)):
        for name in parts:
            more = max(getattr(final, name) - getattr(counted, name), 0)
            exact = exact and more <= whole
            setattr(added, name, min(more, whole))
    if final.units:
        before = counted.units or {}
        units = {name: quantity - before.get(name, 0) for name, quantity in final.units.items()}
        added.units = {name: quantity for name, quantity in units.items() if quantity > 0} or None
    added.estimated = not exact
    return added


# --- the reads that may bring a result -------------------------------------------------------------------------------


def retrieved(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    return _observe(result) if _awaited else result  # nothing awaited: nothing to look at


async def async_retrieved(wrapped, instance, args, kwargs):
    result = await wrapped(*args, **kwargs)
    return _observe(result) if _awaited else result


def _observe(result: Any) -> Any:
    """Settle a finished response read back; a stream is handed back behind a proxy that watches its events."""
    try:
        if isinstance(result, BaseModel):
            _settle(result)
        elif isinstance(result, Stream):
            return _SyncRetrievedStream(result)
        elif isinstance(result, AsyncStream):
            return _AsyncRetrievedStream(result)
        elif isinstance(result, LegacyAPIResponse) and not getattr(result, "_stream", False):
            _settle(result.parse())  # cached by the SDK: the caller's own parse() returns the same object
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not read a retrieved background response", exc_info=True)
    return result


def _observe_event(event: Any) -> None:
    try:
        if text(getattr(event, "type", None)) in _FINAL_EVENTS:
            _settle(getattr(event, "response", None))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not read a retrieved stream's event", exc_info=True)


class _SyncRetrievedStream(ObjectProxy):
    """A retrieved background response's stream: the same events; its final event settles the response."""

    def __iter__(self):
        for event in self.__wrapped__:
            _observe_event(event)
            yield event

    def __next__(self):
        event = next(self.__wrapped__)
        _observe_event(event)
        return event

    def __enter__(self):
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.__wrapped__.__exit__(*exc_info)


class _AsyncRetrievedStream(ObjectProxy):
    async def _self_iterate(self):
        async for event in self.__wrapped__:
            _observe_event(event)
            yield event

    def __aiter__(self):
        return self._self_iterate()

    async def __anext__(self):
        event = await self.__wrapped__.__anext__()
        _observe_event(event)
        return event

    async def __aenter__(self):
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        return await self.__wrapped__.__aexit__(*exc_info)
