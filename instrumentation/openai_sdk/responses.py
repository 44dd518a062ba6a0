"""Responses the caller reads later: ``with_raw_response`` and ``with_streaming_response``.

The caller gets the SDK's response behind a transparent proxy whose ``parse()`` ends the call from what it returns
(a stream goes behind our stream proxy); a response dropped unparsed ends the call from its request alone.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from openai import AsyncStream, Stream
from openai._legacy_response import LegacyAPIResponse
from wrapt import ObjectProxy

from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.openai_sdk.background_responses import remember
from spendwatch.instrumentation.openai_sdk.failures import end_failed
from spendwatch.instrumentation.openai_sdk.media import raw_usage, request_usage, stream_state
from spendwatch.instrumentation.openai_sdk.streams import AsyncStreamProxy, SyncStreamProxy, queue_end

__all__ = [
    "AsyncStreamedResponseProxy",
    "RawStreamResponseProxy",
    "StreamedResponseProxy",
    "end_unread",
    "finish_raw",
]

_logger = logging.getLogger(__name__)


def finish_raw(call: Call, kind: str, raw: LegacyAPIResponse, kwargs: dict) -> Any:
    """``with_raw_response``: a plain response is parsed now (the SDK caches the parse, so the caller's own
    ``parse()`` returns the very same object); a stream is only reachable through ``parse()``, so the caller gets
    a proxy whose ``parse()`` hands out the stream behind our stream proxy."""
    if kwargs.get("stream") is True:
        return RawStreamResponseProxy(raw, call, kind, kwargs)
    try:
        parsed = raw.parse()
    except Exception as error:  # noqa: BLE001 - the caller's own parse() raises it: the call failed, maybe billed
        end_failed(call, error, kind, kwargs, sent=True)
        return raw
    usage = raw_usage(kind, parsed, kwargs, raw.headers)
    call.succeed(usage)
    if kwargs.get("background") is True:
        remember(call, parsed, usage)  # a background response: its output is counted when its result is read
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
                    state = stream_state(self._self_kind, self._self_kwargs)
                    proxy_type = AsyncStreamProxy if isinstance(parsed, AsyncStream) else SyncStreamProxy
                    self._self_stream, self._self_call = proxy_type(parsed, call, state), None
                else:
                    self._self_call = None
                    headers = self.__wrapped__.headers
                    call.succeed(raw_usage(self._self_kind, parsed, self._self_kwargs, headers))
            except Exception:  # noqa: BLE001
                _logger.debug("spendwatch: could not read a parsed response", exc_info=True)
                end_unread(call, self._self_kind, self._self_kwargs)  # counted from the request, as patch._finish does
        return self._self_stream if self._self_stream is not None else parsed

    def _self_fail(self, error: BaseException) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            end_failed(call, error, self._self_kind, self._self_kwargs, sent=True)

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
            end_unread(call, self._self_kind, self._self_kwargs)

    def __del__(self) -> None:
        # Never parsed, so never read: all we know is what the request carried. Ended later, as a finaliser must not
        # end a call (see streams.queue_end).
        with contextlib.suppress(Exception):  # a finaliser must stay silent
            call, self._self_call = self._self_call, None
            if call is not None:
                queue_end(lambda kind=self._self_kind, kwargs=self._self_kwargs: end_unread(call, kind, kwargs))


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


def end_unread(call: Call, kind: str, kwargs: dict) -> None:
    """End ``call`` from the request alone (its answer was never read, e.g. speech streamed to a file); never
    raises."""
    try:
        call.succeed(request_usage(kind, kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record an unread call", exc_info=True)
