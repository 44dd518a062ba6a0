"""Reading token usage out of OpenAI SDK results, and estimating it when the response has none.

Everything here reads defensively: a malformed response (a ``usage`` of the wrong shape, a string where a count
belongs) yields an estimate flagged as such, never an exception. The SDK builds its models without validation, so
any field may hold anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from spendwatch.instrumentation.calls import Usage

__all__ = [
    "CHAT_USAGE_FIELDS",
    "fill_tokens",
    "OUTPUT_CAP_ARGUMENTS",
    "input_token_bound",
    "output_cap",
    "CHAT",
    "COMPLETION",
    "EMBEDDINGS",
    "RESPONSES",
    "estimate_missing",
    "estimate_tokens",
    "model_fields",
    "request_text_length",
    "response_identity",
    "header_cost",
    "tool_units",
    "usage_from_raw",
    "usage_from_request",
    "usage_from_result",
    "usd",
]

CHAT = "chat"
COMPLETION = "text_completion"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"

_CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; only used where the provider reported nothing


def count(value: Any) -> int | None:
    """A token count as reported, or None when it is missing or not a non-negative integer."""
    return value if type(value) is int and value >= 0 else None


def text(value: Any) -> str | None:
    return value if type(value) is str else None


def items(value: Any) -> list | tuple:
    """A list the response should hold (choices, tool calls), or nothing when it holds something else."""
    return value if isinstance(value, list | tuple) else ()


def estimate_tokens(characters: int) -> int:
    return -(-characters // _CHARS_PER_TOKEN) if characters > 0 else 0


def _content_length(content: Any, measure: Callable[[str], int] = len, per_token: int = _CHARS_PER_TOKEN) -> int:
    """Size of the text in a message content, a prompt, or a Responses input (str, parts, items, nested)."""
    if isinstance(content, str):
        return measure(content)
    if isinstance(content, dict):
        return sum(_content_length(content.get(key), measure, per_token) for key in _TEXT_KEYS)
    if isinstance(content, list | tuple):
        if content and all(type(item) is int for item in content):
            return len(content) * per_token  # already token ids (embeddings, completions)
        return sum(_content_length(item, measure, per_token) for item in content)
    return 0


_TEXT_KEYS = ("content", "text", "arguments", "output")
_INPUT_KEYS = ("messages", "input", "prompt", "instructions", "tools")
_TOKENS_PER_ITEM = 8  # message framing, tool-call wrappers: generous, as it feeds an upper bound


def request_text_length(kwargs: dict) -> int:
    """Characters of input text a request carries: messages, input, prompt and instructions."""
    return sum(_content_length(kwargs.get(key)) for key in ("messages", "input", "prompt", "instructions"))


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def input_token_bound(kwargs: dict) -> int:
    """An upper bound on the input tokens of a request: no tokenizer makes more tokens than UTF-8 bytes, plus
    framing per message or item. Deliberately pessimistic: the budget guard reserves against it."""
    total = 0
    for key in _INPUT_KEYS:
        value = kwargs.get(key)
        if isinstance(value, dict):
            value = [value]
        if key == "tools" and value:
            total += len(repr(value))  # tool schemas are sent as JSON: their repr is at least as long
            continue
        total += _content_length(value, _utf8_length, per_token=1)
        if isinstance(value, list | tuple):
            total += _TOKENS_PER_ITEM * len(value)
    return total + _TOKENS_PER_ITEM


OUTPUT_CAP_ARGUMENTS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def output_cap(kwargs: dict) -> tuple[str | None, int | None]:
    """The keyword that caps a request's output, and its value, when the request sets one."""
    for argument in OUTPUT_CAP_ARGUMENTS:
        value = kwargs.get(argument)
        if type(value) is int and value >= 0:
            return argument, value
    return None, None


def _chat_output_length(result: Any) -> int:
    total = 0
    for choice in items(getattr(result, "choices", None)):
        message = getattr(choice, "message", None)
        total += len(text(getattr(message, "content", None)) or "")
        total += len(text(getattr(choice, "text", None)) or "")  # legacy completions
        for tool_call in items(getattr(message, "tool_calls", None)):
            function = getattr(tool_call, "function", None)
            total += len(text(getattr(function, "arguments", None)) or "")
    return total


def _responses_output_length(result: Any) -> int:
    try:
        return len(text(result.output_text) or "")
    except Exception:  # noqa: BLE001 - output_text walks the output list, which may be malformed
        return 0


# Where a usage object keeps its counts: (input, output, input details, output details).
CHAT_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
RESPONSES_USAGE_FIELDS = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


