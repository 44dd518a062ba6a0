"""Wrapper factories for the OpenAI SDK's resource methods, in sync and async twins.

Each wrapper opens a :class:`~spendwatch.instrumentation.calls.Call` before the request, lets the SDK do exactly
what it would have done, and ends the call from the result: a parsed response, a stream (handed back behind a
transparent proxy) or a raw response (``with_raw_response``). The SDK's result and exceptions reach the caller
untouched; everything spendwatch does around them is contained.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from openai import APIConnectionError, APIStatusError, AsyncStream, BaseModel, OpenAIError, Stream
from openai import _base_client as openai_base_client
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import ObjectProxy

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call, CallRecorder, Usage
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.openai_sdk.streams import (
    AsyncStreamProxy,
    SyncStreamProxy,
    end_helper_stream,
    new_stream_state,
    queue_end,
)
from spendwatch.instrumentation.openai_sdk.usage import (
    CHAT,
    COMPLETION,
    EMBEDDINGS,
    RESPONSES,
    input_token_bound,
    output_cap,
    text,
    usage_from_request,
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

# Azure OpenAI's hosts: Microsoft's v1 API is reached with the plain OpenAI client, base_url ".../openai/v1/".
_AZURE_OPENAI_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_MAX_CACHED_PROVIDERS = 1024
# The provider by id() of a client's base URL object, with that object and the client's type: a client keeps its URL
# object until its base_url is set again, and the entry holds the object, so the id cannot be reused meanwhile.
_provider_by_url_id: dict[int, tuple[Any, type, str]] = {}


def _provider(resource: Any) -> str:
    client = getattr(resource, "_client", None)
    url = getattr(client, "_base_url", None)
    known = _provider_by_url_id.get(id(url))
    if known is not None and known[0] is url and known[1] is type(client):
        return known[2]
    return _remember_provider(client, url)


def _remember_provider(client: Any, url: Any) -> str:
    """``azure.ai.openai`` for an Azure client class, or any client whose base URL is an Azure OpenAI host."""
    client_type = type(client)
    host = getattr(url, "host", None)
    is_azure = any(base.__name__ in ("AzureOpenAI", "AsyncAzureOpenAI") for base in client_type.__mro__) or (
        isinstance(host, str) and host.lower().endswith(_AZURE_OPENAI_HOSTS)
    )
    provider = "azure.ai.openai" if is_azure else "openai"
    if len(_provider_by_url_id) >= _MAX_CACHED_PROVIDERS:  # clients made per request: keep it bounded
        _provider_by_url_id.clear()
    _provider_by_url_id[id(url)] = (url, client_type, provider)
    return provider


_REQUEST_ARGUMENTS = frozenset(argument for argument, _ in _REQUEST_ATTRIBUTES)


def _request_attributes(kwargs: dict, capture_content: bool) -> dict | None:
    if not capture_content and _REQUEST_ARGUMENTS.isdisjoint(kwargs):
        return None  # the usual call: no sampling parameters to report
    attributes = {}
    for argument, attribute in _REQUEST_ATTRIBUTES:
        value = kwargs.get(argument)
        if type(value) in (int, float):
            attributes[attribute] = value
    if capture_content:
        content = {key: kwargs[key] for key in ("messages", "input", "prompt", "instructions") if key in kwargs}
        attributes["gen_ai.input.messages"] = json.dumps(content, default=str)
    return attributes


def _start(recorder: CallRecorder, operation: str, resource: Any, kwargs: dict, capture: bool) -> Call | None:
    try:
        model = text(kwargs.get("model")) or "unknown"
        call = recorder.start(operation, _provider(resource), model, _request_attributes(kwargs, capture))
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
        if kind == EMBEDDINGS:
            cap_argument, cap = None, 0
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
        )
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not describe a call to the guard", exc_info=True)
        return kwargs
    call.ticket = ticket = admission.admit(guard, request, OpenAIError)  # a refusal is an OpenAIError too
    if ticket is None or not ticket.request_changes:
        return kwargs
    call.span.set_attribute("spendwatch.guard.degraded", json.dumps(ticket.request_changes, sort_keys=True))
    return {**kwargs, **ticket.request_changes}


def _fail(call: Call, error: BaseException, kind: str, kwargs: dict, *, sent: bool = False) -> None:
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
    as estimated: a timeout, a lost connection, a cancelled task, an answer the SDK could not read. Only the SDK's
    last attempt is looked at (it retries twice by default).
    """
    completion = getattr(error, "completion", None)
    if completion is not None:
        return usage_from_result(kind, completion, kwargs)
    if not sent and _cannot_be_billed(error):
        return None
    return usage_from_request(kwargs)


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
        if isinstance(result, BaseModel) and not capture:  # the usual case: a parsed response
            call.succeed(usage_from_result(kind, result, kwargs))
            return result
        if isinstance(result, Stream):
            return SyncStreamProxy(result, call, new_stream_state(kind, kwargs))
        if isinstance(result, AsyncStream):
            return AsyncStreamProxy(result, call, new_stream_state(kind, kwargs))
        if isinstance(result, LegacyAPIResponse):
            return _finish_raw(call, kind, result, kwargs)
        if isinstance(result, APIResponse):
            return StreamedResponseProxy(result, call, kind, kwargs)
        if isinstance(result, AsyncAPIResponse):
            return AsyncStreamedResponseProxy(result, call, kind, kwargs)
        call.succeed(usage_from_result(kind, result, kwargs), _output_content(result) if capture else None)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        _succeed_unread(call, kwargs)  # counted from the request rather than lost (a no-op if it did end)
    return result


