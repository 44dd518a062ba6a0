"""Responses the caller reads later: ``messages.with_raw_response`` and ``messages.with_streaming_response``.

The caller gets the SDK's ``APIResponse`` behind a transparent proxy whose ``parse()`` ends the call from what it
returns (a stream goes behind our stream proxy); a response closed or dropped unparsed ends the call from its request
alone, flagged as estimated.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from anthropic import AsyncStream, Stream
from wrapt import ObjectProxy

from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.openai_sdk.streams import queue_end

from .failures import end_failed
from .streams import proxy_stream
from .usage import usage_from_message, usage_from_request

__all__ = ["AsyncResponseProxy", "ResponseProxy", "end_unread"]

_logger = logging.getLogger(__name__)


class _ResponseProxyBase(ObjectProxy):
    def __init__(self, response: Any, call: Call, kwargs: dict) -> None:
        super().__init__(response)
        start_background_thread()  # ends the call within a second should the caller drop this unparsed
        self._self_call = call
        self._self_kwargs = kwargs
        self._self_stream = None

    def _self_adopt(self, parsed: Any) -> Any:
        call, self._self_call = self._self_call, None
        if call is not None:
            try:
                if isinstance(parsed, Stream | AsyncStream):
                    self._self_stream = proxy_stream(parsed, call, self._self_kwargs, isinstance(parsed, AsyncStream))
                else:
                    call.succeed(usage_from_message(parsed, self._self_kwargs))
            except Exception:  # noqa: BLE001
                _logger.debug("spendwatch: could not read a parsed response", exc_info=True)
                end_unread(call, self._self_kwargs)
        return self._self_stream if self._self_stream is not None else parsed

    def _self_fail(self, error: BaseException) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            end_failed(call, error, self._self_kwargs, sent=True)

    def _self_end_unparsed(self) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            end_unread(call, self._self_kwargs)

    def __del__(self) -> None:
        # Never parsed: all we know is what the request carried. Ended later: a finaliser must not end a call.
        with contextlib.suppress(Exception):
            call, self._self_call = self._self_call, None
            if call is not None:
                queue_end(lambda kwargs=self._self_kwargs: end_unread(call, kwargs))


class ResponseProxy(_ResponseProxyBase):
    def parse(self, *args, **kwargs):
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except Exception as error:
            self._self_fail(error)
            raise
        return self._self_adopt(parsed)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end_unparsed()


class AsyncResponseProxy(_ResponseProxyBase):
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


def end_unread(call: Call, kwargs: dict) -> None:
    """End ``call`` from the request alone (its answer was never read); never raises."""
    try:
        call.succeed(usage_from_request(kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record an unread call", exc_info=True)
