"""A local AWS Bedrock Runtime stub with deterministic token usage, for tests and benchmarks.

Point the real ``boto3`` at it with dummy credentials::

    with BedrockStub() as stub:
        client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=stub.origin,
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.converse(modelId="amazon.nova-micro-v1:0", messages=[{"role": "user", "content": [{"text": "Hi"}]}])

or run it: ``python -m spendwatch.demo.bedrock_stub --port N`` (prints its URL).

It serves ``POST /model/{modelId}/converse``, ``/converse-stream``, ``/invoke`` and ``/invoke-with-response-stream``.
Streams are AWS event-stream frames (``application/vnd.amazon.eventstream``, CRCs included), which botocore parses.
InvokeModel bodies take each model family's shape (Anthropic, Amazon Nova and Titan, Meta Llama, Mistral, Cohere;
the family is the vendor part of the model id, past an inference-profile prefix such as ``us.``), and every
InvokeModel answer carries the ``x-amzn-bedrock-input-token-count`` / ``-output-token-count`` headers.

Usage is a pure function of the request, one token per word: input tokens are the words of every text in the
request (roles, types and version fields not counted); output tokens are ``DEFAULT_REPLY_WORDS`` words, or fewer when
the request caps its output (``inferenceConfig.maxTokens``, or the family's body field). A request that marks a cache
point (Converse ``cachePoint``, Anthropic ``cache_control``) reports the server's ``cache_read_tokens`` and
``cache_write_tokens`` besides, on top of its input (Bedrock's input counts exclude the cache, as these do), the
writes in Converse's ``cacheDetails`` held ``1h`` when the cache point asks for that ``ttl``, else ``5m``. A service
tier asked for (Converse ``serviceTier``, InvokeModel's ``X-Amzn-Bedrock-Service-Tier`` header) is echoed.

Model ids that misbehave: ``does-not-exist`` (HTTP 400 ValidationException), ``stub-stream-error`` (a stream that
ends with a ``modelStreamErrorException`` event after two deltas; a non-streamed call succeeds).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from spendwatch.demo._stub_responses import lightrag_reply
from spendwatch.demo.local_http import LocalHTTPServer, StubHandler, argument_parser, serve_in_foreground

__all__ = ["DEFAULT_REPLY_WORDS", "BedrockStub", "event_frame", "main"]

DEFAULT_REPLY_WORDS = 12
_REPLY_TEXT = "This is a test reply from the spendwatch Bedrock stub and it counts one token for every word"
_NOT_COUNTED = frozenset({"role", "type", "anthropic_version", "schemaVersion", "format", "name", "toolUseId"})
_ROUTE = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream)$"
)
_FAMILIES = ("anthropic", "amazon.nova", "amazon.titan", "meta", "mistral", "cohere")
# Where each family's InvokeModel body caps the output (as AWS documents each model's parameters).
_CAP_PATHS = {
    "anthropic": ("max_tokens",),
    "mistral": ("max_tokens",),
    "cohere": ("max_tokens",),
    "meta": ("max_gen_len",),
    "amazon.nova": ("inferenceConfig", "max_new_tokens"),
    "amazon.titan": ("textGenerationConfig", "maxTokenCount"),
}
EVENT_STREAM = "application/vnd.amazon.eventstream"


# --- the event-stream encoding -----------------------------------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    encoded = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(encoded)) + encoded


def event_frame(event_type: str, payload: dict, message_type: str = "event") -> bytes:
    """One AWS event-stream message: prelude (total and headers length, CRC32), string headers, JSON payload, CRC32."""
    type_header = ":exception-type" if message_type == "exception" else ":event-type"
    headers = (
        _header(type_header, event_type)
        + _header(":content-type", "application/json")
        + _header(":message-type", message_type)
    )
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 16 + len(headers) + len(body), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


# --- what a request asks for -------------------------------------------------------------------------------------


def _words(value: Any, key: str = "") -> int:
    if key in _NOT_COUNTED:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_words(item, name) for name, item in value.items())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    return 0


def _family(model: str) -> str | None:
    return next((name for name in _FAMILIES if model.startswith(name) or f".{name}" in model), None)


def _lookup(body: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        body = body.get(key) if isinstance(body, dict) else None
    return body


@dataclass
class _Usage:
    input_tokens: int  # excluding the cache, as Bedrock reports it
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0


class _Request:
    def __init__(self, stub: BedrockStub, model: str, action: str, body: dict) -> None:
        self.model, self.action, self.body = model, action, body
        self.family = _family(model)
        converse = action.startswith("converse")
        counted = {key: body.get(key) for key in ("messages", "system")} if converse else body
        text = json.dumps(body)
        cached = "cachePoint" in text or "cache_control" in text
        self.cache_ttl = "1h" if '"ttl": "1h"' in text else "5m"
        cap = _lookup(body, ("inferenceConfig", "maxTokens") if converse else _CAP_PATHS.get(self.family or "", ()))
        words = DEFAULT_REPLY_WORDS if type(cap) is not int else max(0, min(cap, DEFAULT_REPLY_WORDS))
        self.lightrag = _lightrag_reply(body) if converse else None  # LightRAG's prompts: the replies it parses
        self.reply = _REPLY_TEXT.split()[:words] if self.lightrag is None else self.lightrag.split()
        self.usage = _Usage(
            _words(counted),
            len(self.reply),
            stub.cache_read_tokens if cached else 0,
            stub.cache_write_tokens if cached else 0,
        )
        self.stop_reason = "max_tokens" if words < DEFAULT_REPLY_WORDS else "end_turn"

    @property
    def text(self) -> str:
        return " ".join(self.reply) if self.lightrag is None else self.lightrag


def _lightrag_reply(body: dict) -> str | None:
    """A Converse request as chat messages for ``lightrag_reply`` (so a LightRAG on Bedrock builds a real graph)."""
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    return lightrag_reply(system + [m for m in body.get("messages") or [] if isinstance(m, dict)])


# --- answers -----------------------------------------------------------------------------------------------------


def _converse_usage(request: _Request) -> dict:
    usage = request.usage
    reported = {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.input_tokens + usage.output_tokens + usage.cache_read + usage.cache_write,
    }
    if usage.cache_read or usage.cache_write:
        reported.update(cacheReadInputTokens=usage.cache_read, cacheWriteInputTokens=usage.cache_write)
        reported["cacheDetails"] = [{"ttl": request.cache_ttl, "inputTokens": usage.cache_write}]
    return reported


def _converse_extras(request: _Request) -> dict:
    """The service tier the request asked for, echoed as Bedrock does."""
    tier = request.body.get("serviceTier")
    return {"serviceTier": tier} if isinstance(tier, dict) else {}


def _converse(request: _Request) -> dict:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": request.text}]}},
        "stopReason": request.stop_reason,
        "usage": _converse_usage(request),
        "metrics": {"latencyMs": 1},
        **_converse_extras(request),
    }


def _converse_events(request: _Request) -> list[bytes]:
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for index, word in enumerate(request.reply):
        frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word + " "}}))
        if index == 1 and request.model == "stub-stream-error":
            return frames + [_stream_error()]
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event_frame("messageStop", {"stopReason": request.stop_reason}))
    metadata = {"usage": _converse_usage(request), "metrics": {"latencyMs": 1}, **_converse_extras(request)}
    return frames + [event_frame("metadata", metadata)]


def _stream_error() -> bytes:
    return event_frame("modelStreamErrorException", {"message": "The model stream failed."}, "exception")


def _anthropic_body(request: _Request) -> dict:
    usage = request.usage
    return {
        "id": "msg_bdrk_stub",
        "type": "message",
        "role": "assistant",
        "model": request.model.rpartition("anthropic.")[2],
        "content": [{"type": "text", "text": request.text}],
        "stop_reason": request.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_write,
            "cache_read_input_tokens": usage.cache_read,
            "output_tokens": usage.output_tokens,
        },
    }


def _invoke_body(request: _Request) -> dict:
    """The InvokeModel answer of the request's model family."""
    usage, text = request.usage, request.text
    if request.family == "anthropic":
        return _anthropic_body(request)
    if request.family == "amazon.nova":
        reported = {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens}
        if usage.cache_read or usage.cache_write:
            reported.update(cacheReadInputTokenCount=usage.cache_read, cacheWriteInputTokenCount=usage.cache_write)
        message = {"role": "assistant", "content": [{"text": text}]}
        return {"output": {"message": message}, "stopReason": request.stop_reason, "usage": reported}
    if request.family == "meta":
        return {
            "generation": text,
            "prompt_token_count": usage.input_tokens,
            "generation_token_count": usage.output_tokens,
            "stop_reason": "length" if request.stop_reason == "max_tokens" else "stop",
        }
    if request.family == "amazon.titan":
        result = {"tokenCount": usage.output_tokens, "outputText": text, "completionReason": "FINISH"}
        return {"inputTextTokenCount": usage.input_tokens, "results": [result]}
    if request.family == "cohere":
        return {"response_id": "stub", "text": text, "generation_id": "stub", "finish_reason": "COMPLETE"}
    return {"outputs": [{"text": text, "stop_reason": "stop"}]}  # Mistral, and any other family


