"""Transparent proxies over the SDK's ``Stream`` / ``AsyncStream`` that end the call's span exactly once.

The caller sees the same chunks, the same exceptions and the same object (``isinstance`` still holds: these are
``wrapt.ObjectProxy``). The call ends when the stream is exhausted, fails, is closed (also through the SDK's
``.stream()`` helpers), leaves its ``with`` block, or is garbage-collected half-read (leaving a ``for`` loop early
does not end it: the caller may read on). Per chunk we only look: one attribute read for usage and a counter; the
estimate, when no usage came, is worked out at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from wrapt import ObjectProxy

from spendwatch.instrumentation.background import run_with_each_flush, start_background_thread
from spendwatch.instrumentation.calls import Call, Usage
from spendwatch.instrumentation.errors import ReportedError
from spendwatch.instrumentation.openai_sdk.usage import (
    CHAT_USAGE_FIELDS,
    RESPONSES,
    estimate_missing,
    estimate_tokens,
    fill_tokens,
    items,
    request_text_length,
    response_identity,
    responses_usage,
    text,
)

__all__ = ["SyncStreamProxy", "AsyncStreamProxy", "end_abandoned", "end_helper_stream", "new_stream_state", "queue_end"]

_logger = logging.getLogger(__name__)

_RESPONSE_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ChatStreamState:
    """Chat and legacy completion chunks: usage arrives in a last chunk only with ``include_usage``."""

    __slots__ = ("kwargs", "usage", "first", "named", "last", "chunks")
    failure = None  # a chat stream's in-band error is raised by the SDK, never reported in a chunk

    def __init__(self, kwargs: dict) -> None:
        self.kwargs = kwargs
        self.usage = None
        self.first = None
        self.named = None  # the first chunk naming a model: its model and service tier are the response's
        self.last = None  # the last chunk without usage
        self.chunks = 0  # chunks without usage

    def observe(self, chunk: Any) -> None:
        # Per chunk only look: one attribute read. The SDK builds chunks without validation, so it may be missing.
        if self.first is None:
            self.first = chunk
        if self.named is None and getattr(chunk, "model", None):  # Azure opens with a filter chunk naming none
            self.named = chunk
        usage = getattr(chunk, "usage", None)
        if usage is None:
            self.last = chunk
            self.chunks += 1
        else:
            self.usage = usage

    def content_deltas(self) -> int:
        """Chunks with a delta of text or tool-call arguments, about one token each: every chunk but the role chunk
        that opens a stream and the finish chunk that closes it (an estimate, only needed when usage never came)."""
        deltas = self.chunks
        if self.first is not None and not _carries_content(self.first):
            deltas -= 1
        if self.last is not None and self.last is not self.first and not _carries_content(self.last):
            deltas -= 1
        return deltas

    def to_usage(self) -> Usage:
        usage = response_identity(self.named)
        missing = fill_tokens(usage, self.usage, CHAT_USAGE_FIELDS)
        estimate_input = lambda: estimate_tokens(request_text_length(self.kwargs))  # noqa: E731
        return estimate_missing(usage, missing, estimate_input, self.content_deltas)


def _carries_content(chunk: Any) -> bool:
    for choice in items(getattr(chunk, "choices", None)):
        delta = getattr(choice, "delta", None)
        if delta is None:  # legacy completions
            if getattr(choice, "text", None):
                return True
        elif getattr(delta, "content", None) or getattr(delta, "tool_calls", None):
            return True
    return False


class ResponsesStreamState:
    """Responses API events: the final ``response.completed`` event carries the whole response with usage."""

    __slots__ = ("kwargs", "response", "deltas", "model", "failure")

    def __init__(self, kwargs: dict) -> None:
        self.kwargs = kwargs
        self.response = None
        self.model = None
        self.deltas = 0
        self.failure = None  # the error a stream reported in an event: the SDK yields those, it does not raise

    def observe(self, event: Any) -> None:
        kind = text(getattr(event, "type", None))
        if kind is None:
            return
        if kind.endswith(".delta"):  # text, tool-call arguments, reasoning summaries, refusals: about a token each
            if kind != "response.audio.delta":  # audio bytes, not tokens
                self.deltas += 1
        elif kind in _RESPONSE_FINAL_EVENTS:
            self.response = getattr(event, "response", None)
            if kind == "response.failed":
                self.failure = _error_code(getattr(self.response, "error", None), "response.failed")
        elif kind == "response.created":
            self.model = text(getattr(getattr(event, "response", None), "model", None))
        elif kind == "error":
            self.failure = _error_code(event, "error")

    def to_usage(self) -> Usage:
        if self.response is not None:
            return responses_usage(self.response, self.kwargs)
        return Usage(
            response_model=self.model,
            input_tokens=estimate_tokens(request_text_length(self.kwargs)),
            output_tokens=self.deltas,
            estimated=True,
        )


def _error_code(error: Any, default: str) -> str:
    return text(getattr(error, "code", None)) or default


def new_stream_state(kind: str, kwargs: dict) -> ChatStreamState | ResponsesStreamState:
    return ResponsesStreamState(kwargs) if kind == RESPONSES else ChatStreamState(kwargs)


class _StreamProxyBase(ObjectProxy):
    def __init__(self, stream: Any, call: Call, state: ChatStreamState | ResponsesStreamState) -> None:
        super().__init__(stream)
        start_background_thread()  # ends the call within a second should the caller drop this half-read
        self._self_call = call
        self._self_state = state

    def _self_observe(self, item: Any) -> None:
        try:
            self._self_state.observe(item)
        except Exception:  # noqa: BLE001 - a malformed chunk must not break the caller's stream
            _logger.debug("spendwatch: could not read a stream chunk", exc_info=True)

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


def _end_call(call: Call, state: ChatStreamState | ResponsesStreamState, error: BaseException | None) -> None:
    try:
        usage = state.to_usage()
        if error is None and state.failure is not None:
            error = ReportedError(state.failure)
        if error is None:
            call.succeed(usage)
        else:
            call.fail(error, usage)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not end a stream's span", exc_info=True)


# Calls whose stream was garbage-collected unfinished. A finaliser runs inside the garbage collector, at whatever
# allocation triggered it, possibly while this very thread holds a lock that ending a call takes (the budget guard's,
# the journal's, a span processor's): ending the call there could deadlock, so the finaliser only queues it (an
# atomic append) and the background thread ends it within a second (or the exporter's shutdown, sooner).
_abandoned: deque[Callable[[], None]] = deque()


def queue_end(end: Callable[[], None]) -> None:
    _abandoned.append(end)


def end_abandoned() -> None:
    """End the calls queued by finalisers."""
    while _abandoned:
        try:
            end = _abandoned.popleft()
        except IndexError:  # another thread took the last one
            return
        try:
            end()
        except Exception:  # noqa: BLE001
            _logger.debug("spendwatch: could not end an abandoned call", exc_info=True)


run_with_each_flush(end_abandoned)


def end_helper_stream(helper: Any) -> None:
    """The SDK's ``.stream()`` helpers close the HTTP response themselves, past our proxy: end the call they read."""
    raw = getattr(helper, "_raw_stream", None)
    if isinstance(raw, _StreamProxyBase):
        raw._self_end()