def fill_tokens(usage: Usage, raw: Any, fields: tuple[str, str, str, str]) -> tuple[bool, bool]:
    """Copy the counts of a provider ``usage`` object into ``usage``: the totals, their billed subsets (cached and
    cache-write input, audio and image tokens each way, reasoning) and the cost the provider states (OpenRouter's
    ``usage.cost``). Returns whether input and output are still to be estimated (missing or malformed); the caller
    estimates them and flags the usage as estimated. A malformed subset is left out (0). A count below its own part
    (cached above input) is left as reported: ``calls.apply_usage`` raises it for every source."""
    input_name, output_name, input_details, output_details = fields
    values = model_fields(raw)
    input_tokens = values.get(input_name)
    output_tokens = values.get(output_name)
    input_missing = type(input_tokens) is not int or input_tokens < 0
    output_missing = type(output_tokens) is not int or output_tokens < 0
    if not input_missing:
        usage.input_tokens = input_tokens
    if not output_missing:
        usage.output_tokens = output_tokens
    details = values.get(input_details)
    if details is not None:  # the same names in chat's prompt_tokens_details and the Responses API's
        get = model_fields(details).get
        cached = get("cached_tokens")
        if cached:  # Usage's counts start at 0: only a count to copy is written
            usage.cache_read_tokens = count(cached) or 0
        written, audio, image = get("cache_write_tokens"), get("audio_tokens"), get("image_tokens")
        if written or audio or image:  # most calls have none of them: one test
            usage.cache_write_tokens = count(written) or 0
            usage.input_audio_tokens = count(audio) or 0
            usage.input_image_tokens = count(image) or 0
    details = values.get(output_details)
    if details is not None:
        get = model_fields(details).get
        reasoning = get("reasoning_tokens")
        if reasoning:
            usage.reasoning_tokens = count(reasoning) or 0
        audio, image = get("audio_tokens"), get("image_tokens")
        if audio or image:
            usage.output_audio_tokens = count(audio) or 0
            usage.output_image_tokens = count(image) or 0
    cost = values.get("cost")
    if cost is not None:
        usage.provider_cost_usd = usd(cost)
    return input_missing, output_missing


_NO_FIELDS: dict = {}


def model_fields(model: Any) -> dict:
    """The fields of an SDK model by name, those its class declares and those the API sent beyond them (pydantic's
    extras); empty for what is no model (a malformed usage: a number, a list). Read as dicts because the SDK's models
    answer an absent attribute through pydantic's slow path (an exception built per miss, ~50x a read), and most
    usage details are absent from most responses: this runs on every call."""
    try:  # attribute reads, not getattr() with a default: a third of the instructions on this path
        fields = model.__dict__
    except AttributeError:
        return _NO_FIELDS
    try:
        extra = model.__pydantic_extra__
    except AttributeError:  # an object, but no pydantic model
        return fields
    return {**fields, **extra} if extra else fields


def usd(value: Any) -> float | None:
    """A charge in USD as a provider states it (a JSON number, or a header's decimal text), or None when it is
    not a finite non-negative number."""
    if type(value) is str:
        try:
            value = float(value)
        except ValueError:
            return None
    elif type(value) is not float and type(value) is not int:
        return None  # bool too: not a charge
    return float(value) if 0 <= value < math.inf else None


# The cost header of a gateway in front of the provider: LiteLLM's proxy states what it priced the call at.
COST_HEADERS = ("x-litellm-response-cost",)


