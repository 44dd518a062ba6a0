"""Reading token usage out of Bedrock Runtime answers, and bounding a request's tokens for the budget guard.

Bedrock reports usage in a different place per operation and model family: a Converse answer's ``usage``, the
``metadata`` event of a ConverseStream, a model-specific field of an InvokeModel body (Anthropic ``usage``, Amazon
Nova ``usage``, Meta Llama ``prompt_token_count``, Amazon Titan ``inputTextTokenCount``), the
``amazon-bedrock-invocationMetrics`` of a response stream's last chunk, and, for every InvokeModel, the
``x-amzn-bedrock-input-token-count`` / ``-output-token-count`` response headers (the only place Mistral and Cohere
models report it). Every count Bedrock gives for input excludes the tokens read from or written to the prompt cache
(as Anthropic's own API does, and as AWS's TokenUsage documents it: ``totalTokens`` adds them up); the GenAI
conventions' input tokens include them, so they are added here.

Everything reads defensively: a malformed answer yields an estimate flagged as such, never an exception.
"""

from __future__ import annotations

import json
from typing import Any

from spendwatch.instrumentation.calls import Usage
from spendwatch.instrumentation.openai_sdk.usage import count, estimate_tokens, input_token_bound, request_text_length

__all__ = [
    "CONVERSE_FIELDS",
    "HEADER_FIELDS",
    "METRICS_FIELDS",
    "body_json",
    "body_usage",
    "cap_location",
    "converse_input_bound",
    "converse_usage",
    "family",
    "headers_of",
    "invoke_input_bound",
    "invoke_usage",
    "request_estimate",
    "request_model",
    "usage_from_fields",
]

# (input, output, cache read, cache write) names where a usage of that shape keeps its counts.
CONVERSE_FIELDS = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
NOVA_FIELDS = ("inputTokens", "outputTokens", "cacheReadInputTokenCount", "cacheWriteInputTokenCount")
ANTHROPIC_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
LLAMA_FIELDS = ("prompt_token_count", "generation_token_count", None, None)
METRICS_FIELDS = ("inputTokenCount", "outputTokenCount", "cacheReadInputTokenCount", "cacheWriteInputTokenCount")
HEADER_FIELDS = (
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-cache-read-input-token-count",
    "x-amzn-bedrock-cache-write-input-token-count",
)


def request_model(model_id: Any) -> str:
    """The model a request names: its ``modelId``, or the id at the end of a foundation-model or inference-profile
    ARN (``arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude-...``), which is what is priced."""
    if type(model_id) is not str or not model_id:
        return "unknown"
    if model_id.startswith("arn:"):
        return model_id.rpartition("/")[2] or model_id
    return model_id


def _number(value: Any) -> int | None:
    """A count from JSON (an int) or from a header (a string of digits)."""
    if type(value) is str and value.isdigit():
        return int(value)
    return count(value)


def usage_from_fields(raw: Any, fields: tuple, usage: Usage | None = None) -> Usage | None:
    """The usage ``raw`` (a dict) reports under ``fields``; what it lacks is left as in ``usage``. None when ``raw``
    reports neither input nor output."""
    if not isinstance(raw, dict):
        return usage
    input_name, output_name, read_name, write_name = fields
    input_tokens, output_tokens = _number(raw.get(input_name)), _number(raw.get(output_name))
    if input_tokens is None and output_tokens is None:
        return usage
    if usage is None:
        usage = Usage(estimated=input_tokens is None or output_tokens is None)
    cache_read = (_number(raw.get(read_name)) or 0) if read_name else 0
    cache_write = (_number(raw.get(write_name)) or 0) if write_name else 0
    if input_tokens is not None:
        usage.input_tokens = input_tokens + cache_read + cache_write
        usage.cache_read_tokens, usage.cache_write_tokens = cache_read, cache_write
    if output_tokens is not None:
        usage.output_tokens = output_tokens
    return usage


def converse_usage(result: Any, api_params: dict) -> Usage:
    """A Converse answer's ``usage`` (also a ConverseStream ``metadata`` event's), its cache writes held an hour
    (``cacheDetails``) and the service tier that served it."""
    if not isinstance(result, dict):
        return request_estimate(api_params)
    raw = result.get("usage")
    usage = usage_from_fields(raw, CONVERSE_FIELDS)
    if usage is None:
        usage = request_estimate(api_params)
    elif "cacheDetails" in raw:
        held_1h = sum(_number(detail.get("inputTokens")) or 0 for detail in raw["cacheDetails"] if _1h(detail))
        if held_1h:
            usage.units = {"cache_write_1h_tokens": held_1h}
    tier = result.get("serviceTier")
    if isinstance(tier, dict) and type(tier.get("type")) is str:
        usage.service_tier = tier["type"]
    return usage


