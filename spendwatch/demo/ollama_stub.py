"""A local Ollama API server with deterministic token counts, for tests.

Point the real ``ollama`` client at it::

    with OllamaStub() as stub:
        client = ollama.AsyncClient(host=stub.origin)
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])

It serves ``POST /api/chat`` (one JSON object, or with ``"stream": true`` newline-delimited JSON: one chunk per word,
the counters on the last, ``done`` chunk) and ``POST /api/embed``. Counts are one token per word, as Ollama reports
them: ``prompt_eval_count`` is the words of every message, ``eval_count`` the reply's words. LightRAG's prompts get
the replies LightRAG parses (:func:`~spendwatch.demo._stub_responses.lightrag_reply`); anything else gets
``DEFAULT_REPLY_WORDS`` words. The model ``stub-error-500`` is answered with HTTP 500. ``usage_log`` holds
``(model, prompt_eval_count, eval_count)`` of each answer.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from spendwatch.demo._stub_responses import embedding_vector, lightrag_reply
from spendwatch.demo.local_http import RecordingServer, StubHandler

__all__ = ["DEFAULT_REPLY_WORDS", "EMBEDDING_DIMENSIONS", "OllamaStub"]

DEFAULT_REPLY_WORDS = 12
EMBEDDING_DIMENSIONS = 32
_REPLY = "This is a test reply from the spendwatch Ollama stub and it counts one token for every word"
_CREATED_AT = "2026-01-01T00:00:00.000000Z"


class OllamaStub(RecordingServer):
    """The stub, serving from a daemon thread."""

    thread_name = "spendwatch-ollama-stub"

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler


def _words(text: Any) -> int:
    return len(str(text or "").split())


def _reply_pieces(messages: list[dict[str, Any]]) -> list[str]:
    """The reply, as pieces that each hold one word and the whitespace before it."""
    reply = lightrag_reply(messages)
    if reply is None:
        vocabulary = _REPLY.split()
        reply = " ".join(vocabulary[i % len(vocabulary)] for i in range(DEFAULT_REPLY_WORDS))
    return re.findall(r"\s*\S+", reply)


def _chat_chunk(model: str, content: str, counts: dict[str, int] | None) -> dict[str, Any]:
    chunk = {"model": model, "created_at": _CREATED_AT, "message": {"role": "assistant", "content": content}}
    chunk["done"] = counts is not None
    if counts is not None:
        chunk |= {"done_reason": "stop", "total_duration": 1000, "load_duration": 10, **counts}
    return chunk


class _Handler(StubHandler):
    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = json.loads(self.read_body() or b"{}")
        model = str(body.get("model") or "")
        if model == "stub-error-500":
            return self.send_body(500, "application/json", json.dumps({"error": "model runner crashed"}).encode())
        if path == "/api/chat":
            return self._chat(model, body)
        if path == "/api/embed":
            return self._embed(model, body)
        self.send_body(404, "application/json", json.dumps({"error": f"not found: {path}"}).encode())

    def _chat(self, model: str, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        pieces = _reply_pieces(messages)
        counts = {"prompt_eval_count": sum(_words(m.get("content")) for m in messages), "eval_count": len(pieces)}
        self.server.owner._record_usage((model, counts["prompt_eval_count"], counts["eval_count"]))
        if not body.get("stream", True):  # Ollama streams unless told not to; the client always says
            return self._json(_chat_chunk(model, "".join(pieces), counts))
        lines = [_chat_chunk(model, piece, None) for piece in pieces] + [_chat_chunk(model, "", counts)]
        self.send_body(200, "application/x-ndjson", b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    def _embed(self, model: str, body: dict[str, Any]) -> None:
        texts = body.get("input") or []
        texts = [texts] if isinstance(texts, str) else list(texts)
        dimensions = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
        prompt_eval_count = sum(_words(text) for text in texts)
        self.server.owner._record_usage((model, prompt_eval_count, 0))
        vectors = [embedding_vector(text, dimensions) for text in texts]
        self._json({"model": model, "embeddings": vectors, "prompt_eval_count": prompt_eval_count})

    def _json(self, payload: dict[str, Any]) -> None:
        self.send_body(200, "application/json; charset=utf-8", json.dumps(payload).encode())