def header_cost(headers: Any) -> float | None:
    """The cost a gateway states in the response headers (``httpx.Headers`` or a mapping), or None."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name in COST_HEADERS:
        value = get(name)
        if value is not None:
            return usd(value)
    return None


def estimate_missing(
    usage: Usage, missing: tuple[bool, bool], estimate_input: Callable[[], int], estimate_output: Callable[[], int]
) -> Usage:
    """Estimate what :func:`fill_tokens` could not read and flag the usage as estimated (an estimate below the cached
    or reasoning tokens read is raised to them where every call is priced, ``calls.apply_usage``)."""
    input_missing, output_missing = missing
    if input_missing or output_missing:
        usage.estimated = True
        if input_missing:
            usage.input_tokens = estimate_input()
        if output_missing:
            usage.output_tokens = estimate_output()
    return usage


def response_identity(result: Any) -> Usage:
    """A usage naming the response: its model (what is priced) and service tier (which price)."""
    # Set after Usage(): keyword arguments this far down its field list cost more than the two stores.
    usage = Usage()
    model, tier = getattr(result, "model", None), getattr(result, "service_tier", None)
    if type(model) is str:
        usage.response_model = model
    if type(tier) is str:
        usage.service_tier = tier
    return usage


def _read_usage(result: Any, kwargs: dict, fields: tuple[str, str, str, str], output_length) -> Usage:
    """The usage a response reports under ``fields``; what it lacks is estimated from the request and from
    ``output_length(result)``, the characters it answered."""
    usage = response_identity(result)
    missing = fill_tokens(usage, getattr(result, "usage", None), fields)
    if missing[0] or missing[1]:
        estimate_missing(
            usage,
            missing,
            lambda: estimate_tokens(request_text_length(kwargs)),
            lambda: estimate_tokens(output_length(result)),
        )
    return usage


def _chat_usage(result: Any, kwargs: dict) -> Usage:
    """Chat completions and legacy completions: ``prompt_tokens`` / ``completion_tokens``."""
    return _read_usage(result, kwargs, CHAT_USAGE_FIELDS, _chat_output_length)


def _embeddings_usage(result: Any, kwargs: dict) -> Usage:
    usage = Usage()
    model = getattr(result, "model", None)
    if type(model) is str:
        usage.response_model = model
    values = model_fields(getattr(result, "usage", None))
    prompt_tokens = values.get("prompt_tokens")
    if type(prompt_tokens) is int and prompt_tokens >= 0:
        usage.input_tokens = prompt_tokens
    else:
        usage.estimated = True
        usage.input_tokens = estimate_tokens(request_text_length(kwargs))
    cost = values.get("cost")
    if cost is not None:
        usage.provider_cost_usd = usd(cost)
    return usage


def responses_usage(response: Any, kwargs: dict) -> Usage:
    """A Responses API ``Response`` (also the one inside a stream's final event), with its built-in tools' calls."""
    usage = _read_usage(response, kwargs, RESPONSES_USAGE_FIELDS, _responses_output_length)
    usage.units = tool_units(getattr(response, "output", None))
    return usage


# Output items of the Responses API's built-in tools billed per call, and the unit each counts.
_TOOL_CALL_UNITS = {
    "web_search_call": "web_search_calls",
    "file_search_call": "file_search_calls",
    "image_generation_call": "images",
}
_NOT_TOOL_CALLS = frozenset({"message", "reasoning", "function_call"})  # the usual items: passed over at once
_CODE_INTERPRETER_CALL = "code_interpreter_call"
_MAX_REMEMBERED_CONTAINERS = 4096
# Code-interpreter containers already counted: one is billed once, when created, however many calls then use it.
_counted_containers: dict[str, None] = {}


def tool_units(output: Any) -> dict[str, float] | None:
    """The built-in tool charges of a response's ``output`` items: web and file searches and generated images per
    call, code-interpreter sessions per container not seen before in this process. None when there are none."""
    units = None
    for item in items(output):
        kind = getattr(item, "type", None)
        if type(kind) is not str or kind in _NOT_TOOL_CALLS:
            continue
        unit = _TOOL_CALL_UNITS.get(kind)
        if unit is None:
            if kind != _CODE_INTERPRETER_CALL or not _new_container(getattr(item, "container_id", None)):
                continue
            unit = "code_interpreter_sessions"
        if units is None:
            units = {}
        units[unit] = units.get(unit, 0) + 1
    return units


def _new_container(container_id: Any) -> bool:
    if type(container_id) is not str or not container_id:
        return False  # no id to count a session by: left out rather than invented
    if container_id in _counted_containers:
        return False
    if len(_counted_containers) >= _MAX_REMEMBERED_CONTAINERS:
        _counted_containers.clear()  # containers expire after minutes idle: the oldest ids are long gone
    _counted_containers[container_id] = None
    return True


_EXTRACTORS: dict[str, Callable[[Any, dict], Usage]] = {
    CHAT: _chat_usage,
    COMPLETION: _chat_usage,
    EMBEDDINGS: _embeddings_usage,
    RESPONSES: responses_usage,
}


def usage_from_request(kwargs: dict) -> Usage:
    """A call counted from its request alone (its answer never read): the input estimated, nothing for the output."""
    return Usage(input_tokens=estimate_tokens(request_text_length(kwargs)), estimated=True)


def usage_from_result(kind: str, result: Any, kwargs: dict) -> Usage:
    return _EXTRACTORS[kind](result, kwargs)


def usage_from_raw(kind: str, parsed: Any, kwargs: dict, headers: Any) -> Usage:
    """A response read with its HTTP headers (``with_raw_response``, ``with_streaming_response``): a gateway's cost
    header stands for the provider's cost unless the body states one (the biller's own figure)."""
    usage = usage_from_result(kind, parsed, kwargs)
    if usage.provider_cost_usd is None:
        usage.provider_cost_usd = header_cost(headers)
    return usage