def _finish_raw(call: Call, kind: str, raw: LegacyAPIResponse, kwargs: dict) -> Any:
    """``with_raw_response``: a plain response is parsed now (the SDK caches the parse, so the caller's own
    ``parse()`` returns the very same object); a stream is only reachable through ``parse()``, so the caller gets
    a proxy whose ``parse()`` hands out the stream behind our stream proxy."""
    if kwargs.get("stream") is True:
        return RawStreamResponseProxy(raw, call, kind, kwargs)
    try:
        parsed = raw.parse()
    except Exception as error:  # noqa: BLE001 - the caller's own parse() raises it: the call failed, maybe billed
        _fail(call, error, kind, kwargs, sent=True)
        return raw
    call.succeed(usage_from_result(kind, parsed, kwargs))
    return raw


class _UnparsedResponseProxy(ObjectProxy):
    """A response whose body the caller parses later: its ``parse()`` ends the call from what it returns (a stream
    goes behind our stream proxy); dropped unparsed, the call ends from the request alone."""

    def __init__(self, response: Any, call: Call, kind: str, kwargs: dict) -> None:
        super().__init__(response)
        start_background_thread()  # ends the call within a second should the caller drop this unparsed
        self._self_call = call
        self._self_kind = kind
        self._self_kwargs = kwargs
        self._self_stream = None

    def _self_adopt(self, parsed: Any) -> Any:
        """End the call from ``parsed`` (or hand it to a stream proxy); returns what the caller gets."""
        call = self._self_call
        if self._self_stream is None and call is not None:
            try:
                if isinstance(parsed, Stream | AsyncStream):
                    state = new_stream_state(self._self_kind, self._self_kwargs)
                    proxy_type = AsyncStreamProxy if isinstance(parsed, AsyncStream) else SyncStreamProxy
                    self._self_stream, self._self_call = proxy_type(parsed, call, state), None
                else:
                    self._self_call = None
                    call.succeed(usage_from_result(self._self_kind, parsed, self._self_kwargs))
            except Exception:  # noqa: BLE001
                _logger.debug("spendwatch: could not read a parsed response", exc_info=True)
                _succeed_unread(call, self._self_kwargs)  # counted from the request, as _finish does
        return self._self_stream if self._self_stream is not None else parsed

    def _self_fail(self, error: BaseException) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            _fail(call, error, self._self_kind, self._self_kwargs, sent=True)

    def parse(self, *args, **kwargs):
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except Exception as error:
            self._self_fail(error)  # the answer had arrived: e.g. its body cut short, or LengthFinishReasonError
            raise
        return self._self_adopt(parsed)

    def _self_end_unparsed(self) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            _succeed_unread(call, self._self_kwargs)

    def __del__(self) -> None:
        # Never parsed, so never read: all we know is what the request carried. Ended later, as a finaliser must not
        # end a call (see streams.queue_end).
        with contextlib.suppress(Exception):  # a finaliser must stay silent
            call, self._self_call = self._self_call, None
            if call is not None:
                queue_end(lambda kwargs=self._self_kwargs: _succeed_unread(call, kwargs))


class RawStreamResponseProxy(_UnparsedResponseProxy):
    """``with_raw_response`` on a stream: the stream is only reachable through ``parse()``."""


class StreamedResponseProxy(_UnparsedResponseProxy):
    """``with_streaming_response``: the body is read when the caller parses it; its ``with`` block closes it."""

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end_unparsed()


class AsyncStreamedResponseProxy(_UnparsedResponseProxy):
    """``with_streaming_response`` on an async client: ``parse()`` and ``close()`` are coroutines."""

    async def parse(self, *args, **kwargs):
        try:
            parsed = await self.__wrapped__.parse(*args, **kwargs)
        except Exception as error:
            self._self_fail(error)
            raise
        return self._self_adopt(parsed)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_end_unparsed()


def _succeed_unread(call: Call, kwargs: dict) -> None:
    """End ``call`` from the request alone (its answer was never read); never raises."""
    try:
        call.succeed(usage_from_request(kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record an unread call", exc_info=True)


def sync_wrapper(recorder: CallRecorder, kind: str, operation: str, capture: bool):
    def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return wrapped(*args, **kwargs)
        call = _start(recorder, operation, instance, kwargs, capture)
        if call is None:
            return wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                kwargs = _admit(guard, call, kind, kwargs)
            except BudgetExceededError as refusal:
                _fail(call, refusal, kind, kwargs)
                raise
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _fail(call, error, kind, kwargs)
            raise
        return _finish(call, kind, result, kwargs, capture)

    return traced


def async_wrapper(recorder: CallRecorder, kind: str, operation: str, capture: bool):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return await wrapped(*args, **kwargs)
        call = _start(recorder, operation, instance, kwargs, capture)
        if call is None:
            return await wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                kwargs = _admit(guard, call, kind, kwargs)
            except BudgetExceededError as refusal:
                _fail(call, refusal, kind, kwargs)
                raise
        try:
            result = await wrapped(*args, **kwargs)
        except GeneratorExit as error:  # closed while waiting for the answer, maybe by the garbage collector: ended
            call.deactivate()  # later, as a finaliser must not end a call (see streams.queue_end)
            start_background_thread()
            queue_end(lambda error=error: _fail(call, error, kind, kwargs, sent=True))
            raise
        except BaseException as error:
            _fail(call, error, kind, kwargs)
            raise
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
