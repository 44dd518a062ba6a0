"""A local OpenAI-compatible HTTP server with deterministic token usage, for tests and ``spendwatch demo``.

Point the real ``openai`` SDK at it::

    with StubServer(cached_tokens=4) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        stub.usage_log  # [ReportedUsage(endpoint="chat.completions", model="gpt-4o-mini", input_tokens=4, ...)]

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and ``/v1/responses``
(streamed and not), and the Azure form ``/openai/deployments/{deployment}/…?api-version=…``, with
bodies shaped like the real API's (see :mod:`spendwatch.demo._stub_responses`); images, audio and moderations
(:mod:`spendwatch.demo._stub_media`); background responses, retrieved and cancelled later
(:mod:`spendwatch.demo._stub_background`).

Usage is a pure function of the request, one token per word:

- input tokens: words in every message/prompt/input text, plus 3 per chat message or Responses
  input item (the instructions count as one);
- output tokens: the reply's words per choice (``max_tokens``, ``max_completion_tokens`` or
  ``max_output_tokens`` when given, else the ``reply_words`` option, ``DEFAULT_REPLY_WORDS`` by default), plus
  the ``reasoning_tokens`` option for reasoning models (``o1``/``o3``/``o4``/``gpt-5`` prefixes); a chat reply
  says the ``service_tier`` asked for when it is "priority" or "flex";
- cached input tokens: the ``cached_tokens`` option, capped by the input count (chat and Responses); cache writes:
  the ``cache_write_tokens`` option, capped by the uncached rest;
- image and audio input parts (chat ``image_url`` / ``input_audio``, Responses ``input_image``): ``IMAGE_TOKENS`` and
  ``AUDIO_CLIP_TOKENS`` input tokens each, reported as image and audio tokens; a chat request for audio output
  (``modalities`` with ``"audio"``) is answered with a transcript and ``AUDIO_TOKENS_PER_WORD`` audio tokens a word;
- Responses built-in tools (web search, file search, code interpreter, image generation): one call of each listed;
- the ``usage_cost`` option adds OpenRouter's ``usage.cost``, ``cost_header`` LiteLLM's ``x-litellm-response-cost``.

Chat replies are a fixed text, except that LightRAG's prompts (entity extraction, gleaning, keywords, description
summaries, answers; recognised by stable markers in the prompt) get the rows, JSON or prose LightRAG parses (see
:func:`spendwatch.demo._stub_responses.lightrag_reply`), so a real LightRAG pointed at the stub builds a real graph.
Their output tokens are the reply's words, capped by the length limits above.

The request model picks a misbehaviour: see ``SPECIAL_MODELS``. Every error response carries
``x-should-retry: false`` so the SDK fails at once whatever its ``max_retries``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from spendwatch.demo import _stub_background as background
from spendwatch.demo import _stub_responses as shapes
from spendwatch.demo._stub_media import MEDIA_ENDPOINTS, parse_multipart
from spendwatch.demo._stub_responses import ReportedUsage
from spendwatch.demo.local_http import RecordingServer, StubHandler, argument_parser, serve_in_foreground

__all__ = ["DEFAULT_REPLY_WORDS", "SPECIAL_MODELS", "ReportedUsage", "StubServer", "main"]

DEFAULT_REPLY_WORDS = 12
SPECIAL_MODELS = {
    "stub-error-500": "HTTP 500 server_error",
    "stub-error-429": "HTTP 429 rate_limit_exceeded",
    "stub-not-found": "HTTP 404 model_not_found",
    "stub-no-usage": "a valid response without a usage key",
    "stub-malformed-usage": "a valid response whose usage fields have wrong types",
    "stub-stream-cut": "a stream whose connection closes half-way, without [DONE] (non-streamed calls succeed)",
}
MESSAGE_OVERHEAD = 3
IMAGE_TOKENS = 85  # a low-detail image, as OpenAI counts it
AUDIO_CLIP_TOKENS = 50
AUDIO_TOKENS_PER_WORD = 5
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_REPLY_TEXT = "This is a test reply from the spendwatch stub server and it counts one token for every word"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_LENGTH_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_NOT_COUNTED = frozenset({"role", "type", "id", "name", "call_id", "tool_call_id", "status"})
_WORD_PIECES = re.compile(r"\s*\S+")
_ROUTE = re.compile(
    r"^(?:/openai/deployments/(?P<deployment>[^/]+)|/openai)?(?:/v1)?"
    r"/(?P<endpoint>chat/completions|completions|embeddings|responses|moderations"
    r"|images/(?:generations|edits|variations)|audio/(?:speech|transcriptions|translations))/?$"
)


@dataclass
class _Reply:
    """What the handler sends: a JSON body, raw bytes of ``content_type``, or SSE events (cut short when ``cut``)."""

    status: int = 200
    body: dict[str, Any] | None = None
    events: list[bytes] = field(default_factory=list)
    cut: bool = False
    raw: bytes | None = None
    content_type: str = "application/json"


class StubServer(RecordingServer):
    """The stub, serving from a daemon thread; ``requests`` and ``usage_log`` record what happened."""

    secret_headers = ("authorization", "api-key")
    thread_name = "spendwatch-stub"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        response_models: Mapping[str, str] | None = None,
        reply_delay_s: float = 0.0,
        cache_write_tokens: int = 0,
        usage_cost: float | None = None,
        cost_header: str | None = None,
        refuse_after: int | None = None,
        reply_words: int = DEFAULT_REPLY_WORDS,
        background_polls: int = 1,
    ) -> None:
        super().__init__(host, port)
        self.background = background.BackgroundResponses(background_polls)  # finished after that many retrievals
        self.reply_words = reply_words  # a reply's words when the request sets no length limit (long answers)
        self.refuse_after = refuse_after  # stop listening after this many requests: later ones are refused
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.usage_cost = usage_cost  # reported as usage.cost, as OpenRouter does
        self.cost_header = cost_header  # sent as x-litellm-response-cost, as LiteLLM's proxy does
        self.reply_delay_s = reply_delay_s  # each answer waits this long first: for client timeouts, cancelled calls
        self.reasoning_tokens = reasoning_tokens
        self.response_models = dict(response_models or {})

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler


class _Handler(StubHandler):
    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.read_body()
        content_type = self.headers.get("Content-Type") or ""
        try:
            multipart = content_type.startswith("multipart/")  # images and audio sent as files
            body = parse_multipart(content_type, raw) if multipart else json.loads(raw or "{}")
        except ValueError:
            body = None
        stub = self.server.owner
        stub._record_request(self.headers, body, path=self.path)
        if stub.refuse_after is not None and len(stub.requests) >= stub.refuse_after:
            threading.Thread(target=stub.stop, daemon=True).start()  # this request is answered, the next refused
        route = _ROUTE.match(path)
        if route is None and (cancelled := background.RESPONSE_ROUTE.match(path)) and cancelled["cancel"]:
            self._send_response(stub.background.cancel(cancelled["id"]), stream=False)
        elif route is None:
            self._send(_error(404, f"Invalid URL (POST {path})", "invalid_request_error", None))
        elif not isinstance(body, dict):
            self._send(_error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None))
        else:
            call = _Call(stub, body, route["deployment"] or str(body.get("model", "")), route["endpoint"])
            if stub.reply_delay_s:
                time.sleep(stub.reply_delay_s)
            self._send(_misbehaviour(call.model) or _ENDPOINTS[call.endpoint](call))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.owner._record_request(self.headers, None, path=self.path)
        found = background.RESPONSE_ROUTE.match(url.path)
        if found is None or found["cancel"]:
            self._send(_error(404, f"Invalid URL (GET {url.path})", "invalid_request_error", None))
        else:
            self._send_response(self.server.owner.background.retrieve(found["id"]), stream="stream=true" in url.query)

    def _send_response(self, response: dict[str, Any] | None, stream: bool) -> None:
        """A background response retrieved or cancelled (404 when the stub never made it)."""
        if response is None:
            self._send(_error(404, "No response found with that id.", "invalid_request_error", None))
        else:
            self._send(_Reply(events=background.events(response)) if stream else _Reply(body=response))

    def _send(self, reply: _Reply) -> None:
        headers = {"x-request-id": shapes.new_id("req_")}
        if reply.status >= 400:
            headers["x-should-retry"] = "false"
        elif self.server.owner.cost_header is not None:
            headers["x-litellm-response-cost"] = self.server.owner.cost_header
        if reply.body is not None or reply.raw is not None:
            data = json.dumps(reply.body).encode() if reply.raw is None else reply.raw
            self.send_body(reply.status, reply.content_type, data, headers)
        else:
            self.send_chunked("text/event-stream; charset=utf-8", reply.events, reply.cut, headers)


@dataclass
class _Call:
    """One request being answered: its body, model and the stub's settings."""

    stub: StubServer
    body: dict[str, Any]
    model: str
    endpoint: str

    @property
    def response_model(self) -> str:
        return self.stub.response_models.get(self.model, self.model)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def reply(self, **fields: Any) -> _Reply:
        """A reply for the endpoints served from other modules (``_stub_media``), which cannot import this one."""
        return _stream(fields["events"], self) if "events" in fields else _Reply(**fields)

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    @property
    def reports_usage(self) -> bool:
        """Chat and legacy completion streams carry usage only when asked to."""
        return not self.stream or self.include_usage

    def reply_words(self, text: str | None = None) -> list[str]:
        """The reply as one piece per word (each with the whitespace before it): ``text``, else the stub's own."""
        limit = next((self.body[key] for key in _LENGTH_LIMITS if key in self.body), None)
        limit = max(1, int(limit)) if isinstance(limit, int) else None
        if text is not None:
            pieces = _WORD_PIECES.findall(text.strip())
            return pieces[:limit] if limit else pieces
        vocabulary = _REPLY_TEXT.split()
        words = [vocabulary[i % len(vocabulary)] for i in range(limit or self.stub.reply_words)]
        return words[:1] + [" " + word for word in words[1:]]

    def usage(
        self, input_tokens: int, output_tokens: int = 0, *, cacheable: bool = True, **subsets: int
    ) -> ReportedUsage:
        """``subsets``: ReportedUsage's audio and image token counts, already in the totals."""
        reasoning = self.stub.reasoning_tokens if self.model.startswith(_REASONING_PREFIXES) else 0
        cached = min(self.stub.cached_tokens, input_tokens) if cacheable else 0
        written = min(self.stub.cache_write_tokens, input_tokens - cached) if cacheable else 0
        endpoint = self.endpoint.replace("/", ".")
        return ReportedUsage(
            endpoint,
            self.model,
            input_tokens,
            output_tokens + reasoning,
            cached,
            reasoning,
            written,
            cost=self.stub.usage_cost,
            **subsets,
        )

    def report(self, usage: ReportedUsage, shape: Callable[[ReportedUsage], dict[str, Any]]) -> dict[str, Any] | None:
        """The ``usage`` payload to send (logging it), or None / garbage for the usage misbehaviours."""
        if self.model == "stub-no-usage":
            return None
        if self.model == "stub-malformed-usage":
            return shapes.MALFORMED_RESPONSES_USAGE if self.endpoint == "responses" else shapes.MALFORMED_CHAT_USAGE
        if not (self.stream and self.model == "stub-stream-cut"):  # a cut stream never delivers its usage
            self.stub._record_usage(usage)
        return shape(usage)


