"""``python -m bench.google_genai [--quick] [--calls N]``: the CPU instructions each google-genai instrumentation adds
to a ``generate_content`` call and to a stream, side by side with the peers that install (see
:mod:`bench.sdk_instructions` for the count).

The real SDK is served by an in-process mock transport: canned Gemini API bodies with usage, built once, so each call
costs the SDK's parsing and the instrumentation's work, never a socket. Peers: contrib's
``opentelemetry-instrumentation-google-genai`` and OpenLLMetry's ``-google-generativeai`` (which covers google-genai
too). OpenLIT is left out, as for OpenAI (see ``bench/variants.py``). The report goes to
``bench/results/google-genai-instructions.md``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from bench import sdk_instructions
from bench.sdk_instructions import BARE, CONTROL, OURS, SdkBench, instrumentor_variant, version_of

__all__ = ["BENCH", "MODEL", "call_kinds", "main", "make_client"]

MODEL = "gemini-2.0-flash"
CHUNKS = 24
_PROMPT = "Say this is a test"
_USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": CHUNKS,
    "totalTokenCount": 12 + CHUNKS,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": CHUNKS}],
}


def _response(text: str, usage: dict | None) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0, "finishReason": "STOP"}
    body = {"candidates": [candidate], "modelVersion": MODEL, "responseId": "bench"}
    if usage:
        body["usageMetadata"] = usage
    return body


def _bodies() -> tuple[bytes, bytes]:
    """The whole answer, and the same as an SSE stream of one word a chunk with the usage on the last one."""
    words = [f"word{index}" for index in range(CHUNKS)]
    whole = json.dumps(_response(" ".join(words), _USAGE)).encode()
    events = [_response(word, _USAGE if index == CHUNKS - 1 else None) for index, word in enumerate(words)]
    return whole, b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in events)


def make_client():
    """A Gemini API client whose HTTP requests are answered in process by canned bodies."""
    import httpx
    from google import genai

    whole, stream = _bodies()

    def answer(request: httpx.Request) -> httpx.Response:
        if b"streamGenerateContent" in request.url.raw_path:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=whole)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    options = {"base_url": "https://generativelanguage.googleapis.com/", "httpx_client": http}
    return genai.Client(api_key="bench-key", http_options=options)


def call_kinds() -> dict[str, Callable[[], object]]:
    models = make_client().models

    def generate() -> object:
        return models.generate_content(model=MODEL, contents=_PROMPT)

    def stream() -> None:
        for _ in models.generate_content_stream(model=MODEL, contents=_PROMPT):
            pass

    return {"generate_content": generate, "generate_content_stream": stream}


_OFFICIAL = (
    "opentelemetry.instrumentation.google_genai",
    "GoogleGenAiSdkInstrumentor",
    "opentelemetry-instrumentation-google-genai",
)
_OPENLLMETRY = (
    "opentelemetry.instrumentation.google_generativeai",
    "GoogleGenerativeAiInstrumentor",
    "opentelemetry-instrumentation-google-generativeai",
)
_SPENDWATCH = ("spendwatch.instrumentation.google_genai_sdk", "GoogleGenAIInstrumentor", "spendwatch")
BENCH = SdkBench(
    module="bench.google_genai",
    title="the bare google-genai SDK",
    library="google-genai",
    call_kinds=call_kinds,
    variants={
        BARE: lambda: version_of("google-genai"),
        CONTROL: lambda: version_of("google-genai"),
        "contrib-google-genai": instrumentor_variant(*_OFFICIAL),  # the official one; no content by default
        "openllmetry-google": instrumentor_variant(*_OPENLLMETRY),  # records prompts and completions by default
        "openllmetry-google-nocontent": instrumentor_variant(*_OPENLLMETRY, TRACELOOP_TRACE_CONTENT="false"),
        OURS: instrumentor_variant(*_SPENDWATCH),
    },
    peers=("contrib-google-genai", "openllmetry-google", "openllmetry-google-nocontent"),
    about=f"Each stream is {CHUNKS} chunks read to the end, the usage on the last one.",
    report="google-genai-instructions.md",
    private_env=("GOOGLE_", "GEMINI_"),
)


def main(argv: list[str]) -> None:
    sdk_instructions.main(BENCH, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
