"""One variant's worker process: ``python -m bench.worker VARIANT``, driven by JSON lines on stdin.

It sets the variant up, answers ``{"ok": ..., "versions": ..., "kinds": [...]}``, then serves commands, one JSON
reply each: ``{"cmd": "run", "calls": N, "warmup": W[, "kind": K]}`` times N calls of every kind (or of K) after W
warm-up calls and replies with the median nanoseconds, the spans exported per call and, for a variant that defers
work to a background thread, that work's nanoseconds per call (done and timed right after the batch);
``{"cmd": "mem", "calls": N}`` replies with tracemalloc's peak bytes during one call and the bytes still held per
call after N; ``{"cmd": "quit"}`` ends it.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from importlib.metadata import version
from time import perf_counter_ns

from bench import transport, variants

_loop = asyncio.new_event_loop()
_replies = sys.stdout
_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say this is a test"},
]


def call_kinds() -> dict[str, Callable[[], object]]:
    """Each kind's call: a plain function, or a coroutine function for the async client."""
    client, aclient = transport.make_clients()
    chat = client.chat.completions

    def stream() -> None:
        chunks = chat.create(
            model=transport.CHAT_MODEL, messages=_MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        for _ in chunks:
            pass

    async def chat_async() -> object:
        return await aclient.chat.completions.create(model=transport.CHAT_MODEL, messages=_MESSAGES)

    return {
        "chat": lambda: chat.create(model=transport.CHAT_MODEL, messages=_MESSAGES),
        "chat async": chat_async,
        "chat stream": stream,
        "responses": lambda: client.responses.create(
            model=transport.CHAT_MODEL, instructions="You are a helpful assistant.", input="Say this is a test"
        ),
        "embeddings": lambda: client.embeddings.create(model=transport.EMBEDDING_MODEL, input="Say this is a test"),
    }


def sample(call: Callable[[], object], calls: int) -> list[int]:
    """Nanoseconds per call; async calls are timed inside one event loop, so the loop's start is not counted."""
    if inspect.iscoroutinefunction(call):
        return _loop.run_until_complete(_sample_async(call, calls))
    samples = []
    for _ in range(calls):
        start = perf_counter_ns()
        call()
        samples.append(perf_counter_ns() - start)
    return samples


async def _sample_async(call, calls: int) -> list[int]:
    samples = []
    for _ in range(calls):
        start = perf_counter_ns()
        await call()
        samples.append(perf_counter_ns() - start)
    return samples


def _run(kinds, exporter: variants.CountingSpanExporter, calls: int, warmup: int, deferred) -> dict:
    medians, spans, deferred_ns = {}, {}, {}
    for kind, call in kinds.items():
        sample(call, warmup)
        if deferred is not None:
            deferred()  # the warm-up's share
        gc.collect()
        before = exporter.spans
        medians[kind] = int(statistics.median(sample(call, calls)))
        spans[kind] = (exporter.spans - before) / calls
        if deferred is not None:
            start = perf_counter_ns()
            done = deferred()  # what the background thread has not done yet of this batch's work
            if done:
                deferred_ns[kind] = (perf_counter_ns() - start) // done
    return {"median_ns": medians, "spans_per_call": spans, "deferred_ns": deferred_ns}


def _memory(kinds, calls: int) -> dict:
    """Per kind: the median of tracemalloc's peak over one call, and the bytes still held per call after ``calls``."""
    peaks, retained = {}, {}
    tracemalloc.start()
    for kind, call in kinds.items():
        sample(call, 1)
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        samples = []
        for _ in range(calls):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            sample(call, 1)
            samples.append(tracemalloc.get_traced_memory()[1] - base)
        gc.collect()
        peaks[kind] = int(statistics.median(samples))
        retained[kind] = (tracemalloc.get_traced_memory()[0] - start) // calls
    tracemalloc.stop()
    return {"peak_bytes": peaks, "retained_bytes": retained}


def versions(variant_version: str) -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "openai": version("openai"),
        transport.http_library(): version(transport.http_library()),
        "opentelemetry-sdk": version("opentelemetry-sdk"),
        "variant": variant_version,
    }


def _reply(obj: dict) -> None:
    _replies.write(json.dumps(obj) + "\n")
    _replies.flush()


def main(name: str) -> None:
    global _replies
    # Replies get the real stdout to themselves; anything a library prints goes to stderr instead.
    _replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        exporter, variant_version = variants.setup(name)
    except variants.Unavailable as exc:
        _reply({"ok": False, "error": str(exc)})
        return
    kinds = call_kinds()
    _reply({"ok": True, "versions": versions(variant_version), "kinds": list(kinds)})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "run":
            # One kind per command when asked ("kind"), so the orchestrator can interleave the variants per kind.
            chosen = {command["kind"]: kinds[command["kind"]]} if "kind" in command else kinds
            _reply(_run(chosen, exporter, command["calls"], command["warmup"], variants.DEFERRED.get(name)))
        elif command["cmd"] == "mem":
            _reply(_memory(kinds, command["calls"]))
        else:
            break


if __name__ == "__main__":
    main(sys.argv[1])
