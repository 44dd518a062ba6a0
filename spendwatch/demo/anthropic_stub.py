"""A local Anthropic Messages API server with deterministic token usage, for tests, benchmarks and demos.

Point the real ``anthropic`` SDK at it::

    with AnthropicStub(cache_read_tokens=4) as stub:
        client = anthropic.Anthropic(base_url=stub.origin, api_key="test", max_retries=0)
        client.messages.create(model="claude-sonnet-4-20250514", max_tokens=20, messages=[...])

It serves ``POST /v1/messages`` (JSON, or the server-sent event stream with ``"stream": true``: ``message_start``,
``content_block_*``, ``ping``, ``message_delta``, ``message_stop``), ``POST /v1/messages/count_tokens``, Message
Batches (``POST /v1/messages/batches``, ``GET .../{id}`` and ``GET .../{id}/results``: a batch has ended as soon as it
is made), Vertex AI's ``…/models/{model}:rawPredict`` / ``:streamRawPredict`` and Bedrock's ``/model/{model}/invoke``
with the same bodies. Usage is a
pure function of the request, one token per word: input is the words of ``system`` and every message plus 3 per
message (Anthropic's ``input_tokens`` leaves out the cache reads and writes the stub's options add); output is the
reply's words (``max_tokens`` at most, ``DEFAULT_REPLY_WORDS`` otherwise). ``ReportedUsage`` logs each answer.

The request model picks a misbehaviour: see ``SPECIAL_MODELS``. Error responses carry ``x-should-retry: false``.
``python -m spendwatch.demo.anthropic_stub --port N`` serves in the foreground.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from spendwatch.demo._stub_responses import lightrag_reply
from spendwatch.demo.local_http import RecordingServer, StubHandler, argument_parser, serve_in_foreground

__all__ = ["DEFAULT_REPLY_WORDS", "MESSAGE_OVERHEAD", "SPECIAL_MODELS", "AnthropicStub", "ReportedUsage", "main"]

DEFAULT_REPLY_WORDS = 12
MESSAGE_OVERHEAD = 3
SPECIAL_MODELS = {
    "stub-error-500": "HTTP 500 api_error",
    "stub-error-429": "HTTP 429 rate_limit_error",
    "stub-not-found": "HTTP 404 not_found_error",
    "stub-overloaded-mid-stream": "a stream that sends an overloaded_error event after its first delta",
    "stub-stream-cut": "a stream whose connection closes half-way (non-streamed calls succeed)",
}
_REPLY = "This is a test reply from the spendwatch Anthropic stub and it counts one token for every word"
_VERTEX_ROUTE = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)$")
_BEDROCK_ROUTE = re.compile(r"^/model/(?P<model>[^/]+)/invoke$")
_BATCH_ROUTE = re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)(?P<results>/results)?$")
_ids = itertools.count(1)


@dataclass(frozen=True)
class ReportedUsage:
    """The usage one answer reported, in Anthropic's terms."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str = "standard"

    def as_json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens - self.ephemeral_1h_input_tokens,
                "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens,
            },
            "output_tokens": self.output_tokens,
            "server_tool_use": {"web_search_requests": self.web_search_requests, "web_fetch_requests": 0},
            "service_tier": self.service_tier,
        }


class AnthropicStub(RecordingServer):
    """The stub, serving from a daemon thread; ``requests`` and ``usage_log`` record what happened."""

    secret_headers = ("x-api-key", "authorization")
    thread_name = "spendwatch-anthropic-stub"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        web_search_requests: int = 0,
        service_tier: str = "standard",
    ) -> None:
        super().__init__(host, port)
        self.extras = {
            "cache_read_input_tokens": cache_read_tokens,
            "cache_creation_input_tokens": cache_write_tokens,
            "ephemeral_1h_input_tokens": min(cache_write_1h_tokens, cache_write_tokens),
            "web_search_requests": web_search_requests,
            "service_tier": service_tier,
        }
        self._batches: dict[str, list[dict[str, Any]]] = {}

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def answer(self, body: dict[str, Any], model: str, log: bool = True) -> tuple[dict[str, Any], ReportedUsage]:
        """The Message that answers ``body``, and its usage (logged unless told not to)."""
        words = _lightrag_words(body) or _reply_words(body.get("max_tokens"))
        usage = ReportedUsage(model, _input_tokens(body), len(words), **self.extras)
        if log:
            self._record_usage(usage)
        return _message(model, "".join(words), usage.as_json()), usage


