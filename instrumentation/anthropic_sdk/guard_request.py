"""What a Messages request says about its price beyond tokens, for the budget guard's worst case: the service tier it
asks for, whether it can write to the prompt cache, and the server tools Anthropic runs within it (web search is
billed per search; each tool use adds a model turn)."""

from __future__ import annotations

from typing import Any

from spendwatch.instrumentation.openai_sdk.guard_request import _base_type

__all__ = ["price_terms"]

# Server tool types (without their date) and the unit each use is billed in ("" for none of its own). Client tools
# (custom, bash, text editor, computer use) are run by the app, in a request of its own.
_SERVER_TOOLS = {"web_search": "web_search_calls", "web_fetch": "", "code_execution": ""}
# Anthropic's tiers as asked: "standard_only" never runs at priority, "auto" may (the guard's auto_service_tier).
_TIERS = {"auto": "auto", "standard_only": "default"}
_CACHEABLE = ("system", "messages", "tools")


def price_terms(kwargs: dict) -> dict:
    """Keyword arguments for :class:`~spendwatch.instrumentation.admission.CallRequest`."""
    terms: dict = {"cache_write_possible": _may_write_cache(kwargs)}
    tier = _TIERS.get(kwargs.get("service_tier"))
    if tier is not None:
        terms["service_tier"] = tier
    units, uses, bounded, server = set(), 0, True, False
    for tool in kwargs.get("tools") or ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        unit = _SERVER_TOOLS.get(_base_type(kind)) if isinstance(kind, str) else None
        if unit is None:
            continue
        server = True
        if unit:
            units.add(unit)
        limit = tool.get("max_uses")
        if type(limit) is int and limit >= 0:
            uses += limit
        else:
            bounded = False
    if server:
        terms["server_tools"] = True
        terms["tool_units"] = tuple(sorted(units))
        if bounded:
            terms["max_tool_calls"] = uses
    return terms


def _may_write_cache(kwargs: dict) -> bool:
    """Anthropic writes to the prompt cache only where the request puts a ``cache_control`` mark."""
    if kwargs.get("cache_control") is not None:
        return True
    return any("cache_control" in _text_of(kwargs.get(key)) for key in _CACHEABLE)


def _text_of(value: Any) -> str:
    return "" if value is None else repr(value)
