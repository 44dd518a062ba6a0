"""Wrapper factories for the OpenAI SDK's resource methods, in sync and async twins.

Each wrapper opens a :class:`~spendwatch.instrumentation.calls.Call` before the request, lets the SDK do exactly
what it would have done, and ends the call from the result: a parsed response, a stream (handed back behind a
transparent proxy) or a raw response (``with_raw_response``). The SDK's result and exceptions reach the caller
untouched; everything spendwatch does around them is contained. Beside them: which provider a client talks to
(``providers``), what a failed call may have cost (``failures``), and responses the caller reads later (``responses``).
"""

from __future__ import annotations

import json
import logging
from asyncio import current_task
from threading import get_ident
from typing import Any

from openai import AsyncStream, BaseModel, OpenAIError, Stream
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context, get_current
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN as _SUPPRESS_PLAIN

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call, CallRecorder
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.openai_sdk.attempts import IN_FLIGHT
from spendwatch.instrumentation.openai_sdk.background_responses import remember
from spendwatch.instrumentation.openai_sdk.failures import end_failed
from spendwatch.instrumentation.openai_sdk.guard_request import price_terms
from spendwatch.instrumentation.openai_sdk.media import (
    MEDIA_KINDS,
    MEDIA_TARGETS,
    MODERATION,
    result_usage,
    stream_state,
)
from spendwatch.instrumentation.openai_sdk.providers import endpoint_of
from spendwatch.instrumentation.openai_sdk.responses import (
    AsyncStreamedResponseProxy,
    StreamedResponseProxy,
    end_unread,
    finish_raw,
)
from spendwatch.instrumentation.openai_sdk.streams import (
    AsyncStreamProxy,
    SyncStreamProxy,
    end_helper_stream,
    queue_end,
)
from spendwatch.instrumentation.openai_sdk.usage import (
    CHAT,
    COMPLETION,
    EMBEDDINGS,
    RESPONSES,
    input_token_bound,
    output_cap,
    usage_from_result,
)

__all__ = ["HELPER_TARGETS", "TARGETS", "async_helper_close", "async_wrapper", "helper_close", "sync_wrapper"]

_logger = logging.getLogger(__name__)

# (module, class, method, kind, gen_ai.operation.name, is_async). Each API gets the GenAI conventions' well-known
# operation that describes it, so spend by operation tells them apart: Chat Completions are "chat", and the Responses
# API, whose input and output are lists of multimodal items, is "generate_content" (the conventions' "multimodal
# content generation"). The official openai-v2 instrumentation records Responses as "chat"; ours differ on purpose.
TARGETS = (
    ("openai.resources.chat.completions", "Completions", "create", CHAT, "chat", False),
    ("openai.resources.chat.completions", "Completions", "parse", CHAT, "chat", False),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", CHAT, "chat", True),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", CHAT, "chat", True),
    ("openai.resources.completions", "Completions", "create", COMPLETION, "text_completion", False),
    ("openai.resources.completions", "AsyncCompletions", "create", COMPLETION, "text_completion", True),
    ("openai.resources.embeddings", "Embeddings", "create", EMBEDDINGS, "embeddings", False),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", EMBEDDINGS, "embeddings", True),
    ("openai.resources.responses", "Responses", "create", RESPONSES, "generate_content", False),
    ("openai.resources.responses", "Responses", "parse", RESPONSES, "generate_content", False),
    ("openai.resources.responses", "AsyncResponses", "create", RESPONSES, "generate_content", True),
    ("openai.resources.responses", "AsyncResponses", "parse", RESPONSES, "generate_content", True),
    *MEDIA_TARGETS,  # images, audio, moderations
)

# The SDK's ``.stream()`` helpers (module, class, is_async): their ``close()`` closes the HTTP response past our
# stream proxy, so it is wrapped to end the call too.
HELPER_TARGETS = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream", False),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream", True),
    ("openai.lib.streaming.responses._responses", "ResponseStream", False),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream", True),
)

_REQUEST_ATTRIBUTES = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
)

