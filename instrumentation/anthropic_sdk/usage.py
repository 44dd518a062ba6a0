"""Reading token usage out of Anthropic Messages API results, and bounding or estimating it from the request.

Anthropic's ``input_tokens`` leaves out the tokens read from and written to the prompt cache; the GenAI conventions'
``gen_ai.usage.input_tokens`` includes them. So the input counted here is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, with the cache reads and writes as its subsets. Extended thinking is already inside
``output_tokens``. Everything reads defensively: the SDK builds its models without validation, so a field may hold
anything, and a missing count is estimated and flagged, never raised over.
"""

from __future__ import annotations

from typing import Any

from spendwatch.instrumentation.calls import Usage
from spendwatch.instrumentation.openai_sdk.usage import (
    count,
    estimate_tokens,
    input_token_bound,
    request_text_length,
    text,
)

__all__ = [
    "WEB_SEARCH_CALLS",
    "CACHE_WRITE_1H_TOKENS",
    "fill_usage",
    "request_input_bound",
    "request_input_estimate",
    "usage_from_message",
    "usage_from_request",
]

WEB_SEARCH_CALLS = "web_search_calls"
CACHE_WRITE_1H_TOKENS = "cache_write_1h_tokens"
# Anthropic's tiers: "standard" is what every response says unless the caller asked for priority.
_TIERS = {"priority": "priority", "batch": "batch"}


def _as_openai_shaped(kwargs: dict) -> dict:
    """The request's text under the keys the shared helpers read: ``system`` is Anthropic's instructions."""
    return {
        "messages": kwargs.get("messages"),
        "instructions": kwargs.get("system"),
        "tools": kwargs.get("tools"),
    }


def request_input_bound(kwargs: dict) -> int:
    """An upper bound on a request's input tokens, for the budget guard (UTF-8 bytes plus framing)."""
    return input_token_bound(_as_openai_shaped(kwargs))


def request_input_estimate(kwargs: dict) -> int:
    """The input tokens a request likely has, from its text (only where the response reported none)."""
    return estimate_tokens(request_text_length(_as_openai_shaped(kwargs)))


def fill_usage(usage: Usage, raw: Any) -> bool:
    """Copy an Anthropic ``usage`` object into ``usage``; returns False when it has no input/output counts to read."""
    plain_input = count(getattr(raw, "input_tokens", None))
    output = count(getattr(raw, "output_tokens", None))
    if plain_input is None or output is None:
        return False
    cache_read = count(getattr(raw, "cache_read_input_tokens", None)) or 0
    cache_write = count(getattr(raw, "cache_creation_input_tokens", None)) or 0
    usage.input_tokens = plain_input + cache_read + cache_write
    usage.output_tokens = output
    usage.cache_read_tokens = cache_read
    usage.cache_write_tokens = cache_write
    usage.reasoning_tokens = count(getattr(getattr(raw, "output_tokens_details", None), "thinking_tokens", None)) or 0
    units = None
    held_an_hour = count(getattr(getattr(raw, "cache_creation", None), "ephemeral_1h_input_tokens", None))
    if held_an_hour:
        units = {CACHE_WRITE_1H_TOKENS: held_an_hour}
    searches = count(getattr(getattr(raw, "server_tool_use", None), "web_search_requests", None))
    if searches:
        units = {**(units or {}), WEB_SEARCH_CALLS: searches}
    usage.units = units
    tier = text(getattr(raw, "service_tier", None))
    if tier is not None:
        usage.service_tier = _TIERS.get(tier)
    return True


def usage_from_message(message: Any, kwargs: dict) -> Usage:
    """A ``Message`` (or ``BetaMessage``, ``ParsedMessage``): its model, and its usage or an estimate of it."""
    usage = Usage(response_model=text(getattr(message, "model", None)))
    if not fill_usage(usage, getattr(message, "usage", None)):
        usage.input_tokens = request_input_estimate(kwargs)
        usage.output_tokens = estimate_tokens(_content_length(message))
        usage.estimated = True
    return usage


def _content_length(message: Any) -> int:
    total = 0
    content = getattr(message, "content", None)
    for block in content if isinstance(content, list) else ():
        total += len(text(getattr(block, "text", None)) or "") + len(text(getattr(block, "thinking", None)) or "")
    return total


def usage_from_request(kwargs: dict) -> Usage:
    """A call counted from its request alone (its answer never read): the input estimated, nothing for the output."""
    return Usage(input_tokens=request_input_estimate(kwargs), estimated=True)
