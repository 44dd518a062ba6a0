"""A transparent proxy over botocore's ``EventStream`` (ConverseStream's ``stream``, InvokeModelWithResponseStream's
``body``) that ends the call's span exactly once.

The caller iterates the same parsed events and gets the same exceptions (``isinstance`` still holds: a
``wrapt.ObjectProxy``). The call ends when the stream is read to the end, fails (an ``EventStreamError`` such as a
``modelStreamErrorException``), is closed, or is garbage-collected half-read. Per event we only look: one dict lookup
(ConverseStream) or one substring test on the chunk's bytes (InvokeModel streams); JSON is parsed once, at the end.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from wrapt import ObjectProxy

from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.bedrock_sdk.usage import (
    ANTHROPIC_FIELDS,
    HEADER_FIELDS,
    METRICS_FIELDS,
    body_json,
    converse_usage,
    request_estimate,
    usage_from_fields,
)
from spendwatch.instrumentation.calls import Call, Usage
from spendwatch.instrumentation.openai_sdk.streams import queue_end

__all__ = ["ConverseStreamState", "EventStreamProxy", "InvokeStreamState"]

_logger = logging.getLogger(__name__)

_METRICS_KEY = "amazon-bedrock-invocationMetrics"
_METRICS_MARK = _METRICS_KEY.encode()


class ConverseStreamState:
    """ConverseStream events: the ``metadata`` event, the last one, carries the usage."""

    __slots__ = ("api_params", "metadata", "deltas")

    def __init__(self, api_params: dict) -> None:
        self.api_params = api_params
        self.metadata = None
        self.deltas = 0

    def observe(self, event: Any) -> None:
        if "contentBlockDelta" in event:
            self.deltas += 1
        elif "metadata" in event:
            self.metadata = event["metadata"]

    def to_usage(self) -> Usage:
        # The metadata event has a Converse answer's fields; without it (a stream closed or broken before it) the
        # output is the deltas seen, about a token each.
        if self.metadata is None:
            usage = request_estimate(self.api_params)
        else:
            usage = converse_usage(self.metadata, self.api_params)
        if usage.estimated and not usage.output_tokens:
            usage.output_tokens = self.deltas
        return usage


class InvokeStreamState:
    """InvokeModelWithResponseStream chunks: the last one carries ``amazon-bedrock-invocationMetrics``; Anthropic's
    first (``message_start``) its cache reads and writes."""

    __slots__ = ("api_params", "headers", "first", "metrics", "chunks")

    def __init__(self, api_params: dict, headers: dict) -> None:
        self.api_params = api_params
        self.headers = headers
        self.first = None
        self.metrics = None
        self.chunks = 0

    def observe(self, event: Any) -> None:
        self.chunks += 1
        chunk = event.get("chunk")
        if chunk is None:
            return
        data = chunk.get("bytes")
        if self.first is None:
            self.first = data
        if _METRICS_MARK in data:
            self.metrics = data

    def to_usage(self) -> Usage:
        last = body_json(self.metrics) if self.metrics is not None else None
        metrics = last.get(_METRICS_KEY) if isinstance(last, dict) else None
        usage = usage_from_fields(metrics, METRICS_FIELDS)
        if usage is not None and not (usage.cache_read_tokens or usage.cache_write_tokens):
            _add_anthropic_cache(usage, body_json(self.first) if self.first is not None else None)
        if usage is None:
            usage = usage_from_fields(self.headers, HEADER_FIELDS)
        if usage is None:  # closed or broken before the last chunk: the chunks seen, about a token each
            usage = request_estimate(self.api_params)
            usage.output_tokens = self.chunks
        return usage


def _add_anthropic_cache(usage: Usage, start: Any) -> None:
    """Anthropic's ``message_start`` reports the cache reads and writes that the invocation metrics may leave out."""
    if not isinstance(start, dict) or start.get("type") != "message_start":
        return
    message = start.get("message")
    raw = message.get("usage") if isinstance(message, dict) else None
    cached = usage_from_fields(raw, ANTHROPIC_FIELDS)
    if cached is not None and (cached.cache_read_tokens or cached.cache_write_tokens):
        usage.cache_read_tokens, usage.cache_write_tokens = cached.cache_read_tokens, cached.cache_write_tokens
        usage.input_tokens += cached.cache_read_tokens + cached.cache_write_tokens


class EventStreamProxy(ObjectProxy):
    def __init__(self, stream: Any, call: Call, state: ConverseStreamState | InvokeStreamState) -> None:
        super().__init__(stream)
        start_background_thread()  # ends the call within a second should the caller drop this half-read
        self._self_call = call
        self._self_state = state

    def __iter__(self):
        # A generator, as botocore's own ``EventStream.__iter__`` is: no Python call through the proxy per event.
        return self._self_iterate()

    def _self_iterate(self):
        observe = self._self_state.observe
        try:
            for event in self.__wrapped__:
                try:
                    observe(event)
                except Exception:  # noqa: BLE001 - a malformed event must not break the caller's stream
                    _logger.debug("spendwatch: could not read a stream event", exc_info=True)
                yield event
        except GeneratorExit:  # the caller left the loop: it may iterate on later, or close or drop the stream
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_end()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end()

    def _self_end(self, error: BaseException | None = None) -> None:
        call = self._self_call
        if call is None:
            return
        self._self_call = None
        _end_call(call, self._self_state, error)

    def __del__(self) -> None:
        # Abandoned half-read: count what was seen so far rather than lose the call, but later (see queue_end).
        with contextlib.suppress(Exception):  # a finaliser must stay silent (half-built proxy, interpreter exit)
            call, self._self_call = self._self_call, None
            if call is not None:
                queue_end(lambda state=self._self_state: _end_call(call, state, None))


def _end_call(call: Call, state: ConverseStreamState | InvokeStreamState, error: BaseException | None) -> None:
    try:
        usage = state.to_usage()
        if error is None:
            call.succeed(usage)
        else:
            call.fail(error, usage)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not end a stream's span", exc_info=True)
