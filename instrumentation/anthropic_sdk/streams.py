"""Anthropic's Messages event streams: reading their usage, and the ``messages.stream()`` helper's manager.

``messages.create(stream=True)`` hands back the SDK's ``Stream`` of raw events, which goes behind the same transparent
proxy as an OpenAI stream (:mod:`spendwatch.instrumentation.openai_sdk.streams`: the call ends once, when the stream
is read to the end, fails, is closed, or is dropped half-read). Usage arrives in two parts: ``message_start`` carries
the input side (and a first output count), ``message_delta`` the final output count and, with server tools, updated
input counts. Per event we only look at its type.

``messages.stream()`` returns a manager that sends the request when its ``with`` block is entered. The caller gets
the SDK's manager behind a proxy whose ``__enter__`` opens the call (asking the budget guard first) and puts the
stream proxy under the helper's ``MessageStream``, whose iteration, ``close()``, ``get_final_message()`` and ``with``
block all read or close that raw stream.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from wrapt import ObjectProxy

from spendwatch.instrumentation.calls import Call, Usage
from spendwatch.instrumentation.openai_sdk.streams import AsyncStreamProxy, SyncStreamProxy
from spendwatch.instrumentation.openai_sdk.usage import text

from .failures import end_failed
from .usage import fill_usage, request_input_estimate

__all__ = ["AsyncStreamManagerProxy", "MessageStreamState", "StreamManagerProxy", "proxy_stream"]

_logger = logging.getLogger(__name__)

# Fields of a usage: message_delta's, where it gives them, win over message_start's.
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "output_tokens_details",
    "server_tool_use",
    "service_tier",
)


class MessageStreamState:
    """What a stream of Messages events has said so far."""

    __slots__ = ("kwargs", "model", "started", "delta", "deltas")
    failure = None  # an ``error`` event is raised by the SDK itself, never yielded

    def __init__(self, kwargs: dict) -> None:
        self.kwargs = kwargs
        self.model = None
        self.started = None  # message_start's usage
        self.delta = None  # the last message_delta's usage
        self.deltas = 0  # content deltas, about a token each: the output estimate when no usage came

    def observe(self, event: Any) -> None:
        kind = event.type
        if kind == "content_block_delta":
            self.deltas += 1
        elif kind == "message_delta":
            self.delta = event.usage
        elif kind == "message_start":
            message = event.message
            self.model = message.model
            self.started = message.usage

    def to_usage(self) -> Usage:
        usage = Usage(response_model=text(self.model))
        started, delta = self.started, self.delta
        merged = SimpleNamespace(**{name: _latest(name, started, delta) for name in _USAGE_FIELDS})
        if not fill_usage(usage, merged):
            usage.input_tokens = request_input_estimate(self.kwargs)
            usage.output_tokens = self.deltas
            usage.estimated = True
        return usage


def _latest(name: str, started: Any, delta: Any) -> Any:
    value = getattr(delta, name, None)
    return getattr(started, name, None) if value is None else value


def proxy_stream(stream: Any, call: Call, kwargs: dict, is_async: bool) -> Any:
    proxy_type = AsyncStreamProxy if is_async else SyncStreamProxy
    return proxy_type(stream, call, MessageStreamState(kwargs))


def _adopt(message_stream: Any, call: Call, kwargs: dict, is_async: bool) -> None:
    """Put our stream proxy under the helper's ``MessageStream``. It reads ``_raw_stream`` only once iterated (its
    event generator starts on first use), so replacing it right after ``__enter__`` catches every event."""
    message_stream._raw_stream = proxy_stream(message_stream._raw_stream, call, kwargs, is_async)


class _ManagerProxyBase(ObjectProxy):
    """The SDK's stream manager, made by ``stream(**kwargs)``; ``begin(kwargs)`` opens the call when it is entered and
    returns ``(call, kwargs to send)`` (None for no call): a guard's degraded arguments need a manager of their own."""

    def __init__(self, manager: Any, make: Any, kwargs: dict, begin: Any) -> None:
        super().__init__(manager)
        self._self_make = make
        self._self_kwargs = kwargs
        self._self_begin = begin
        self._self_entered = manager

    def _self_manager_for(self, sent: dict) -> Any:
        if sent is self._self_kwargs:
            return self.__wrapped__
        self._self_discard()
        self._self_entered = manager = self._self_make(**sent)
        return manager

    def _self_discard(self) -> None:
        """The manager made first is never entered: close what it prepared (the async one holds a coroutine)."""


class StreamManagerProxy(_ManagerProxyBase):
    def __enter__(self):
        call, sent = self._self_begin(self._self_kwargs)
        if call is None:
            return self.__wrapped__.__enter__()
        manager = self._self_manager_for(sent)
        try:
            message_stream = manager.__enter__()
        except BaseException as error:
            end_failed(call, error, sent)
            raise
        call.deactivate()
        try:
            _adopt(message_stream, call, sent, is_async=False)
        except Exception:  # noqa: BLE001
            _logger.debug("spendwatch: could not follow a message stream", exc_info=True)
            call.succeed(Usage(input_tokens=request_input_estimate(sent), estimated=True))
        return message_stream

    def __exit__(self, exc_type, exc, traceback):
        return self._self_entered.__exit__(exc_type, exc, traceback)


class AsyncStreamManagerProxy(_ManagerProxyBase):
    async def __aenter__(self):
        call, sent = self._self_begin(self._self_kwargs)
        if call is None:
            return await self.__wrapped__.__aenter__()
        manager = self._self_manager_for(sent)
        try:
            message_stream = await manager.__aenter__()
        except BaseException as error:
            end_failed(call, error, sent)
            raise
        call.deactivate()
        try:
            _adopt(message_stream, call, sent, is_async=True)
        except Exception:  # noqa: BLE001
            _logger.debug("spendwatch: could not follow a message stream", exc_info=True)
            call.succeed(Usage(input_tokens=request_input_estimate(sent), estimated=True))
        return message_stream

    async def __aexit__(self, exc_type, exc, traceback):
        return await self._self_entered.__aexit__(exc_type, exc, traceback)

    def _self_discard(self) -> None:
        # The async manager holds its request as a coroutine made by stream(): closed, it warns of nothing.
        request = getattr(self.__wrapped__, "_AsyncMessageStreamManager__api_request", None)
        close = getattr(request, "close", None)
        if close is not None:
            close()