def _1h(detail: Any) -> bool:
    return isinstance(detail, dict) and detail.get("ttl") == "1h"


def headers_of(result: Any) -> dict:
    """The HTTP response headers botocore keeps in ``ResponseMetadata`` (lower-case names)."""
    metadata = result.get("ResponseMetadata") if isinstance(result, dict) else None
    headers = metadata.get("HTTPHeaders") if isinstance(metadata, dict) else None
    return headers if isinstance(headers, dict) else {}


def _anthropic_usage(body: dict) -> Usage | None:
    raw = body.get("usage")
    usage = usage_from_fields(raw, ANTHROPIC_FIELDS)
    if usage is not None:
        held_1h = _number((raw.get("cache_creation") or {}).get("ephemeral_1h_input_tokens"))
        if held_1h:
            usage.units = {"cache_write_1h_tokens": held_1h}
    return usage


def _titan_usage(body: dict) -> Usage | None:
    results = body.get("results")
    output = sum(_number(item.get("tokenCount")) or 0 for item in results if isinstance(item, dict))
    return usage_from_fields({"input": body.get("inputTextTokenCount"), "output": output}, ("input", "output", "", ""))


def body_usage(body: Any) -> Usage | None:
    """The usage an InvokeModel answer's JSON body reports, whatever the model family; None when it reports none."""
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if isinstance(usage, dict):
        if "input_tokens" in usage or "output_tokens" in usage:
            return _anthropic_usage(body)
        return usage_from_fields(usage, NOVA_FIELDS)
    if "prompt_token_count" in body or "generation_token_count" in body:
        return usage_from_fields(body, LLAMA_FIELDS)
    if "inputTextTokenCount" in body and isinstance(body.get("results"), list):
        return _titan_usage(body)
    return None


def invoke_usage(body: Any, headers: dict, api_params: dict) -> Usage:
    """An InvokeModel answer: the body's usage, else (Mistral, Cohere) the token-count headers, else an estimate."""
    usage = body_usage(body)
    if usage is None or usage.estimated:
        usage = usage_from_fields(headers, HEADER_FIELDS, usage)
    if usage is None:
        usage = request_estimate(api_params)
    tier = headers.get("x-amzn-bedrock-service-tier")
    if type(tier) is str and tier:
        usage.service_tier = tier
    return usage


def body_json(data: Any) -> Any:
    """A JSON body (bytes or str) parsed, or None when it is not JSON."""
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return None


def _converse_text(api_params: dict) -> dict:
    """A Converse request's text in the shape the OpenAI request readers take (messages, instructions, tools)."""
    return {
        "messages": api_params.get("messages"),
        "instructions": api_params.get("system"),
        "tools": api_params.get("toolConfig"),
    }


def request_estimate(api_params: dict) -> Usage:
    """A call counted from its request alone: the input estimated from its text, nothing for the output."""
    body = api_params.get("body")
    if body is not None:
        characters = len(body) if isinstance(body, bytes | str) else 0
    else:
        characters = request_text_length(_converse_text(api_params))
    return Usage(input_tokens=estimate_tokens(characters), estimated=True)


def converse_input_bound(api_params: dict) -> int:
    return input_token_bound(_converse_text(api_params))


def invoke_input_bound(body: Any) -> int:
    """An InvokeModel body's input tokens can be no more than its UTF-8 bytes (every family's body is JSON text)."""
    if isinstance(body, str):
        return len(body.encode("utf-8", "surrogatepass")) + 8
    return len(body) + 8 if isinstance(body, bytes | bytearray) else 0


# Where an InvokeModel body caps the output, per model family (the vendor part of the model id).
_CAP_PATHS = {
    "anthropic": ("max_tokens",),
    "mistral": ("max_tokens",),
    "cohere": ("max_tokens",),
    "meta": ("max_gen_len",),
    "amazon.nova": ("inferenceConfig", "max_new_tokens"),
    "amazon.titan": ("textGenerationConfig", "maxTokenCount"),
}


def family(model: str) -> str | None:
    """The model family of a model id, past any inference-profile prefix (``us.``, ``eu.``, ``global.``...)."""
    for name in _CAP_PATHS:
        if model.startswith(name) or f".{name}" in model:
            return name
    return None


def cap_location(model: str, body: Any) -> tuple[tuple[str, ...] | None, int | None]:
    """Where an InvokeModel body of ``model``'s family caps its output, and the cap it sets (None: none, or a family
    whose cap we do not know)."""
    path = _CAP_PATHS.get(family(model) or "")
    if path is None or not isinstance(body, dict):
        return path, None
    value: Any = body
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return path, count(value)