# The keyword that caps the output, per API, for a guard that degrades a request which set no cap of its own.
_CAP_ARGUMENT_BY_KIND = {CHAT: "max_completion_tokens", COMPLETION: "max_tokens", RESPONSES: "max_output_tokens"}

_REQUEST_ARGUMENTS = frozenset(argument for argument, _ in _REQUEST_ATTRIBUTES)


def _request_attributes(kwargs: dict, capture_content: bool) -> dict:
    attributes = {}
    for argument, attribute in _REQUEST_ATTRIBUTES:
        value = kwargs.get(argument)
        if type(value) in (int, float):
            attributes[attribute] = value
    if capture_content:
        content = {key: kwargs[key] for key in ("messages", "input", "prompt", "instructions") if key in kwargs}
        attributes["gen_ai.input.messages"] = json.dumps(content, default=str)
    return attributes


def _start(
    recorder: CallRecorder, operation: str, resource: Any, kwargs: dict, capture: bool, current: Context
) -> Call | None:
    try:
        model = kwargs.get("model")
        if type(model) is not str or not model:
            model = "unknown"
        provider, price_provider, attributes = endpoint_of(resource)
        if capture or not _REQUEST_ARGUMENTS.isdisjoint(kwargs):  # the usual call sets no sampling parameters
            requested = _request_attributes(kwargs, capture)
            if requested:
                attributes = {**attributes, **requested}
        call = recorder.start(operation, provider, model, attributes, price_provider, current, guarded=True)
        call.activate()
        return call
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not start a call span", exc_info=True)
        return None


def _admit(guard: admission.Guard, call: Call, kind: str, kwargs: dict) -> dict:
    """Ask the budget guard; returns the keyword arguments to send (a guard may degrade them).
    Raises ``BudgetExceededError`` when the guard refuses: the one deliberate exception we raise. It is an
    ``openai.OpenAIError`` too, so the app's handlers for the SDK's errors catch it."""
    try:
        cap_argument, cap = output_cap(kwargs)
        if kind == MODERATION:
            return kwargs  # free: no budget to guard
        if kind == EMBEDDINGS:
            cap_argument, cap = None, 0
        elif kind in MEDIA_KINDS:
            cap_argument = None  # no argument caps what an image or audio call is billed for
        elif cap_argument is None:
            cap_argument = _CAP_ARGUMENT_BY_KIND[kind]
        request = CallRequest(
            call.provider,
            call.operation,
            call.request_model,
            call.category,
            input_token_bound(kwargs),
            cap,
            cap_argument,
            call.price_provider,
            **price_terms(kwargs),  # the service tier and the tools OpenAI runs, for the worst case
        )
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not describe a call to the guard", exc_info=True)
        return kwargs
    call.ticket = ticket = admission.admit(guard, request, OpenAIError)  # a refusal is an OpenAIError too
    if ticket is None or not ticket.request_changes:
        return kwargs
    call.span.set_attribute("spendwatch.guard.degraded", json.dumps(ticket.request_changes, sort_keys=True))
    return {**kwargs, **ticket.request_changes}


# Result types by whether they are the SDK's parsed models: pydantic's isinstance() runs Python code on every call,
# a dict lookup does not (the SDK's model classes are a fixed few).
_model_types: dict[type, bool] = {}


def _is_model(result_type: type) -> bool:
    known = _model_types.get(result_type)
    if known is None:
        known = _model_types[result_type] = issubclass(result_type, BaseModel)
    return known


def _output_content(result: Any) -> dict | None:
    """The output as span attributes (content capture), or None when it cannot be serialised."""
    try:
        return {
            "gen_ai.output.messages": json.dumps(result.model_dump(include={"choices", "output", "data"}), default=str)
        }
    except Exception:  # noqa: BLE001
        return None


