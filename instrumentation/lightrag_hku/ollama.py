"""The Ollama calls LightRAG's Ollama binding makes (``lightrag.llm.ollama``: ``ollama.AsyncClient.chat``/``embed``).

An Ollama model is self-hosted: its tokens are counted (``prompt_eval_count`` in, ``eval_count`` out) under provider
``ollama``, and only a price override prices it, so without one the call is unpriced (counted, never $0). DESIGN.md
names no Ollama entry point, so the LightRAG instrumentor patches ``ollama.AsyncClient`` when ``lightrag.llm.ollama``
is imported; from then on every chat/embed call of an ``ollama.AsyncClient`` in the process is recorded, LightRAG's
or not. Stages and documents reach these calls through the context, as they reach every instrumentor's.

A streamed chat is passed through chunk by chunk; the usage rides on its last (``done``) chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from spendwatch.instrumentation.calls import Call, CallRecorder, Usage, safe_instrumentation

__all__ = ["PROVIDER", "TARGETS", "api_wrapper"]

PROVIDER = "ollama"
# (attribute of ollama's client module, the GenAI operation it is)
TARGETS = (("AsyncClient.chat", "chat"), ("AsyncClient.embed", "embeddings"))


def usage_of(response: Any) -> Usage:
    """Ollama's counters; one it leaves out counts as zero (a cached prompt reports no prompt_eval_count)."""
    return Usage(
        input_tokens=int(getattr(response, "prompt_eval_count", None) or 0),
        output_tokens=int(getattr(response, "eval_count", None) or 0),
        response_model=getattr(response, "model", None) or None,
    )


def _start(recorder: CallRecorder, operation: str, args: tuple, kwargs: dict) -> Call | None:
    with safe_instrumentation("start an Ollama call"):
        model = kwargs.get("model", args[0] if args else "")
        call = recorder.start(operation, PROVIDER, str(model or "unknown"))
        call.activate()
        return call
    return None


def _end(call: Call, usage: Usage | None, error: BaseException | None = None) -> None:
    with safe_instrumentation("record an Ollama call"):
        if error is None:
            call.succeed(usage or Usage(estimated=True))  # no counters seen (a stream closed early): flagged
        else:
            call.fail(error, usage)


def api_wrapper(recorder: CallRecorder, operation: str):
    """A wrapt wrapper for an ``ollama.AsyncClient`` method doing ``operation``."""

    async def wrapper(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled() or not recorder.active:
            return await wrapped(*args, **kwargs)
        call = _start(recorder, operation, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _end(call, None, error)
            raise
        finally:
            with safe_instrumentation("detach an Ollama call's span"):
                call.deactivate()
        if kwargs.get("stream"):
            return _streamed(result, call)
        usage = None
        with safe_instrumentation("read an Ollama response's usage"):
            usage = usage_of(result)
        _end(call, usage)
        return result

    return wrapper


async def _streamed(chunks: AsyncIterator, call: Call) -> AsyncIterator:
    """``chunks`` unchanged; the call ends when they do (read to the end, broken, or closed early)."""
    usage = None
    try:
        async for chunk in chunks:
            if getattr(chunk, "done", False):
                with safe_instrumentation("read an Ollama stream's usage"):
                    usage = usage_of(chunk)
            yield chunk
    except GeneratorExit:  # closed early by the caller: what the server counted so far is all there is
        _end(call, usage)
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # as closing ollama's own generator would: its HTTP response is released
        raise
    except BaseException as error:
        _end(call, usage, error)
        raise
    _end(call, usage)