def _count_words(value: Any) -> int:
    """Words in every text of a message list, prompt or input (token-id arrays count one per id)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_count_words(item) for key, item in value.items() if key not in _NOT_COUNTED)
    return 0


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """A call of the first function tool, unless tools are absent, refused, or already answered."""
    tools = [tool for tool in body.get("tools") or [] if tool.get("type") == "function"]
    answered = any(message.get("role") == "tool" for message in body.get("messages") or [])
    if not tools or answered or body.get("tool_choice") == "none":
        return None
    function = tools[0]["function"]
    required = (function.get("parameters") or {}).get("required") or []
    arguments = json.dumps({name: "stub" for name in required})
    return {
        "id": shapes.new_id("call_"),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _count_parts(value: Any, part_type: str) -> int:
    """Content parts of ``part_type`` (``image_url``, ``input_audio``, ``input_image``) anywhere in ``value``."""
    if isinstance(value, list):
        return sum(_count_parts(item, part_type) for item in value)
    if isinstance(value, dict):
        own = value.get("type") == part_type
        return own + sum(_count_parts(item, part_type) for item in value.values() if isinstance(item, list | dict))
    return 0


def _chat(call: _Call) -> _Reply:
    messages = call.body.get("messages") or []
    n = int(call.body.get("n") or 1)
    tool_call = _tool_call(call.body)
    words = call.reply_words(None if tool_call else shapes.lightrag_reply(messages))
    output = _count_words(tool_call["function"]["arguments"]) + 1 if tool_call else n * len(words)
    spoken = "audio" in (call.body.get("modalities") or ()) and tool_call is None
    subsets = {
        "input_image_tokens": IMAGE_TOKENS * _count_parts(messages, "image_url"),
        "input_audio_tokens": AUDIO_CLIP_TOKENS * _count_parts(messages, "input_audio"),
        "output_audio_tokens": AUDIO_TOKENS_PER_WORD * output if spoken else 0,
    }
    input_tokens = _count_words(messages) + MESSAGE_OVERHEAD * len(messages)
    input_tokens += subsets["input_image_tokens"] + subsets["input_audio_tokens"]
    usage = call.usage(input_tokens, output + subsets["output_audio_tokens"], **subsets)
    payload = call.report(usage, shapes.chat_usage) if call.reports_usage else None
    if not call.stream:
        replies = ["".join(words)] * n
        body = shapes.chat_completion(call.response_model, replies, payload, tool_call, spoken)
        if call.body.get("service_tier") in ("priority", "flex"):  # served at the tier asked for, as OpenAI says
            body["service_tier"] = call.body["service_tier"]
        return _Reply(body=body)
    chunks = shapes.chat_chunks(call.response_model, words, n, payload, call.include_usage, tool_call)
    return _stream([shapes.sse(chunk) for chunk in chunks] + [shapes.sse("[DONE]")], call)


def _completions(call: _Call) -> _Reply:
    n = int(call.body.get("n") or 1)
    words = call.reply_words()
    usage = call.usage(_count_words(call.body.get("prompt")), n * len(words), cacheable=False)
    payload = call.report(usage, shapes.chat_usage) if call.reports_usage else None
    if not call.stream:
        return _Reply(body=shapes.text_completion(call.response_model, ["".join(words)] * n, payload))
    chunks = shapes.completion_chunks(call.response_model, words, n, payload, call.include_usage)
    return _stream([shapes.sse(chunk) for chunk in chunks] + [shapes.sse("[DONE]")], call)


def _embeddings(call: _Call) -> _Reply:
    raw = call.body.get("input")
    texts = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw or [])
    texts = [text if isinstance(text, str) else " ".join(map(str, text)) for text in texts]
    dimensions = int(call.body.get("dimensions") or (3072 if call.model.endswith("-large") else 1536))
    usage = call.report(call.usage(_count_words(raw), cacheable=False), shapes.embeddings_usage)
    encoding = call.body.get("encoding_format") or "float"
    return _Reply(body=shapes.embeddings(call.response_model, texts, dimensions, encoding, usage))


def _responses(call: _Call) -> _Reply:
    raw = call.body.get("input")
    items = 1 if isinstance(raw, str) else len(raw or [])
    instructions = call.body.get("instructions")
    input_tokens = _count_words([raw, instructions]) + MESSAGE_OVERHEAD * (items + bool(instructions))
    image_tokens = IMAGE_TOKENS * _count_parts(raw, "input_image")
    words = call.reply_words()
    usage = call.usage(input_tokens + image_tokens, len(words), input_image_tokens=image_tokens)
    usage = call.report(usage, shapes.responses_usage)
    reasoning = call.model.startswith(_REASONING_PREFIXES)
    query = raw if isinstance(raw, str) else "stub query"
    tool_items = [shapes.tool_call_item(tool, query) for tool in call.body.get("tools") or () if isinstance(tool, dict)]
    tool_items = [item for item in tool_items if item is not None]
    if not call.stream:
        output = shapes.response_output("".join(words), reasoning, tool_items)
        response = shapes.response_object(call.body, call.response_model, output, usage)
        return _Reply(body=call.stub.background.accept(response) if call.body.get("background") else response)
    events = shapes.response_events(call.body, call.response_model, words, usage, reasoning, tool_items)
    return _stream([shapes.sse(payload, event=kind) for kind, payload in events], call)


def _stream(events: list[bytes], call: _Call) -> _Reply:
    return _Reply(events=events, cut=call.model == "stub-stream-cut")


_ENDPOINTS: dict[str, Callable[[_Call], _Reply]] = {
    "chat/completions": _chat,
    "completions": _completions,
    "embeddings": _embeddings,
    "responses": _responses,
    **MEDIA_ENDPOINTS,
}


def _error(status: int, message: str, type_: str, code: str | None) -> _Reply:
    return _Reply(status=status, body=shapes.error_body(message, type_, code))


def _misbehaviour(model: str) -> _Reply | None:
    """The error reply a special model name asks for, if any."""
    if model == "stub-error-500":
        return _error(500, _SERVER_ERROR, "server_error", None)
    if model == "stub-error-429":
        message = f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1."
        return _error(429, message, "requests", "rate_limit_exceeded")
    if model == "stub-not-found":
        message = f"The model `{model}` does not exist or you do not have access to it."
        return _error(404, message, "invalid_request_error", "model_not_found")
    return None


def main(argv: list[str] | None = None) -> None:
    """``python -m spendwatch.demo.stub [--port N]``: serve in the foreground until interrupted."""
    parser = argument_parser("spendwatch.demo.stub", __doc__)
    parser.add_argument("--cached-tokens", type=int, default=0)
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    serve_in_foreground(
        StubServer(args.host, args.port, cached_tokens=args.cached_tokens, reasoning_tokens=args.reasoning_tokens)
    )


if __name__ == "__main__":
    main()
