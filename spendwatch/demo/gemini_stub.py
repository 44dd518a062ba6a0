"""A local Gemini API and Vertex AI HTTP server with deterministic token usage, for tests and benchmarks.

Point the real ``google-genai`` SDK at it::

    with GeminiStubServer() as stub:
        client = genai.Client(api_key="test", http_options={"base_url": stub.origin})
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")

It answers ``generateContent``, ``streamGenerateContent`` (``?alt=sse``), ``embedContent``, ``batchEmbedContents``,
``predict`` (Vertex AI's text embeddings) and ``countTokens``, under the Gemini API's paths
(``/v1beta/models/{model}:{method}``) and Vertex AI's (``/v1beta1/projects/{p}/locations/{l}/publishers/google/
models/{model}:{method}``, and express mode's ``/v1beta1/publishers/google/models/{model}:{method}``).

Usage is a pure function of the request, one token per word of text, as in :mod:`spendwatch.demo.stub`:
``promptTokenCount`` counts the words of every text part plus ``IMAGE_TOKENS`` per inline image and
``AUDIO_TOKENS`` per inline audio part (reported by modality in ``promptTokensDetails``); the reply has
``maxOutputTokens`` words (else ``DEFAULT_REPLY_WORDS``); models named ``*thinking*`` or ``gemini-2.5-*`` also
report ``THOUGHTS_TOKENS`` thoughts; ``cached_tokens`` (capped by the prompt) are reported as
``cachedContentTokenCount``. A stream sends one word per chunk and the usage on the last chunk only. A request
declaring functions gets a call of the first one (no arguments) until it sends a function response.

The request model picks a misbehaviour: see ``SPECIAL_MODELS``. Runnable: ``python -m spendwatch.demo.gemini_stub
--port N`` prints its origin and serves until interrupted.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from spendwatch.demo._stub_responses import lightrag_reply
from spendwatch.demo.local_http import RecordingServer, StubHandler, argument_parser, serve_in_foreground

__all__ = ["AUDIO_TOKENS", "DEFAULT_REPLY_WORDS", "IMAGE_TOKENS", "SPECIAL_MODELS", "GeminiStubServer", "main"]

DEFAULT_REPLY_WORDS = 12
THOUGHTS_TOKENS = 7
IMAGE_TOKENS = 258  # what Gemini counts for one image up to 384 pixels a side
AUDIO_TOKENS = 32  # Gemini counts 32 tokens a second of audio: every inline clip here is one second
SPECIAL_MODELS = {
    "stub-error-500": "HTTP 500 INTERNAL",
    "stub-error-400": "HTTP 400 INVALID_ARGUMENT",
    "stub-no-usage": "a valid response without usageMetadata",
    "stub-stream-cut": "a stream whose connection closes half-way (non-streamed calls succeed)",
}
_REPLY_TEXT = "This is a test reply from the spendwatch Gemini stub and it counts one token for every word"
_WORD_PIECES = re.compile(r"\s*\S+")
_ROUTE = re.compile(
    r"^/(?P<version>v1|v1beta|v1alpha|v1beta1)/(?:projects/[^/]+/locations/[^/]+/)?(?:publishers/google/)?"
    r"models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent|embedContent|batchEmbedContents"
    r"|predict|countTokens)$"
)
_LIGHTRAG_TURN = re.compile(r"^\[(user|assistant|system)\] ", re.MULTILINE)
_ERROR_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL"}


class GeminiStubServer(RecordingServer):
    """The stub, serving from a daemon thread; ``requests`` records what it was sent (without credentials)."""

    secret_headers = ("x-goog-api-key", "authorization")
    thread_name = "spendwatch-gemini-stub"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, cached_tokens: int = 0) -> None:
        super().__init__(host, port)
        self.cached_tokens = cached_tokens

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return f"{self.origin}/"  # the SDK adds the API version itself


# --- what a request is worth ---------------------------------------------------------------------------------------


def _words(text: str) -> int:
    return len(_WORD_PIECES.findall(text))


def _prompt_counts(body: dict[str, Any]) -> dict[str, int]:
    """Prompt tokens by modality: words of text parts, a fixed count per inline image or audio part."""
    counts = {"TEXT": 0, "IMAGE": 0, "AUDIO": 0}
    contents = list(body.get("contents") or [])
    if isinstance(body.get("content"), dict):
        contents.append(body["content"])
    for request in body.get("requests") or []:  # batchEmbedContents
        contents.append(request.get("content") or {})
    if isinstance(body.get("systemInstruction"), dict):
        contents.append(body["systemInstruction"])
    for content in contents:
        for part in content.get("parts") or []:
            if isinstance(part.get("text"), str):
                counts["TEXT"] += _words(part["text"])
            media = part.get("inlineData") or part.get("fileData") or {}
            mime = str(media.get("mimeType") or media.get("mime_type") or "")  # the API takes both spellings
            if mime.startswith("image/"):
                counts["IMAGE"] += IMAGE_TOKENS
            elif mime.startswith("audio/"):
                counts["AUDIO"] += AUDIO_TOKENS
    return counts


def _reply_words(body: dict[str, Any]) -> list[str]:
    limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
    wanted = limit if isinstance(limit, int) and limit >= 0 else DEFAULT_REPLY_WORDS
    words = _REPLY_TEXT.split()
    return [words[index % len(words)] for index in range(wanted)]


def _thinks(model: str) -> bool:
    return "thinking" in model or model.startswith("gemini-2.5-")


def _usage(model: str, body: dict[str, Any], output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    counts = _prompt_counts(body)
    prompt = sum(counts.values())
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output_tokens,
        "promptTokensDetails": [{"modality": name, "tokenCount": n} for name, n in counts.items() if n],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": output_tokens}],
    }
    thoughts = THOUGHTS_TOKENS if _thinks(model) else 0
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if cached_tokens:
        usage["cachedContentTokenCount"] = min(cached_tokens, prompt)
    usage["totalTokenCount"] = prompt + output_tokens + thoughts
    return usage


# --- answers -------------------------------------------------------------------------------------------------------


def _response(model: str, text: str, finish: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    answer: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "stub-response"}
    if usage is not None:
        answer["usageMetadata"] = usage
    return answer


def _function_to_call(body: dict[str, Any]) -> str | None:
    """The first declared function, unless the last turn already answers a call: the model asks for it once."""
    declared = [f for tool in body.get("tools") or [] for f in tool.get("functionDeclarations") or []]
    last_parts = ((body.get("contents") or [{}])[-1]).get("parts") or []
    if not declared or any("functionResponse" in part for part in last_parts):
        return None
    return declared[0].get("name")


def _lightrag_text(body: dict[str, Any]) -> str | None:
    """The reply to one of LightRAG's prompts (see ``lightrag_reply``), so a LightRAG on Gemini builds a real graph.
    LightRAG's Gemini binding sends its system prompt as ``systemInstruction`` and the conversation as one text of
    ``[role] content`` turns."""
    texts = [
        part["text"]
        for content in (body.get("contents") or [])
        for part in content.get("parts") or []
        if isinstance(part.get("text"), str)
    ]
    system = (body.get("systemInstruction") or {}).get("parts") or []
    messages = [{"role": "system", "content": part.get("text") or ""} for part in system]
    pieces = _LIGHTRAG_TURN.split("\n".join(texts))
    if pieces[0].strip():
        messages.append({"role": "user", "content": pieces[0]})
    for role, content in zip(pieces[1::2], pieces[2::2], strict=True):
        messages.append({"role": role, "content": content.rstrip("\n")})
    return lightrag_reply(messages)


def _generate(model: str, body: dict[str, Any], cached_tokens: int) -> dict[str, Any]:
    lightrag = _lightrag_text(body)
    words = _reply_words(body) if lightrag is None else lightrag.split()
    usage = None if model == "stub-no-usage" else _usage(model, body, len(words), cached_tokens)
    answer = _response(model, " ".join(words) if lightrag is None else lightrag, "STOP", usage)
    function = _function_to_call(body)
    if function is not None:
        answer["candidates"][0]["content"]["parts"] = [{"functionCall": {"name": function, "args": {}}}]
    return answer


def _stream_events(model: str, body: dict[str, Any], cached_tokens: int) -> list[bytes]:
    words = _reply_words(body) or [""]
    events = []
    for index, word in enumerate(words):
        last = index == len(words) - 1
        usage = _usage(model, body, len(words), cached_tokens) if last and model != "stub-no-usage" else None
        payload = _response(model, word if index == 0 else f" {word}", "STOP" if last else None, usage)
        events.append(b"data: " + json.dumps(payload).encode() + b"\r\n\r\n")
    return events


def _embedding(body: dict[str, Any], vertex_statistics: bool) -> dict[str, Any]:
    embedding: dict[str, Any] = {"values": [0.125, -0.25, 0.5]}
    if vertex_statistics:
        # Vertex AI's prediction service answers in snake_case here, as the SDK expects.
        embedding["statistics"] = {"token_count": sum(_prompt_counts(body).values()), "truncated": False}
    return embedding


def _answer(method: str, model: str, body: dict[str, Any], cached_tokens: int) -> dict[str, Any]:
    if method == "generateContent":
        return _generate(model, body, cached_tokens)
    if method == "embedContent":
        return {"embedding": _embedding(body, False)}
    if method == "batchEmbedContents":
        return {"embeddings": [_embedding(request, False) for request in body.get("requests") or []]}
    if method == "predict":  # Vertex AI's text embedding models: one prediction per instance, with its token count
        instances = [{"contents": [{"parts": [{"text": i.get("content", "")}]}]} for i in body.get("instances") or []]
        characters = sum(len(str(instance.get("content", ""))) for instance in body.get("instances") or [])
        predictions = [{"embeddings": _embedding(instance, True)} for instance in instances]
        return {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}
    return {"totalTokens": sum(_prompt_counts(body).values())}  # countTokens


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _ERROR_STATUS.get(status, "UNKNOWN")}}


class _Handler(StubHandler):
    def do_POST(self) -> None:
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        stub: GeminiStubServer = self.server.owner
        stub._record_request(self.headers, body, path=self.path)
        route = _ROUTE.match(urlsplit(self.path).path)
        if route is None:
            return self._json(404, _error(404, f"Invalid URL (POST {urlsplit(self.path).path})"))
        if not isinstance(body, dict):
            return self._json(400, _error(400, "Invalid JSON payload received."))
        model, method = route["model"], route["method"]
        if model == "stub-error-500":
            return self._json(500, _error(500, "Internal error encountered."))
        if model == "stub-error-400":
            return self._json(400, _error(400, "Please use a valid role: user, model."))
        if method == "streamGenerateContent":
            events = _stream_events(model, body, stub.cached_tokens)
            return self.send_chunked("text/event-stream", events, cut=model == "stub-stream-cut")
        return self._json(200, _answer(method, model, body, stub.cached_tokens))

    def do_GET(self) -> None:
        self._json(404, _error(404, f"Invalid URL (GET {urlsplit(self.path).path})"))

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self.send_body(status, "application/json; charset=UTF-8", json.dumps(body).encode())


def main(argv: list[str] | None = None) -> None:
    """``python -m spendwatch.demo.gemini_stub [--port N]``: serve in the foreground until interrupted."""
    parser = argument_parser("spendwatch.demo.gemini_stub", __doc__)
    parser.add_argument("--cached-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    serve_in_foreground(GeminiStubServer(args.host, args.port, cached_tokens=args.cached_tokens))


if __name__ == "__main__":
    main()
