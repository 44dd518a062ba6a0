"""An in-process stand-in for api.openai.com: realistic canned bodies, served through the SDK's own HTTP library.

The bodies follow the shapes recorded in the OpenAI cassettes (usage included, so instrumentations do their full
work); they are built once, so each call costs the SDK's parsing, never ours. ``make_clients()`` returns a sync and
an async client wired to the mock transport.
"""

from __future__ import annotations

import itertools
import json

import openai
from openai import _base_client

try:
    from spendwatch.demo import _stub_responses
except ImportError:  # --against a revision from before the demo moved to spendwatch/demo/ (359684b)
    from spendwatch import _stub_responses

__all__ = ["CHAT_MODEL", "EMBEDDING_MODEL", "STREAM_CHUNKS", "http_library", "make_clients"]

# openai 3.x sends through httpx2, older releases through httpx: use whichever the installed SDK imports.
_httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx

CHAT_MODEL = "gpt-4o-mini"
_CHAT_RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
EMBEDDING_MODEL = "text-embedding-3-small"  # 1536 dimensions
_EMBEDDED_TEXT = "Say this is a test"
STREAM_CHUNKS = 27  # role + 24 content deltas + finish + usage, as with stream_options.include_usage

_CHAT_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 24,
    "total_tokens": 36,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_ANSWER = (
    "This is a test of a streamed answer that keeps going word by word until it has sent exactly twenty four content"
)
_WORDS = [*_ANSWER.split(" "), "tokens", "."]


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _chat_body() -> bytes:
    return _json(
        {
            "id": "chatcmpl-ASYMQRl3A3DXL9FWC@ID@",
            "object": "chat.completion",
            "created": 1731368630,
            "model": _CHAT_RESPONSE_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(_WORDS), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "service_tier": "default",
            "usage": _CHAT_USAGE,
            "system_fingerprint": "fp_0ba0d124f1",
        }
    )


def _stream_body() -> bytes:
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> dict:
        return {
            "id": "chatcmpl-ASYMZ4oSykiIFK4lX@ID@",
            "object": "chat.completion.chunk",
            "created": 1731368639,
            "model": _CHAT_RESPONSE_MODEL,
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            "usage": usage,
        }

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": (" " if i else "") + word}) for i, word in enumerate(_WORDS)]
    chunks += [chunk({}, finish="stop"), chunk({}, usage=_CHAT_USAGE, choices=False)]
    assert len(chunks) == STREAM_CHUNKS, len(chunks)
    return b"".join(b"data: " + _json(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _responses_body() -> bytes:
    return _json(
        {
            "id": "resp_0f4faba17dcd0f1e0069e2f3e49078819091798@ID@",
            "object": "response",
            "created_at": 1776481253,
            "status": "completed",
            "background": False,
            "completed_at": 1776481257,
            "error": None,
            "incomplete_details": None,
            "instructions": "You are a helpful assistant.",
            "max_output_tokens": None,
            "model": _CHAT_RESPONSE_MODEL,
            "output": [
                {
                    "id": "msg_0f4faba17dcd0f1e0069e2f3e7b2b88190bff23981628ac362",
                    "type": "message",
                    "status": "completed",
                    "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "This is a test."}],
                    "role": "assistant",
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": 22,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 6,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 28,
            },
            "user": None,
            "metadata": {},
        }
    )


def _embeddings_body(encoding_format: str) -> bytes:
    # base64 is what the API sends when asked, and the SDK asks unless the caller picks "float"
    usage = {"prompt_tokens": 8, "total_tokens": 8}
    return _json(_stub_responses.embeddings(EMBEDDING_MODEL, [_EMBEDDED_TEXT], 1536, encoding_format, usage))


def _headers(content_type: str) -> dict[str, str]:
    return {
        "content-type": content_type,
        "openai-organization": "bench-org",
        "openai-processing-ms": "207",
        "openai-version": "2020-10-01",
        "x-ratelimit-remaining-tokens": "199975",
        "x-request-id": "req_6e6c4f4c2e9b4b4db0c0a3b5a5f2f0f1",
    }


_JSON = _headers("application/json")
_SSE = _headers("text/event-stream; charset=utf-8")
_CHAT, _STREAM, _RESPONSES = _chat_body(), _stream_body(), _responses_body()
_EMBEDDINGS = {encoding: _embeddings_body(encoding) for encoding in ("float", "base64")}


_ids = itertools.count()


def _unique(body: bytes) -> bytes:
    # Real ids differ per call, and peers key state by them (OpenLLMetry caches every Responses result by id).
    return body.replace(b"@ID@", b"%012d" % next(_ids))


def _handle(request):
    path = request.url.path
    if path.endswith("/chat/completions"):
        if json.loads(request.content).get("stream"):
            return _httpx.Response(200, headers=_SSE, content=_unique(_STREAM))
        return _httpx.Response(200, headers=_JSON, content=_unique(_CHAT))
    if path.endswith("/responses"):
        return _httpx.Response(200, headers=_JSON, content=_unique(_RESPONSES))
    if path.endswith("/embeddings"):
        encoding = json.loads(request.content).get("encoding_format") or "float"
        return _httpx.Response(200, headers=_JSON, content=_EMBEDDINGS[encoding])
    return _httpx.Response(404, headers=_JSON, content=_json({"error": {"message": f"no mock for {path}"}}))


def http_library() -> str:
    """The name of the HTTP library the installed SDK sends through (``httpx2`` or ``httpx``)."""
    return _httpx.__name__


def make_clients() -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    transport = _httpx.MockTransport(_handle)
    options = {"api_key": "sk-bench", "base_url": "http://bench.invalid/v1", "max_retries": 0}
    sync = openai.OpenAI(http_client=_httpx.Client(transport=transport), **options)
    return sync, openai.AsyncOpenAI(http_client=_httpx.AsyncClient(transport=transport), **options)
