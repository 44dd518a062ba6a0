"""Responses the caller reads later: ``with_raw_response`` and ``with_streaming_response``.

The caller gets the SDK's response behind a transparent proxy whose ``parse()`` ends the call from what it returns
(a stream goes behind our stream proxy); a response dropped unparsed ends the call from its request alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from openai import AsyncStream, Stream
from openai._legacy_response import LegacyAPIResponse

from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.openai_sdk.background_responses import remember
from spendwatch.instrumentation.openai_sdk.failures import end_failed
from spendwatch.instrumentation.openai_sdk.media import raw_usage, request_usage, stream_state
from spendwatch.instrumentation.openai_sdk.streams import AsyncStreamProxy, SyncStreamProxy
from spendwatch.instrumentation.unparsed_responses import AsyncParses, ClosesUnparsed, UnparsedResponseProxy

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


class _UnparsedResponseProxy(UnparsedResponseProxy):
    """A response whose body the caller parses later: its ``parse()`` ends the call from what it returns (a stream
    goes behind our stream proxy); dropped unparsed, the call ends from the request alone."""

    def __init__(self, response: Any, call: Call, kind: str, kwargs: dict) -> None:
        super().__init__(response, call, kwargs)
        self._self_kind = kind

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

    def _self_end_failed(self, call: Call, error: BaseException) -> None:
        end_failed(call, error, self._self_kind, self._self_kwargs, sent=True)

    def _self_unread_end(self, call: Call) -> Callable[[], None]:
        return functools.partial(end_unread, call, self._self_kind, self._self_kwargs)


class RawStreamResponseProxy(_UnparsedResponseProxy):
    """``with_raw_response`` on a stream: the stream is only reachable through ``parse()``."""


class StreamedResponseProxy(ClosesUnparsed, _UnparsedResponseProxy):
    """``with_streaming_response``: the body is read when the caller parses it; its ``with`` block closes it."""


class AsyncStreamedResponseProxy(AsyncParses, _UnparsedResponseProxy):
    """``with_streaming_response`` on an async client: ``parse()`` and ``close()`` are coroutines."""


def end_unread(call: Call, kind: str, kwargs: dict) -> None:
    """End ``call`` from the request alone (its answer was never read, e.g. speech streamed to a file); never
    raises."""
    try:
        call.succeed(request_usage(kind, kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record an unread call", exc_info=True)
