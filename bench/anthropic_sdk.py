"""``python -m bench.anthropic_sdk [--quick] [--calls N] [--variants a,b]``: the CPU instructions each Anthropic
instrumentation adds to an ``anthropic`` SDK call, counted by valgrind's callgrind exactly as ``bench.instructions``
counts OpenAI calls (see ``bench.sdk_instructions``, which does the counting).

The SDK answers through its own HTTP library's mock transport from canned bodies shaped like the recorded ones
(``../shared/fixtures/anthropic-cassettes``, usage included): a Message, and a stream of 24 text deltas read to the
end through ``messages.create(stream=True)`` and through the ``messages.stream()`` helper. Every variant gets the
OpenTelemetry SDK of ``bench.variants`` (a span exporter that only counts), so the SDK's own span is made in every
variant, bare included. The peer: OpenLLMetry's ``opentelemetry-instrumentation-anthropic`` (with and without content
on its spans). OpenLIT is not one: it requires ``anthropic<1`` and ``openai<3`` (installing it downgrades both).
The report goes to ``bench/results/anthropic-instructions.md``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from bench import sdk_instructions, variants
from bench.sdk_instructions import OURS, SdkBench, instrumentor_variant, version_of

__all__ = ["BENCH", "DELTAS", "REQUEST", "call_kinds", "main", "make_client"]

MODEL = "claude-sonnet-4-20250514"
DELTAS = 24
REQUEST = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Say this is a test"}]}
_ANSWER = (
    "This is a test of a streamed answer that keeps going word by word until it has sent twenty four text deltas in all"
)
_USAGE = {
    "input_tokens": 13,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "output_tokens": DELTAS,
    "service_tier": "standard",
}
BARE, CONTROL = variants.BARE, variants.CONTROL


# --- canned answers ------------------------------------------------------------------------------------------------


def _message(text: str, usage: dict) -> dict:
    return {
        "model": MODEL,
        "id": "msg_01VY8H3oPFs4WWVnJXFDxNhU",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _stream_body() -> bytes:
    words = _ANSWER.split(" ")
    assert len(words) == DELTAS, len(words)
    start = {**_message("", {**_USAGE, "output_tokens": 2}), "content": [], "stop_reason": None}
    events = [("message_start", {"type": "message_start", "message": start})]
    events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": _text("")}))
    events.append(("ping", {"type": "ping"}))
    for i, word in enumerate(words):
        delta = {"type": "text_delta", "text": (" " if i else "") + word}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    final = {key: _USAGE[key] for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    done = {"stop_reason": "end_turn", "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": done, "usage": final | {"output_tokens": 24}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def make_client():
    import anthropic
    from anthropic import _base_client

    httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx
    message = json.dumps(_message(_ANSWER, _USAGE)).encode()
    stream = _stream_body()
    json_headers = {"content-type": "application/json", "request-id": "req_bench"}
    sse_headers = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_bench"}

    def handle(request):
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, headers=sse_headers, content=stream)
        return httpx.Response(200, headers=json_headers, content=message)

    http_client = httpx.Client(transport=httpx.MockTransport(handle))
    return anthropic.Anthropic(
        api_key="sk-ant-bench", base_url="http://bench.invalid", max_retries=0, http_client=http_client
    )


def call_kinds() -> dict[str, Callable[[], object]]:
    client = make_client()
    messages = client.messages

    def create() -> object:
        return messages.create(**REQUEST)

    def stream() -> None:
        for _ in messages.create(**REQUEST, stream=True):
            pass

    def helper() -> None:
        with messages.stream(**REQUEST) as events:
            for _ in events:
                pass

    return {"messages": create, "messages stream": stream, "stream helper": helper}


# --- the variants --------------------------------------------------------------------------------------------------

_OPENLLMETRY = (
    "opentelemetry.instrumentation.anthropic",
    "AnthropicInstrumentor",
    "opentelemetry-instrumentation-anthropic",
)
BENCH = SdkBench(
    module="bench.anthropic_sdk",
    title="the bare Anthropic SDK",
    library="anthropic",
    call_kinds=call_kinds,
    variants={
        BARE: lambda: version_of("anthropic"),
        CONTROL: lambda: version_of("anthropic"),
        "openllmetry-anthropic": instrumentor_variant(*_OPENLLMETRY),  # records prompts and completions by default
        "openllmetry-anthropic-nocontent": instrumentor_variant(*_OPENLLMETRY, TRACELOOP_TRACE_CONTENT="false"),
        OURS: instrumentor_variant("spendwatch.instrumentation.anthropic_sdk", "AnthropicInstrumentor", "spendwatch"),
    },
    peers=("openllmetry-anthropic", "openllmetry-anthropic-nocontent"),
    about=f"Each stream is {DELTAS} text deltas (30 events) read to the end; the SDK's own span is made in every "
    "variant, bare included.",
    report="anthropic-instructions.md",
    private_env=("ANTHROPIC_",),
)


def main(argv: list[str]) -> None:
    sdk_instructions.main(BENCH, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