class SyncStreamProxy(_StreamProxyBase):
    def __iter__(self):
        # A generator, as the SDK's own ``Stream.__iter__`` is: no Python ``__next__`` call through the proxy per
        # chunk. ``next(stream)`` still works, through ``__next__`` below.
        return self._self_iterate()

    def _self_iterate(self):
        observe = self._self_state.observe
        try:
            for item in self.__wrapped__:
                try:
                    observe(item)
                except Exception:  # noqa: BLE001 - a malformed chunk must not break the caller's stream
                    _logger.debug("spendwatch: could not read a stream chunk", exc_info=True)
                yield item
        except GeneratorExit:  # the caller left the loop: it may iterate on later, or close or drop the stream
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_end()

    def __next__(self):
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            self._self_end()
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_observe(item)
        return item

    def __enter__(self):
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            return self.__wrapped__.__exit__(exc_type, exc, traceback)
        finally:
            self._self_end(exc)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end()


class AsyncStreamProxy(_StreamProxyBase):
    def __aiter__(self):
        # An async generator, as the SDK's own ``AsyncStream.__aiter__`` is (``aclosing(aiter(stream))`` needs one).
        return self._self_iterate()

    async def _self_iterate(self):
        observe = self._self_state.observe
        try:
            async for item in self.__wrapped__:
                try:
                    observe(item)
                except Exception:  # noqa: BLE001 - a malformed chunk must not break the caller's stream
                    _logger.debug("spendwatch: could not read a stream chunk", exc_info=True)
                yield item
        except GeneratorExit:  # the caller left the loop: it may iterate on later, or close or drop the stream
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_end()

    async def __anext__(self):
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_end()
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_observe(item)
        return item

    async def __aenter__(self):
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, traceback):
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, traceback)
        finally:
            self._self_end(exc)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_end()

    async def aclose(self) -> None:  # openai 3.x's alias of close(), which contextlib.aclosing calls
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_end()
