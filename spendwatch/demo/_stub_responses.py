"""Body builders for :mod:`spendwatch.demo.stub`: JSON shapes copied from real OpenAI API responses.

Every function here is pure: it takes the already-decided reply (model, words, token counts) and
returns the dict (or the list of SSE events) the real API would send, with the same ids, ``object``
names, nulls and nested usage details, so the real ``openai`` SDK parses them into its own types.

The last section decides a reply's text instead: :func:`lightrag_reply` answers LightRAG's prompts (entity
extraction in its delimiter format, keywords as JSON, summaries, answers), recognised by stable markers in their text,
so a real LightRAG run against the stub builds a non-empty knowledge graph. It too is a pure function of the request.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
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
    # Further subsets of input_tokens / output_tokens, each reported only when not 0 (as they are rare).
    cache_write_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    cost: float | None = None  # what the provider says it charged (OpenRouter's usage.cost), when it says

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
    prompt_details = {"cached_tokens": usage.cached_tokens, "audio_tokens": usage.input_audio_tokens}
    return _with_cost(
        {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": prompt_details | _input_extras(usage),
            "completion_tokens_details": {
                "reasoning_tokens": usage.reasoning_tokens,
                "audio_tokens": usage.output_audio_tokens,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        usage,
    )


def responses_usage(usage: ReportedUsage) -> dict[str, Any]:
    """``usage`` of the Responses API (input/output naming)."""
    return _with_cost(
        {
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens} | _input_extras(usage),
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens,
        },
        usage,
    )


def embeddings_usage(usage: ReportedUsage) -> dict[str, Any]:
    return _with_cost({"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}, usage)


def _input_extras(usage: ReportedUsage) -> dict[str, int]:
    """Cache writes (GPT-5.6 on) and image tokens, named as both APIs name them; absent when 0."""
    extras = {"cache_write_tokens": usage.cache_write_tokens, "image_tokens": usage.input_image_tokens}
    return {key: value for key, value in extras.items() if value}


def _with_cost(payload: dict[str, Any], usage: ReportedUsage) -> dict[str, Any]:
    if usage.cost is not None:
        payload["cost"] = usage.cost  # OpenRouter's usage accounting: USD (credits), a float
    return payload


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
    model: str,
    replies: list[str],
    usage: dict[str, Any] | None,
    tool_call: dict[str, Any] | None = None,
    audio: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per reply (or one tool-calling choice); ``audio``: spoken replies, the
    text as the audio's transcript (``modalities=["text", "audio"]``)."""
    if tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call], "refusal": None, "annotations": []}
        choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}]
    else:
        choices = [
            {
                "index": index,
                "message": _reply_message(text, audio),
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


def _reply_message(text: str, audio: bool) -> dict[str, Any]:
    if not audio:
        return {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    spoken = {"id": new_id("audio_"), "data": _SILENT_WAV, "expires_at": now() + 3600, "transcript": text}
    return {"role": "assistant", "content": None, "refusal": None, "annotations": [], "audio": spoken}


# A WAV header with no samples, base64: the audio a stub can afford.
_SILENT_WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16) + b"data\x00\x00\x00\x00"
).decode()


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


def response_output(text: str, reasoning: bool, tool_items: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The ``output`` items: an (empty-summary) reasoning item for reasoning models, the built-in tools' calls, then
    the message."""
    return ([reasoning_item()] if reasoning else []) + list(tool_items) + [message_item(new_id("msg_"), text)]


# A 1x1 transparent PNG, base64: what the stub's image generation tool draws.
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def tool_call_item(tool: dict[str, Any], query: str) -> dict[str, Any] | None:
    """The output item of one built-in tool's call (web search, file search, code interpreter, image generation),
    or None for a tool the stub does not call (functions, MCP, ...)."""
    kind = tool.get("type")
    if kind in ("web_search", "web_search_preview"):
        action = {"type": "search", "query": query, "sources": None}
        return {"id": new_id("ws_"), "type": "web_search_call", "status": "completed", "action": action}
    if kind == "file_search":
        return {"id": new_id("fs_"), "type": "file_search_call", "status": "completed", "queries": [query]}
    if kind == "code_interpreter":
        container = tool.get("container")
        container_id = container if isinstance(container, str) else new_id("cntr_")
        code = {"code": "print(2 + 2)", "container_id": container_id, "outputs": None}
        return {"id": new_id("ci_"), "type": "code_interpreter_call", "status": "completed"} | code
    if kind == "image_generation":
        image = {"result": TINY_PNG, "revised_prompt": query, "size": "1024x1024", "quality": "low"}
        return {"id": new_id("ig_"), "type": "image_generation_call", "status": "completed"} | image
    return None


def response_events(
    request: dict[str, Any],
    model: str,
    words: list[str],
    usage: dict[str, Any] | None,
    reasoning: bool,
    tool_items: list[dict[str, Any]] = (),
) -> list[tuple[str, dict[str, Any]]]:
    """The Responses API stream: ``(event type, payload)`` pairs in the order the API sends them."""
    text = "".join(words)
    output = response_output(text, reasoning, tool_items)
    msg_id = output[-1]["id"]
    response = response_object(request, model, output, usage)
    msg_index = len(output) - 1
    where = {"item_id": msg_id, "output_index": msg_index, "content_index": 0}
    empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": in_progress(response)}),
        ("response.in_progress", {"response": in_progress(response)}),
    ]
    for index, item in enumerate(output[:-1]):  # reasoning and tool calls, each whole
        events.append(("response.output_item.added", {"item": item, "output_index": index}))
        events.append(("response.output_item.done", {"item": item, "output_index": index}))
    events.append(("response.output_item.added", {"item": message_item(msg_id, None), "output_index": msg_index}))
    events.append(("response.content_part.added", where | {"part": empty_part}))
    events += [("response.output_text.delta", where | {"delta": word, "logprobs": []}) for word in words]
    events.append(("response.output_text.done", where | {"text": text, "logprobs": []}))
    events.append(("response.content_part.done", where | {"part": empty_part | {"text": text}}))
    events.append(("response.output_item.done", {"item": output[-1], "output_index": msg_index}))
    events.append(("response.completed", {"response": response}))
    return [(kind, {"type": kind} | payload | {"sequence_number": i}) for i, (kind, payload) in enumerate(events)]


# --- LightRAG's prompts ------------------------------------------------------------------------

# Stable markers of lightrag-hku's prompt templates (``lightrag/prompt.py``, checked against 1.5.7).
LIGHTRAG_EXTRACTION_TASK = "---Task---\nExtract entities and relationships"  # entity_extraction_user_prompt
LIGHTRAG_GLEANING_TASK = "---Task---\nBased on the last extraction task"  # entity_continue_extraction_user_prompt
LIGHTRAG_KEYWORDS_ROLE = "expert keyword extractor"  # keywords_extraction
LIGHTRAG_SUMMARY_ROLE = "proficient in data curation and synthesis"  # summarize_entity_descriptions
LIGHTRAG_ANSWER_ROLE = "synthesizing information from a provided knowledge base"  # rag_response, naive_rag_response
LIGHTRAG_ANSWER_PREFIX = "According to the knowledge base"
_INPUT_TEXT = re.compile(r"---Input Text---\s*```\n(.*?)\n```", re.DOTALL)
_TUPLE_DELIMITER = re.compile(r"Entity row: `entity(.+?)entity_name")
_COMPLETION_DELIMITER = re.compile(r"Output `([^`]+)` as the final line")
_USER_QUERY = re.compile(r"User Query: (.*?)\n\n---Output---", re.DOTALL)
_DESCRIPTION_NAME = re.compile(r"^\w+ Name: (.+)$", re.MULTILINE)
_CAPITALISED = re.compile(r"\b[A-Z][\w-]*")
_COMMON = (  # words a sentence or question starts with: not names
    "a about after all an and are as at be before between both but by can did do does each for from has have he her "
    "his how i in into is it its many more most much near of on or our she so some than that the their these they "
    "this those to under was we were what when where which while who whom whose why will with you"
)
_COMMON_WORDS = frozenset(_COMMON.split())


def lightrag_reply(messages: list[dict[str, Any]]) -> str | None:
    """The text a model would give to one of LightRAG's prompts, or None for any other conversation.

    - entity extraction: an ``entity`` row per capitalised name in the input text and a ``relation`` row per
      neighbouring pair, in the tuple and completion delimiters the prompt asks for;
    - gleaning (the "anything missed?" follow-up): one more description of the first name, so descriptions pile up
      and LightRAG has something to summarise;
    - keywords: ``{"high_level_keywords": [...], "low_level_keywords": [...]}`` from the user query;
    - a description summary, and an answer naming the question's names found in the retrieved context.
    """
    texts = [_message_text(message) for message in messages]
    if not texts:
        return None
    last, conversation = texts[-1], "\n".join(texts)
    if last.startswith(LIGHTRAG_EXTRACTION_TASK):
        return _extraction_rows(conversation, _last_input_text(last), gleaning=False)
    if last.startswith(LIGHTRAG_GLEANING_TASK):
        return _extraction_rows(conversation, _last_input_text(conversation), gleaning=True)
    if LIGHTRAG_KEYWORDS_ROLE in conversation:
        match = _USER_QUERY.search(conversation)
        return _keywords(match.group(1) if match else last)
    if LIGHTRAG_SUMMARY_ROLE in conversation:
        match = _DESCRIPTION_NAME.search(conversation)
        name = match.group(1).strip() if match else "The entity"
        return f"{name}: one summary of its descriptions, written by the spendwatch stub."
    if LIGHTRAG_ANSWER_ROLE in conversation:
        context = "\n".join(
            text for message, text in zip(messages, texts, strict=True) if message.get("role") != "user"
        )
        found = [name for name in _names(last) if re.search(rf"\b{re.escape(name)}\b", context)]
        if not found:
            return f"{LIGHTRAG_ANSWER_PREFIX}, no name in the question appears in the retrieved context."
        verb = "is" if len(found) == 1 else "are"
        return f"{LIGHTRAG_ANSWER_PREFIX}, {', '.join(found)} {verb} in the retrieved context."
    return None


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        return "\n".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return str(content or "")


def _last_input_text(text: str) -> str:
    matches = _INPUT_TEXT.findall(text)
    return matches[-1] if matches else ""


def _names(text: str) -> list[str]:
    """Capitalised words that are not common words, each once, in order of appearance."""
    found = [word for word in _CAPITALISED.findall(text) if word.lower() not in _COMMON_WORDS]
    return list(dict.fromkeys(found))


def _sentences(text: str, name: str) -> list[str]:
    mentions = re.compile(rf"\b{re.escape(name)}\b")
    sentences = [" ".join(sentence.split()) for sentence in re.split(r"(?<=[.!?])\s+", text)]
    return [sentence for sentence in sentences if mentions.search(sentence)]


def _extraction_rows(conversation: str, input_text: str, *, gleaning: bool) -> str:
    tuple_match, done_match = _TUPLE_DELIMITER.search(conversation), _COMPLETION_DELIMITER.search(conversation)
    sep = tuple_match.group(1) if tuple_match else "<|#|>"
    done = done_match.group(1) if done_match else "<|COMPLETE|>"
    names = _names(input_text)
    if gleaning:
        names = names[:1]
    rows = []
    for name in names:
        where = _sentences(input_text, name) or [input_text]
        description = f"{name} again appears in: {where[-1]}" if gleaning else f"{name} appears in: {where[0]}"
        rows.append(sep.join(("entity", name, "Other", description.replace(sep, " "))))
    if not gleaning:
        for source, target in itertools.pairwise(names):
            description = f"{source} and {target} are mentioned in the same text."
            rows.append(sep.join(("relation", source, target, "mentioned together", description)))
    return "\n".join([*rows, done])


def _keywords(query: str) -> str:
    low_level = _names(query)
    lowered = {name.lower() for name in low_level}
    words = [word for word in re.findall(r"[a-z][a-z-]{2,}", query.lower()) if word not in _COMMON_WORDS]
    high_level = [word for word in dict.fromkeys(words) if word not in lowered][:3]
    return json.dumps({"high_level_keywords": high_level, "low_level_keywords": low_level})