def _token_headers(usage: _Usage) -> dict[str, str]:
    headers = {
        "X-Amzn-Bedrock-Input-Token-Count": str(usage.input_tokens),
        "X-Amzn-Bedrock-Output-Token-Count": str(usage.output_tokens),
        "X-Amzn-Bedrock-Invocation-Latency": "1",
    }
    if usage.cache_read or usage.cache_write:
        headers["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(usage.cache_read)
        headers["X-Amzn-Bedrock-Cache-Write-Input-Token-Count"] = str(usage.cache_write)
    return headers


def _delta_chunk(request: _Request, word: str) -> dict:
    if request.family == "anthropic":
        return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
    if request.family == "amazon.nova":
        return {"contentBlockDelta": {"delta": {"text": word}, "contentBlockIndex": 0}}
    if request.family == "meta":
        return {"generation": word, "prompt_token_count": None, "generation_token_count": 1, "stop_reason": None}
    if request.family == "amazon.titan":
        return {"outputText": word, "index": 0, "totalOutputTextTokenCount": 1, "completionReason": None}
    return {"outputs": [{"text": word, "stop_reason": None}]}


def _invoke_events(request: _Request) -> list[bytes]:
    usage = request.usage
    chunks: list[dict] = []
    if request.family == "anthropic":
        start = _anthropic_body(request) | {"content": [], "stop_reason": None}
        start["usage"] = start["usage"] | {"output_tokens": 1}
        chunks.append({"type": "message_start", "message": start})
    for index, word in enumerate(request.reply):
        chunks.append(_delta_chunk(request, word + " "))
        if index == 1 and request.model == "stub-stream-error":
            return [_chunk_frame(chunk) for chunk in chunks] + [_stream_error()]
    metrics = {
        "inputTokenCount": usage.input_tokens,
        "outputTokenCount": usage.output_tokens,
        "invocationLatency": 1,
        "firstByteLatency": 1,
    }
    last = {"type": "message_stop"} if request.family == "anthropic" else {"outputs": [], "stop_reason": "stop"}
    chunks.append(last | {"amazon-bedrock-invocationMetrics": metrics})
    return [_chunk_frame(chunk) for chunk in chunks]


def _chunk_frame(chunk: dict) -> bytes:
    return event_frame("chunk", {"bytes": base64.b64encode(json.dumps(chunk).encode()).decode()})


# --- the server ----------------------------------------------------------------------------------------------------


class BedrockStub(LocalHTTPServer):
    """Bedrock Runtime on 127.0.0.1; ``requests`` lists (model, action, body) of every request it answered."""

    thread_name = "spendwatch-bedrock-stub"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, cache_read_tokens: int = 0, cache_write_tokens: int = 0
    ) -> None:
        super().__init__(host, port)
        self.cache_read_tokens, self.cache_write_tokens = cache_read_tokens, cache_write_tokens
        self.requests: list[tuple[str, str, Any]] = []

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return self.origin  # boto3's endpoint_url: the service has no path prefix


