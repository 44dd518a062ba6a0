"""Wrapper factories for the Anthropic SDK's Messages methods, in sync and async twins.

Each wrapper opens a :class:`~spendwatch.instrumentation.calls.Call` before the request, asks the budget guard, lets
the SDK do exactly what it would have done, and ends the call from the result: a ``Message``, a stream of events
(handed back behind a transparent proxy), a raw response (``with_raw_response`` / ``with_streaming_response``), or
the ``messages.stream()`` helper's manager (the call opens when its ``with`` block is entered). The SDK's results and
exceptions reach the caller untouched; everything spendwatch does around them is contained.

``messages.count_tokens`` is not wrapped: it is free, so it is neither spend nor an LLM call to count (the SDK's own
span describes it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from anthropic import AnthropicError, AsyncStream, BaseModel, Stream
from anthropic._response import APIResponse, AsyncAPIResponse

try:  # with_raw_response's response before anthropic 1.x; its parse() is not a coroutine, even on async clients
    from anthropic._legacy_response import LegacyAPIResponse
except ImportError:
    LegacyAPIResponse = APIResponse
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call, CallRecorder
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.openai_sdk.streams import queue_end
from spendwatch.instrumentation.openai_sdk.usage import text

from .failures import end_failed
from .guard_request import price_terms
from .providers import provider_of
from .responses import AsyncResponseProxy, ResponseProxy, end_unread
from .streams import AsyncStreamManagerProxy, StreamManagerProxy, proxy_stream
from .usage import request_input_bound, usage_from_message

__all__ = ["async_wrapper", "stream_helper_wrapper", "sync_wrapper"]

_logger = logging.getLogger(__name__)

OPERATION = "chat"
_OUTPUT_CAP = "max_tokens"  # required by the Messages API, so every request says its worst-case output
_REQUEST_ATTRIBUTES = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
)


def _request_attributes(kwargs: dict, capture: bool) -> dict:
    attributes = {}
    for argument, attribute in _REQUEST_ATTRIBUTES:
        value = kwargs.get(argument)
        if type(value) in (int, float):
            attributes[attribute] = value
    if capture:
        content = {key: kwargs[key] for key in ("system", "messages") if key in kwargs}
        attributes["gen_ai.input.messages"] = json.dumps(content, default=str)
    return attributes


def _start(recorder: CallRecorder, resource: Any, kwargs: dict, capture: bool) -> Call | None:
    try:
        model = text(kwargs.get("model")) or "unknown"
        call = recorder.start(
            OPERATION, provider_of(resource), model, _request_attributes(kwargs, capture), guarded=True
        )
        call.activate()
        return call
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not start a call span", exc_info=True)
        return None


def _admit(guard: admission.Guard, call: Call, kwargs: dict) -> dict:
    """Ask the budget guard; returns the keyword arguments to send (a guard may degrade them). Its refusal is raised
    as an ``anthropic.AnthropicError`` too, so the app's handlers for the SDK's errors catch it."""
    try:
        cap = kwargs.get(_OUTPUT_CAP)
        request = CallRequest(
            call.provider,
            call.operation,
            call.request_model,
            call.category,
            request_input_bound(kwargs),
            cap if type(cap) is int and cap >= 0 else None,
            _OUTPUT_CAP,
            **price_terms(kwargs),
        )
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not describe a call to the guard", exc_info=True)
        return kwargs
    call.ticket = ticket = admission.admit(guard, request, AnthropicError)
    if ticket is None or not ticket.request_changes:
        return kwargs
    call.span.set_attribute("spendwatch.guard.degraded", json.dumps(ticket.request_changes, sort_keys=True))
    return {**kwargs, **ticket.request_changes}


def _begin(recorder: CallRecorder, resource: Any, kwargs: dict, capture: bool) -> tuple[Call | None, dict]:
    """Open the call and ask the guard: ``(call or None, keyword arguments to send)``; raises the guard's refusal."""
    call = _start(recorder, resource, kwargs, capture)
    if call is None:
        return None, kwargs
    guard = admission.current_guard()
    if guard is not None:
        try:
            kwargs = _admit(guard, call, kwargs)
        except BudgetExceededError as refusal:
            end_failed(call, refusal, kwargs)
            raise
    call.leaving()
    return call, kwargs


def _output_content(message: Any) -> dict | None:
    try:
        content = [block.model_dump() for block in message.content]
        return {"gen_ai.output.messages": json.dumps(content, default=str)}
    except Exception:  # noqa: BLE001
        return None


def _finish(call: Call, result: Any, kwargs: dict, capture: bool) -> Any:
    """End ``call`` from ``result`` and return what the caller gets: ``result`` itself or a proxy over it."""
    try:
        call.deactivate()
        if isinstance(result, BaseModel):  # the usual case: a Message
            call.succeed(usage_from_message(result, kwargs), _output_content(result) if capture else None)
            return result
        if isinstance(result, Stream | AsyncStream):
            return proxy_stream(result, call, kwargs, isinstance(result, AsyncStream))
        if isinstance(result, APIResponse | LegacyAPIResponse):
            return ResponseProxy(result, call, kwargs)
        if isinstance(result, AsyncAPIResponse):
            return AsyncResponseProxy(result, call, kwargs)
        end_unread(call, kwargs)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        end_unread(call, kwargs)  # counted from the request rather than lost (a no-op if it did end)
    return result


def sync_wrapper(recorder: CallRecorder, capture: bool):
    def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return wrapped(*args, **kwargs)
        call, kwargs = _begin(recorder, instance, kwargs, capture)
        if call is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            end_failed(call, error, kwargs)
            raise
        return _finish(call, result, kwargs, capture)

    return traced


def async_wrapper(recorder: CallRecorder, capture: bool):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return await wrapped(*args, **kwargs)
        call, kwargs = _begin(recorder, instance, kwargs, capture)
        if call is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except GeneratorExit as error:  # closed while waiting for the answer, maybe by the garbage collector: ended
            call.deactivate()  # later, as a finaliser must not end a call (see openai_sdk.streams.queue_end)
            start_background_thread()
            queue_end(lambda error=error: end_failed(call, error, kwargs, sent=True))
            raise
        except BaseException as error:
            end_failed(call, error, kwargs)
            raise
        return _finish(call, result, kwargs, capture)

    return traced


def stream_helper_wrapper(recorder: CallRecorder, capture: bool, is_async: bool):
    """``messages.stream()``: the SDK's manager, behind a proxy that opens the call when the manager is entered."""
    proxy_type = AsyncStreamManagerProxy if is_async else StreamManagerProxy

    def traced(wrapped, instance, args, kwargs):
        manager = wrapped(*args, **kwargs)
        if not is_instrumentation_enabled() or not recorder.active or args:
            return manager  # every parameter is keyword-only: positional ones are not the SDK's API

        def begin(sent: dict) -> tuple[Call | None, dict]:
            if not is_instrumentation_enabled() or not recorder.active:
                return None, sent
            return _begin(recorder, instance, sent, capture)

        return proxy_type(manager, lambda **sent: wrapped(**sent), kwargs, begin)

    return traced
