"""``python -m bench.bedrock [--quick] [--calls N] [--variants a,b]``: the CPU instructions each Bedrock
instrumentation adds to a boto3 ``converse`` and ``converse_stream`` call (``bench.sdk_instructions``: callgrind, as
``bench.instructions`` counts OpenAI calls).

boto3 answers from a ``before-send`` handler: the request is built and signed as for real, and botocore parses a
canned answer (a Converse JSON body; a ConverseStream of 24 deltas in the AWS event-stream encoding), so the count is
botocore's own work plus the instrumentation's, without a socket. Every variant gets the same OpenTelemetry SDK as in
``bench.variants`` (a span exporter that only counts). The peers: OpenTelemetry contrib's botocore instrumentation
(its Bedrock extension puts GenAI usage on the AWS span) and OpenLLMetry's ``opentelemetry-instrumentation-bedrock``
(with and without content on its spans). OpenLIT is not one: it requires ``openai<3`` (see ``bench.variants``).
The report goes to ``bench/results/bedrock-instructions.md``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from bench import sdk_instructions
from bench.sdk_instructions import OURS, SdkBench, instrumentor_variant, version_of
from bench.variants import BARE, CONTROL

__all__ = ["BENCH", "DELTAS", "call_kinds", "main"]

MODEL = "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
_MESSAGES = [{"role": "user", "content": [{"text": "Say this is a test"}]}]
_ANSWER = (
    "This is a test of a streamed answer that keeps going word by word until it has sent twenty four deltas in all now"
)
_WORDS = _ANSWER.split()
DELTAS = len(_WORDS)
_USAGE = {"inputTokens": 12, "outputTokens": DELTAS, "totalTokens": 12 + DELTAS}


# --- canned answers ------------------------------------------------------------------------------------------------


def _converse_body() -> bytes:
    message = {"role": "assistant", "content": [{"text": " ".join(_WORDS)}]}
    answer = {"output": {"message": message}, "stopReason": "end_turn", "usage": _USAGE, "metrics": {"latencyMs": 1}}
    return json.dumps(answer).encode()


def _stream_body() -> bytes:
    from spendwatch.demo.bedrock_stub import event_frame

    frames = [event_frame("messageStart", {"role": "assistant"})]
    frames += [event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w + " "}}) for w in _WORDS]
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event_frame("messageStop", {"stopReason": "end_turn"}))
    frames.append(event_frame("metadata", {"usage": _USAGE, "metrics": {"latencyMs": 1}}))
    return b"".join(frames)


class _Raw:
    """What botocore reads an HTTP answer from (urllib3's response, as far as botocore uses it)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._read = False

    def stream(self, amt: int = 1024, decode_content: bool = True):
        if not self._read:
            self._read = True
            yield self._body

    def read(self, amt: int | None = None) -> bytes:
        if self._read:
            return b""
        self._read = True
        return self._body

    def close(self) -> None:
        pass


def _answer(bodies: dict[str, tuple[bytes, str]]):
    from botocore.awsrequest import AWSResponse

    def before_send(request, **_):
        body, content_type = bodies["stream" if request.url.endswith("/converse-stream") else "converse"]
        return AWSResponse(request.url, 200, {"content-type": content_type}, _Raw(body))

    return before_send


def call_kinds() -> dict[str, Callable[[], object]]:
    import boto3

    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIABENCHMARK",
        aws_secret_access_key="bench-secret",
    )
    bodies = {
        "converse": (_converse_body(), "application/json"),
        "stream": (_stream_body(), "application/vnd.amazon.eventstream"),
    }
    client.meta.events.register("before-send.bedrock-runtime.*", _answer(bodies))

    def stream() -> None:
        for _ in client.converse_stream(modelId=MODEL, messages=_MESSAGES)["stream"]:
            pass

    return {"converse": lambda: client.converse(modelId=MODEL, messages=_MESSAGES), "converse stream": stream}


# --- the variants --------------------------------------------------------------------------------------------------

_OPENLLMETRY = ("opentelemetry.instrumentation.bedrock", "BedrockInstrumentor", "opentelemetry-instrumentation-bedrock")
BENCH = SdkBench(
    module="bench.bedrock",
    title="bare boto3 (Bedrock Runtime)",
    library="botocore",
    call_kinds=call_kinds,
    variants={
        BARE: lambda: version_of("botocore"),
        CONTROL: lambda: version_of("botocore"),
        "otel-botocore": instrumentor_variant(
            "opentelemetry.instrumentation.botocore", "BotocoreInstrumentor", "opentelemetry-instrumentation-botocore"
        ),
        "openllmetry-bedrock": instrumentor_variant(*_OPENLLMETRY),  # records prompts and completions by default
        "openllmetry-bedrock-nocontent": instrumentor_variant(*_OPENLLMETRY, TRACELOOP_TRACE_CONTENT="false"),
        OURS: instrumentor_variant("spendwatch.instrumentation.bedrock_sdk", "BedrockInstrumentor", "spendwatch"),
    },
    peers=("otel-botocore", "openllmetry-bedrock", "openllmetry-bedrock-nocontent"),
    about=f"Each stream is one ConverseStream of {DELTAS} text deltas ({DELTAS + 4} events) read to the end.",
    report="bedrock-instructions.md",
    private_env=("AWS_",),
)


def main(argv: list[str]) -> None:
    sdk_instructions.main(BENCH, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