class _Handler(StubHandler):
    @property
    def stub(self) -> AnthropicStub:
        return self.server.owner

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        self.stub._record_request(self.headers, body, method="POST", path=path)
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "The request body is not valid JSON.")
        vertex, bedrock = _VERTEX_ROUTE.search(path), _BEDROCK_ROUTE.match(path)
        if path == "/v1/messages":
            return self._messages(body, str(body.get("model", "")), bool(body.get("stream")))
        if vertex:
            return self._messages(body, vertex["model"], vertex["method"] == "streamRawPredict")
        if bedrock:  # Bedrock's InvokeModel (its stream is AWS's binary event stream, not served here)
            return self._messages(body, urllib.parse.unquote(bedrock["model"]), stream=False)
        if path == "/v1/messages/count_tokens":
            return self._json({"input_tokens": _input_tokens(body)})
        if path == "/v1/messages/batches":
            return self._create_batch(body)
        self._error(404, "not_found_error", f"Not found: POST {path}")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.stub._record_request(self.headers, None, method="GET", path=path)
        route = _BATCH_ROUTE.match(path)
        if route is None or route["id"] not in self.stub._batches:
            return self._error(404, "not_found_error", f"Not found: GET {path}")
        if route["results"]:
            return self._batch_results(route["id"])
        self._json(self._batch(route["id"]))

    # --- messages ---------------------------------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], model: str, stream: bool) -> None:
        refusal = _REFUSALS.get(model)
        if refusal is not None:
            return self._error(*refusal)
        message, _ = self.stub.answer(body, model)
        if not stream:
            return self._json(message)
        events = _events(message)
        if model == "stub-overloaded-mid-stream":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            events = [*events[:4], ("error", error)]
        self._stream(events, cut=model == "stub-stream-cut")

    # --- batches ----------------------------------------------------------------------------------------------------

    def _create_batch(self, body: dict[str, Any]) -> None:
        batch_id = f"msgbatch_stub{next(_ids):06d}"
        requests = [item for item in body.get("requests") or [] if isinstance(item, dict)]
        self.stub._batches[batch_id] = requests
        self._json(self._batch(batch_id))

    def _batch(self, batch_id: str) -> dict[str, Any]:
        requests = self.stub._batches[batch_id]
        errored = sum(1 for item in requests if _model_of(item) in _REFUSALS)
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended",
            "request_counts": {
                "processing": 0,
                "succeeded": len(requests) - errored,
                "errored": errored,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2026-01-01T00:00:00Z",
            "ended_at": "2026-01-01T00:01:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.stub.origin}/v1/messages/batches/{batch_id}/results",
        }

    def _batch_results(self, batch_id: str) -> None:
        lines = []
        for item in self.stub._batches[batch_id]:
            model, params = _model_of(item), item.get("params") or {}
            if model in _REFUSALS:
                status, kind, message = _REFUSALS[model]
                result = {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}
            else:
                answer, _ = self.stub.answer(params, model)
                answer["usage"]["service_tier"] = "batch"
                result = {"type": "succeeded", "message": answer}
            lines.append(json.dumps({"custom_id": item.get("custom_id"), "result": result}))
        self._send(200, "application/binary", ("\n".join(lines) + "\n").encode())

    # --- sending ----------------------------------------------------------------------------------------------------

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _error(self, status: int, kind: str, message: str) -> None:
        self._json({"type": "error", "error": {"type": kind, "message": message}}, status)

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        headers = {"request-id": f"req_stub{next(_ids):06d}"}
        if status >= 400:
            headers["x-should-retry"] = "false"
        self.send_body(status, content_type, data, headers)

    def _stream(self, events: list[tuple[str, dict[str, Any]]], cut: bool) -> None:
        sse = [f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in events]
        self.send_chunked("text/event-stream; charset=utf-8", sse, cut, {"request-id": f"req_stub{next(_ids):06d}"})


_REFUSALS = {
    "stub-error-500": (500, "api_error", "Internal server error"),
    "stub-error-429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "stub-not-found": (404, "not_found_error", "model: stub-not-found"),
}


def _model_of(item: dict[str, Any]) -> str:
    return str((item.get("params") or {}).get("model", ""))


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_count_words(item) for key, item in value.items() if key in ("content", "text"))
    return 0


def _input_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return _count_words(body.get("system")) + _count_words(messages) + MESSAGE_OVERHEAD * len(messages)


def _reply_words(max_tokens: Any) -> list[str]:
    limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
    vocabulary = _REPLY.split()
    words = [vocabulary[i % len(vocabulary)] for i in range(min(limit or DEFAULT_REPLY_WORDS, DEFAULT_REPLY_WORDS))]
    return words[:1] + [" " + word for word in words[1:]]


def _lightrag_words(body: dict[str, Any]) -> list[str] | None:
    """The reply to one of LightRAG's prompts (see ``lightrag_reply``), so a LightRAG on Claude builds a real graph."""
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    reply = lightrag_reply(system + list(body.get("messages") or []))
    return None if reply is None else re.findall(r"\s*\S+", reply)


def _message(model: str, reply: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"msg_stub{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed ``message``: the input side of the usage first, the output count last."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    text = message["content"][0]["text"]
    pieces = re.findall(r"\s*\S+", text)
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in pieces:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        events.append(("content_block_delta", delta))
    final_usage = {
        key: usage[key] for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }
    final_usage |= {"output_tokens": usage["output_tokens"], "server_tool_use": usage["server_tool_use"]}
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": final_usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def main(argv: list[str] | None = None) -> None:
    """``python -m spendwatch.demo.anthropic_stub [--port N]``: serve in the foreground until interrupted."""
    parser = argument_parser("spendwatch.demo.anthropic_stub", __doc__)
    parser.add_argument("--cache-read-tokens", type=int, default=0)
    parser.add_argument("--cache-write-tokens", type=int, default=0)
    parser.add_argument("--cache-write-1h-tokens", type=int, default=0, help="of the cache writes, held an hour")
    parser.add_argument("--web-search-requests", type=int, default=0)
    parser.add_argument("--service-tier", default="standard")
    args = parser.parse_args(argv)
    stub = AnthropicStub(
        args.host,
        args.port,
        cache_read_tokens=args.cache_read_tokens,
        cache_write_tokens=args.cache_write_tokens,
        cache_write_1h_tokens=args.cache_write_1h_tokens,
        web_search_requests=args.web_search_requests,
        service_tier=args.service_tier,
    )
    serve_in_foreground(stub, print_origin=True)


if __name__ == "__main__":
    main()
