"""Body builders for :mod:`spendwatch.stub`: JSON shapes copied from real OpenAI API responses.

Every function here is pure: it takes the already-decided reply (model, words, token counts) and
returns the dict (or the list of SSE events) the real API would send, with the same ids, ``object``
names, nulls and nested usage details, so the real ``openai`` SDK parses them into its own types.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

SYSTEM_FINGERPRINT = "fp_5t0b5e7v3r"
_ids = itertools.count(1)


@dataclass(frozen=True)
class ReportedUsage:
    """The token usage the stub put into one response (also kept in ``StubServer.usage_log``).

    ``input_tokens`` includes ``cached_tokens`` and ``output_tokens`` includes ``reasoning_tokens``,
    as the real API counts them.
    """

    endpoint: str
    model: str
    input_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def new_id(prefix: str) -> str:
    """An id shaped like the real ones (``chatcmpl-…``, ``resp_…``), unique within the process."""
    return f"{prefix}{next(_ids):024d}"


def now() -> int:
    return int(time.time())


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event, framed as the API frames it."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# --- usage -------------------------------------------------------------------------------------


def chat_usage(usage: ReportedUsage) -> dict[str, Any]:
    """``usage`` of chat and legacy completions (prompt/completion naming)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(usage: ReportedUsage) -> dict[str, Any]:
    """``usage`` of the Responses API (input/output naming)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def embeddings_usage(usage: ReportedUsage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}


MALFORMED_CHAT_USAGE = {
    "prompt_tokens": "many",
    "completion_tokens": None,
    "total_tokens": -1,
    "prompt_tokens_details": 5,
    "completion_tokens_details": "none",
}
MALFORMED_RESPONSES_USAGE = {
    "input_tokens": "many",
    "input_tokens_details": 5,
    "output_tokens": None,
    "output_tokens_details": [],
    "total_tokens": "lots",
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --- chat completions --------------------------------------------------------------------------


def chat_completion(
    model: str, replies: list[str], usage: dict[str, Any] | None, tool_call: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per reply (or one tool-calling choice)."""
    if tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call], "refusal": None, "annotations": []}
        choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}]
    else:
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for index, text in enumerate(replies)
        ]
    body = {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": now(), "model": model}
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage
    body |= {"service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}
    return body


def chat_chunks(
    model: str,
    words: list[str],
    n: int,
    usage: dict[str, Any] | None,
    include_usage: bool,
    tool_call: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` sequence: role, one chunk per word per choice, finish, usage.

    With ``include_usage`` every chunk carries ``"usage": null`` and a last chunk with empty
    ``choices`` carries the usage, as the real API does; without it no chunk has a ``usage`` key.
    """
    head = {"id": new_id("chatcmpl-"), "object": "chat.completion.chunk", "created": now(), "model": model}
    head |= {"service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return head | {"choices": choices} | ({"usage": None} if include_usage else {})

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    if tool_call is not None:
        started = dict(tool_call, index=0, function={"name": tool_call["function"]["name"], "arguments": ""})
        arguments = {"index": 0, "function": {"arguments": tool_call["function"]["arguments"]}}
        chunks = [
            chunk([choice(0, {"role": "assistant", "content": None})]),
            chunk([choice(0, {"tool_calls": [started]})]),
            chunk([choice(0, {"tool_calls": [arguments]})]),
            chunk([choice(0, {}, "tool_calls")]),
        ]
    else:
        chunks = [chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})]) for i in range(n)]
        chunks += [chunk([choice(i, {"content": word})]) for word in words for i in range(n)]
        chunks += [chunk([choice(i, {}, "stop")]) for i in range(n)]
    if include_usage and usage is not None:
        chunks.append(head | {"choices": [], "usage": usage})
    return chunks


# --- legacy text completions -------------------------------------------------------------------


def text_completion(model: str, replies: list[str], usage: dict[str, Any] | None) -> dict[str, Any]:
    choices = [
        {"text": text, "index": index, "logprobs": None, "finish_reason": "stop"} for index, text in enumerate(replies)
    ]
    body = {"id": new_id("cmpl-"), "object": "text_completion", "created": now(), "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def completion_chunks(
    model: str, words: list[str], n: int, usage: dict[str, Any] | None, include_usage: bool
) -> list[dict[str, Any]]:
    head = {"id": new_id("cmpl-"), "object": "text_completion", "created": now(), "model": model}
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        return head | {"choices": [choice]} | extra

    chunks = [chunk(i, word) for word in words for i in range(n)]
    chunks += [chunk(i, "", "stop") for i in range(n)]
    if include_usage and usage is not None:
        chunks.append(head | {"choices": [], "usage": usage})
    return chunks


# --- embeddings --------------------------------------------------------------------------------


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic pseudo-embedding of ``text`` (float32-representable values)."""
    rng = random.Random(zlib.crc32(text.encode()))
    return [struct.unpack("<f", struct.pack("<f", rng.uniform(-0.1, 0.1)))[0] for _ in range(dimensions)]


def embeddings(
    model: str, inputs: list[str], dimensions: int, encoding_format: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    """A ``list`` of ``embedding`` objects; base64 is little-endian float32, as the API sends it."""
    data = []
    for index, text in enumerate(inputs):
        vector: list[float] | str = embedding_vector(text, dimensions)
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if usage is not None:
        body["usage"] = usage
    return body


# --- Responses API -----------------------------------------------------------------------------


def response_object(
    request: dict[str, Any], model: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    """A completed ``response`` object echoing the request's settings; no ``usage`` key when ``usage`` is None."""
    created = now()
    body: dict[str, Any] = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": created,
        "status": "completed",
        "background": False,
        "completed_at": created,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "presence_penalty": 0.0,
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": None,
        "prompt_cache_retention": "in_memory",
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"), "summary": None},
        "safety_identifier": None,
        "service_tier": request.get("service_tier") or "default",
        "store": True,
        "temperature": request.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }
    if usage is None:
        del body["usage"]
    return body


def in_progress(response: dict[str, Any]) -> dict[str, Any]:
    """The form of ``response`` streamed in ``response.created``/``response.in_progress``."""
    return response | {"status": "in_progress", "completed_at": None, "output": [], "usage": None}


def reasoning_item() -> dict[str, Any]:
    return {"id": new_id("rs_"), "type": "reasoning", "summary": []}


def message_item(item_id: str, text: str | None) -> dict[str, Any]:
    """An assistant ``message`` output item; ``text=None`` gives the in-progress, empty form."""
    if text is None:
        return {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"id": item_id, "type": "message", "status": "completed", "content": [part], "role": "assistant"}


def response_output(text: str, reasoning: bool) -> list[dict[str, Any]]:
    """The ``output`` items: an (empty-summary) reasoning item for reasoning models, then the message."""
    return ([reasoning_item()] if reasoning else []) + [message_item(new_id("msg_"), text)]


def response_events(
    request: dict[str, Any], model: str, words: list[str], usage: dict[str, Any] | None, reasoning: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The Responses API stream: ``(event type, payload)`` pairs in the order the API sends them."""
    text = "".join(words)
    output = response_output(text, reasoning)
    msg_id = output[-1]["id"]
    response = response_object(request, model, output, usage)
    msg_index = len(output) - 1
    where = {"item_id": msg_id, "output_index": msg_index, "content_index": 0}
    empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": in_progress(response)}),
        ("response.in_progress", {"response": in_progress(response)}),
    ]
    if reasoning:
        events.append(("response.output_item.added", {"item": output[0], "output_index": 0}))
        events.append(("response.output_item.done", {"item": output[0], "output_index": 0}))
    events.append(("response.output_item.added", {"item": message_item(msg_id, None), "output_index": msg_index}))
    events.append(("response.content_part.added", where | {"part": empty_part}))
    events += [("response.output_text.delta", where | {"delta": word, "logprobs": []}) for word in words]
    events.append(("response.output_text.done", where | {"text": text, "logprobs": []}))
    events.append(("response.content_part.done", where | {"part": empty_part | {"text": text}}))
    events.append(("response.output_item.done", {"item": output[-1], "output_index": msg_index}))
    events.append(("response.completed", {"response": response}))
    return [(kind, {"type": kind} | payload | {"sequence_number": i}) for i, (kind, payload) in enumerate(events)]