class _Handler(StubHandler):
    def do_POST(self) -> None:
        raw = self.read_body()
        route = _ROUTE.match(urlsplit(self.path).path)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if route is None or not isinstance(body, dict):
            self._error(404 if route is None else 400, "UnknownOperationException", "The request is not understood.")
            return
        model, action = unquote(route["model"]), route["action"]
        stub = self.server.owner
        stub.requests.append((model, action, body))
        if model == "does-not-exist":
            self._error(400, "ValidationException", "The provided model identifier is invalid.")
            return
        request = _Request(stub, model, action, body)
        if action == "converse":
            self._send(200, "application/json", json.dumps(_converse(request)).encode())
        elif action == "converse-stream":
            self._send(200, EVENT_STREAM, b"".join(_converse_events(request)))
        elif action == "invoke":
            data = json.dumps(_invoke_body(request)).encode()
            headers = _token_headers(request.usage)
            if self.headers.get("X-Amzn-Bedrock-Service-Tier"):  # the tier asked for, echoed as Bedrock does
                headers["X-Amzn-Bedrock-Service-Tier"] = self.headers["X-Amzn-Bedrock-Service-Tier"]
            self._send(200, "application/json", data, headers)
        else:
            self._send(200, EVENT_STREAM, b"".join(_invoke_events(request)))

    def _error(self, status: int, error_type: str, message: str) -> None:
        data = json.dumps({"message": message}).encode()
        self._send(status, "application/json", data, {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/"})

    def _send(self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        headers = {"x-amzn-RequestId": "00000000-0000-0000-0000-000000000000", **(headers or {})}
        self.send_body(status, content_type, data, headers)


def main(argv: list[str] | None = None) -> None:
    """``python -m spendwatch.demo.bedrock_stub [--port N]``: serve in the foreground until interrupted."""
    parser = argument_parser("spendwatch.demo.bedrock_stub", __doc__)
    parser.add_argument("--cache-read-tokens", type=int, default=0)
    parser.add_argument("--cache-write-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    stub = BedrockStub(
        args.host, args.port, cache_read_tokens=args.cache_read_tokens, cache_write_tokens=args.cache_write_tokens
    )
    serve_in_foreground(stub)


if __name__ == "__main__":
    main()
