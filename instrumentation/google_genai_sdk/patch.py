"""Wrapper factories for ``google-genai``'s model methods, in sync and async twins.

Each wrapper opens a :class:`~spendwatch.instrumentation.calls.Call` before the request, lets the SDK do exactly what
it would have done, and ends the call from the response (a stream is handed back chunk for chunk, see ``streams``).
The SDK's results and exceptions reach the caller untouched; everything spendwatch does around them is contained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.calls import Call, CallRecorder, Usage, safe_instrumentation
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.google_genai_sdk.failures import BudgetRefusal, end_failed
from spendwatch.instrumentation.google_genai_sdk.streams import StreamState, iterate, iterate_async
from spendwatch.instrumentation.google_genai_sdk.targets import GENERATE
from spendwatch.instrumentation.google_genai_sdk.usage import (
    input_token_bound,
    output_cap,
    request_model,
    usage_from_embeddings,
    usage_from_metadata,
    usage_from_request,
    with_output_cap,
)

__all__ = ["async_stream_wrapper", "async_wrapper", "stream_wrapper", "sync_wrapper"]

_logger = logging.getLogger(__name__)

_CAP_ARGUMENT = "max_output_tokens"
_CONFIG_ATTRIBUTES = (
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("seed", "gen_ai.request.seed"),
)


def _provider(models: Any) -> str:
    """``gcp.vertex_ai`` for a Vertex AI client, else ``gcp.gemini`` (the Gemini API)."""
    return "gcp.vertex_ai" if getattr(getattr(models, "_api_client", None), "vertexai", False) else "gcp.gemini"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


_CONFIG_FIELDS = frozenset(field for field, _ in _CONFIG_ATTRIBUTES)


def _request_attributes(kwargs: dict, capture: bool) -> dict | None:
    config = kwargs.get("config")
    given = config if isinstance(config, dict) else getattr(config, "model_fields_set", None) or ()
    if not capture and _CONFIG_FIELDS.isdisjoint(given):
        return None  # the usual call: no sampling parameters to report
    attributes = {}
    for field, attribute in _CONFIG_ATTRIBUTES:
        value = config.get(field) if isinstance(config, dict) else getattr(config, field, None)
        if type(value) in (int, float):
            attributes[attribute] = value
    if capture:
        attributes["gen_ai.input.messages"] = json.dumps(_jsonable(kwargs.get("contents")), default=str)
    return attributes


def _start(recorder: CallRecorder, operation: str, models: Any, kwargs: dict, capture: bool) -> Call | None:
    try:
        model = request_model(kwargs.get("model"))
        return recorder.start(operation, _provider(models), model, _request_attributes(kwargs, capture), guarded=True)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not start a call span", exc_info=True)
        return None


def _admit(guard: admission.Guard, call: Call, operation: str, kwargs: dict) -> dict:
    """Ask the budget guard; returns the keyword arguments to send (a guard may lower the output cap). Raises
    ``BudgetExceededError`` (also a ``google.genai.errors.APIError``) when the guard refuses."""
    try:
        generating = operation == GENERATE
        request = CallRequest(
            call.provider,
            call.operation,
            call.request_model,
            call.category,
            input_token_bound(kwargs),
            output_cap(kwargs) if generating else 0,
            _CAP_ARGUMENT if generating else None,
        )
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not describe a call to the guard", exc_info=True)
        return kwargs
    call.ticket = ticket = admission.admit(guard, request, BudgetRefusal)
    if ticket is None or not ticket.request_changes:
        return kwargs
    call.span.set_attribute("spendwatch.guard.degraded", json.dumps(ticket.request_changes, sort_keys=True))
    return with_output_cap(kwargs, ticket.request_changes)


def _admitted(guard: admission.Guard, call: Call, operation: str, kwargs: dict) -> dict:
    """The keyword arguments to send, after ``guard`` admitted the call; a refusal ends the call."""
    try:
        return _admit(guard, call, operation, kwargs)
    except BudgetExceededError as refusal:
        end_failed(call, refusal, kwargs)
        raise


def _opened(
    recorder: CallRecorder, operation: str, models: Any, kwargs: dict, capture: bool
) -> tuple[Call | None, dict]:
    """The call started for this request (``None`` when it could not be) and the keyword arguments to send."""
    call = _start(recorder, operation, models, kwargs, capture)
    if call is None:
        return None, kwargs
    if (guard := admission.current_guard()) is not None:
        kwargs = _admitted(guard, call, operation, kwargs)
    call.leaving()
    return call, kwargs


def _usage(operation: str, result: Any, kwargs: dict) -> Usage:
    if operation == GENERATE:
        model = getattr(result, "model_version", None)
        usage = usage_from_metadata(getattr(result, "usage_metadata", None), model if type(model) is str else None)
        if usage is None:
            usage = usage_from_request(kwargs)
        return usage
    return usage_from_embeddings(result, kwargs)


def _output_content(result: Any) -> dict | None:
    try:
        return {"gen_ai.output.messages": json.dumps(_jsonable(result.candidates), default=str)}
    except Exception:  # noqa: BLE001
        return None


def _finish(call: Call, operation: str, result: Any, kwargs: dict, capture: bool) -> None:
    try:
        call.deactivate()
        extra = _output_content(result) if capture and operation == GENERATE else None
        call.succeed(_usage(operation, result, kwargs), extra)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        with safe_instrumentation("recording a call from its request"):
            call.succeed(usage_from_request(kwargs))  # counted from the request rather than lost (a no-op if ended)


def sync_wrapper(recorder: CallRecorder, operation: str, capture: bool):
    def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return wrapped(*args, **kwargs)
        call, kwargs = _opened(recorder, operation, instance, kwargs, capture)
        if call is None:
            return wrapped(*args, **kwargs)
        call.activate()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            end_failed(call, error, kwargs)
            raise
        _finish(call, operation, result, kwargs, capture)
        return result

    return traced


def async_wrapper(recorder: CallRecorder, operation: str, capture: bool):
    def answered(call: Call, result: Any, kwargs: dict) -> Any:
        _finish(call, operation, result, kwargs, capture)
        return result

    return _async_traced(recorder, operation, capture, answered)


def stream_wrapper(recorder: CallRecorder, operation: str, capture: bool):
    """The SDK's streamed request is a generator: the call starts when the caller asks for its first chunk."""

    def traced_stream(wrapped, instance, args, kwargs):
        call, kwargs = _opened(recorder, operation, instance, kwargs, capture)
        if call is None:
            yield from wrapped(*args, **kwargs)
            return
        try:
            stream = wrapped(*args, **kwargs)
        except BaseException as error:
            end_failed(call, error, kwargs)
            raise
        yield from iterate(call, StreamState(kwargs), stream)

    def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return wrapped(*args, **kwargs)
        return traced_stream(wrapped, instance, args, kwargs)

    return traced


def async_stream_wrapper(recorder: CallRecorder, operation: str, capture: bool):
    """On ``client.aio`` the streamed request is sent when the coroutine is awaited; it returns the chunks."""

    def streamed(call: Call, stream: Any, kwargs: dict) -> Any:
        call.deactivate()
        return iterate_async(call, StreamState(kwargs), stream)

    return _async_traced(recorder, operation, capture, streamed)


def _async_traced(recorder: CallRecorder, operation: str, capture: bool, answer: Callable[[Call, Any, dict], Any]):
    """An async wrapper that sends the request inside its call and hands the SDK's result to ``answer``."""

    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return await wrapped(*args, **kwargs)
        call, kwargs = _opened(recorder, operation, instance, kwargs, capture)
        if call is None:
            return await wrapped(*args, **kwargs)
        call.activate()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            end_failed(call, error, kwargs)
            raise
        return answer(call, result, kwargs)

    return traced