def _finish(call: Call, kind: str, result: Any, kwargs: dict, capture: bool) -> Any:
    """End ``call`` from ``result`` and return what the caller gets: ``result`` itself or a proxy over a stream."""
    try:
        call.deactivate()
        if not capture and _is_model(type(result)):  # the usual case: a parsed response
            read = result_usage if kind in MEDIA_KINDS else usage_from_result  # text kinds: one dispatch less
            usage = read(kind, result, kwargs)
            call.succeed(usage)
            if kind == RESPONSES and kwargs.get("background") is True:
                remember(call, result, usage)  # its output is counted when this process reads the result
            return result
        if isinstance(result, Stream):
            return SyncStreamProxy(result, call, stream_state(kind, kwargs))
        if isinstance(result, AsyncStream):
            return AsyncStreamProxy(result, call, stream_state(kind, kwargs))
        if isinstance(result, LegacyAPIResponse):
            return finish_raw(call, kind, result, kwargs)
        if isinstance(result, APIResponse):
            return StreamedResponseProxy(result, call, kind, kwargs)
        if isinstance(result, AsyncAPIResponse):
            return AsyncStreamedResponseProxy(result, call, kind, kwargs)
        usage = result_usage(kind, result, kwargs)
        call.succeed(usage, _output_content(result) if capture else None)
        if kind == RESPONSES and kwargs.get("background") is True:
            remember(call, result, usage)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        end_unread(call, kind, kwargs)  # counted from the request rather than lost (a no-op if it did end)
    return result


def sync_wrapper(recorder: CallRecorder, kind: str, operation: str, capture: bool):
    def traced(wrapped, instance, args, kwargs):
        current = get_current()  # is_instrumentation_enabled(), with one read of the context instead of two
        if current.get(_SUPPRESS_INSTRUMENTATION_KEY) or current.get(_SUPPRESS_PLAIN) or not recorder.active:
            return wrapped(*args, **kwargs)
        call = _start(recorder, operation, instance, kwargs, capture, current)
        if call is None:
            return wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                kwargs = _admit(guard, call, kind, kwargs)
            except BudgetExceededError as refusal:
                end_failed(call, refusal, kind, kwargs)
                raise
        call.leaving()
        in_flight = get_ident()  # each retried attempt that may have been billed is counted (attempts)
        IN_FLIGHT[in_flight] = (call, kind, kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            end_failed(call, error, kind, kwargs)
            raise
        finally:
            IN_FLIGHT.pop(in_flight, None)
        return _finish(call, kind, result, kwargs, capture)

    return traced


def async_wrapper(recorder: CallRecorder, kind: str, operation: str, capture: bool):
    async def traced(wrapped, instance, args, kwargs):
        current = get_current()
        if current.get(_SUPPRESS_INSTRUMENTATION_KEY) or current.get(_SUPPRESS_PLAIN) or not recorder.active:
            return await wrapped(*args, **kwargs)
        call = _start(recorder, operation, instance, kwargs, capture, current)
        if call is None:
            return await wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                kwargs = _admit(guard, call, kind, kwargs)
            except BudgetExceededError as refusal:
                end_failed(call, refusal, kind, kwargs)
                raise
        call.leaving()
        try:
            in_flight = current_task()
        except RuntimeError:  # not in asyncio (trio): only the last attempt is counted
            in_flight = None
        if in_flight is not None:
            IN_FLIGHT[in_flight] = (call, kind, kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except GeneratorExit as error:  # closed while waiting for the answer, maybe by the garbage collector: ended
            call.deactivate()  # later, as a finaliser must not end a call (see streams.queue_end)
            start_background_thread()
            queue_end(lambda error=error: end_failed(call, error, kind, kwargs, sent=True))
            raise
        except BaseException as error:
            end_failed(call, error, kind, kwargs)
            raise
        finally:
            IN_FLIGHT.pop(in_flight, None)
        return _finish(call, kind, result, kwargs, capture)

    return traced


def helper_close(wrapped, instance, args, kwargs):
    try:
        return wrapped(*args, **kwargs)
    finally:
        end_helper_stream(instance)


async def async_helper_close(wrapped, instance, args, kwargs):
    try:
        return await wrapped(*args, **kwargs)
    finally:
        end_helper_stream(instance)
