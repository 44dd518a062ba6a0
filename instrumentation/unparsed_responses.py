"""A response the caller parses later, behind a transparent proxy: shared by the openai and anthropic SDKs.

Both SDKs hand ``with_raw_response`` and ``with_streaming_response`` callers an ``APIResponse`` whose body is read
by ``parse()``. The proxy ends the call from what ``parse()`` returns, through the SDK's own ``_self_adopt``. A
``parse()`` that raises ends the call as failed, because the answer had arrived. A response closed or dropped
unparsed ends the call from its request alone.

An SDK subclasses :class:`UnparsedResponseProxy` with its three hooks, and adds :class:`ClosesUnparsed` (sync) or
:class:`AsyncParses` (async) in front for its ``parse()`` and ``close()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from wrapt import ObjectProxy

from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.openai_sdk.streams import queue_end

__all__ = ["AsyncParses", "ClosesUnparsed", "UnparsedResponseProxy"]


class UnparsedResponseProxy(ObjectProxy):
    """``response`` behind a proxy that ends ``call`` once, from the parsed body or else from the request."""

    def __init__(self, response: Any, call: Call, kwargs: dict) -> None:
        super().__init__(response)
        start_background_thread()  # ends the call within a second should the caller drop this unparsed
        self._self_call = call
        self._self_kwargs = kwargs
        self._self_stream = None

    def _self_adopt(self, parsed: Any) -> Any:
        """End the call from ``parsed`` (or hand it to a stream proxy); returns what the caller gets."""
        raise NotImplementedError

    def _self_end_failed(self, call: Call, error: BaseException) -> None:
        raise NotImplementedError

    def _self_unread_end(self, call: Call) -> Callable[[], None]:
        """What ends ``call`` from its request alone. It must not hold this proxy, as a finaliser queues it."""
        raise NotImplementedError

    def _self_fail(self, error: BaseException) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            self._self_end_failed(call, error)

    def _self_end_unparsed(self) -> None:
        call, self._self_call = self._self_call, None
        if call is not None:
            self._self_unread_end(call)()

    def parse(self, *args, **kwargs):
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except Exception as error:
            self._self_fail(error)  # the answer had arrived: e.g. its body cut short, or LengthFinishReasonError
            raise
        return self._self_adopt(parsed)

    def __del__(self) -> None:
        # Never parsed, so never read: all we know is what the request carried. Ended later, as a finaliser must not
        # end a call (see openai_sdk.streams.queue_end).
        with contextlib.suppress(Exception):  # a finaliser must stay silent
            call, self._self_call = self._self_call, None
            if call is not None:
                queue_end(self._self_unread_end(call))


class ClosesUnparsed:
    """A sync response whose ``close()`` (its ``with`` block's end) ends a call still unparsed."""

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end_unparsed()


class AsyncParses:
    """An async response: ``parse()`` and ``close()`` are coroutines."""

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
