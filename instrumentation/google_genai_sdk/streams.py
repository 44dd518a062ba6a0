"""Streamed ``generate_content`` responses: the caller's chunks pass through untouched while the call is read.

The SDK's one streamed request is a generator (an async generator behind a coroutine on ``client.aio``) that its
public ``generate_content_stream`` drives; ours wraps it chunk for chunk, so the caller sees the same chunks and the
same exceptions. Gemini puts the usage on the last chunk (Vertex AI on every chunk, growing): the last chunk that
carries token counts is the call's usage. The call ends when the stream is exhausted or fails; a stream closed early
or dropped half-read raises ``GeneratorExit`` here, possibly inside the garbage collector, so its call is ended
later from what was seen (see ``openai_sdk.streams.queue_end``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from spendwatch.instrumentation.background import start_background_thread
from spendwatch.instrumentation.calls import Call, Usage
from spendwatch.instrumentation.google_genai_sdk.usage import request_text_length, usage_from_metadata
from spendwatch.instrumentation.openai_sdk.streams import queue_end
from spendwatch.instrumentation.openai_sdk.usage import estimate_tokens, items, text

__all__ = ["StreamState", "iterate", "iterate_async"]

_logger = logging.getLogger(__name__)


class StreamState:
    """What a stream showed so far: the last usage metadata with token counts, and its text, for an estimate."""

    __slots__ = ("kwargs", "metadata", "model", "characters")

    def __init__(self, kwargs: dict) -> None:
        self.kwargs = kwargs
        self.metadata = None
        self.model = None
        self.characters = 0  # text received, for an estimate should no chunk carry usage

    def observe(self, chunk: Any) -> None:
        metadata = chunk.usage_metadata
        if metadata is not None and (
            metadata.prompt_token_count is not None or metadata.candidates_token_count is not None
        ):
            self.metadata = metadata
        if self.model is None:
            self.model = chunk.model_version
        for candidate in items(chunk.candidates):
            for part in items(getattr(getattr(candidate, "content", None), "parts", None)):
                self.characters += len(text(getattr(part, "text", None)) or "")

    def to_usage(self) -> Usage:
        model = text(self.model)
        usage = usage_from_metadata(self.metadata, model) if self.metadata is not None else None
        if usage is not None:
            return usage
        return Usage(
            input_tokens=estimate_tokens(request_text_length(self.kwargs)),
            output_tokens=estimate_tokens(self.characters),
            response_model=model,
            estimated=True,
        )


def _observe(state: StreamState, chunk: Any) -> None:
    try:
        state.observe(chunk)
    except Exception:  # noqa: BLE001 - a malformed chunk must not break the caller's stream
        _logger.debug("spendwatch: could not read a stream chunk", exc_info=True)


def end_stream(call: Call, state: StreamState, error: BaseException | None) -> None:
    """End ``call`` from what ``state`` saw; never raises."""
    try:
        if error is None:
            call.succeed(state.to_usage())
        else:
            call.fail(error, state.to_usage())
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not end a stream's span", exc_info=True)


def _end_later(call: Call, state: StreamState) -> None:
    start_background_thread()
    queue_end(lambda: end_stream(call, state, None))


def iterate(call: Call, state: StreamState, stream: Iterator[Any]) -> Iterator[Any]:
    """Yield ``stream``'s chunks and end ``call`` with it. The span is current while the request is sent, which
    happens at the first chunk."""
    try:
        call.activate()
        try:
            for chunk in stream:
                call.deactivate()  # a no-op after the first chunk
                _observe(state, chunk)
                yield chunk
        finally:
            call.deactivate()
    except GeneratorExit:  # closed early or dropped: maybe inside the garbage collector, so ended later
        _end_later(call, state)
        raise
    except BaseException as error:
        end_stream(call, state, error)
        raise
    end_stream(call, state, None)


async def iterate_async(call: Call, state: StreamState, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """:func:`iterate` for ``client.aio``, whose request was already sent when the stream was handed over."""
    try:
        async for chunk in stream:
            _observe(state, chunk)
            yield chunk
    except GeneratorExit:
        _end_later(call, state)
        raise
    except BaseException as error:
        end_stream(call, state, error)
        raise
    end_stream(call, state, None)
