"""What an OpenAI request says about its price beyond tokens, for the budget guard's worst case: the service tier
it asks for, and the tools OpenAI runs within the request (each call billed, each adding a model turn)."""

from __future__ import annotations

__all__ = ["price_terms"]

# Responses API tool types OpenAI runs itself, and the unit each call of it is billed in ("" for none of its own).
# Function, custom and computer-use tools are run by the app, in a request of its own.
_SERVER_TOOLS = {
    "web_search": "web_search_calls",
    "web_search_preview": "web_search_calls",
    "file_search": "file_search_calls",
    "code_interpreter": "code_interpreter_sessions",
    "mcp": "",
    "image_generation": "",
}
_NOTHING: dict = {}
_ARGUMENTS = frozenset({"service_tier", "tools", "web_search_options", "max_tool_calls"})


def price_terms(kwargs: dict) -> dict:
    """Keyword arguments for :class:`~spendwatch.instrumentation.admission.CallRequest` (none for the usual call)."""
    if _ARGUMENTS.isdisjoint(kwargs):
        return _NOTHING
    terms: dict = {}
    tier = kwargs.get("service_tier")
    if isinstance(tier, str):
        terms["service_tier"] = tier
    units = set()
    server = False
    for tool in kwargs.get("tools") or ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        unit = _SERVER_TOOLS.get(_base_type(kind)) if isinstance(kind, str) else None
        if unit is not None:
            server = True
            if unit:
                units.add(unit)
    if kwargs.get("web_search_options") is not None:  # a Chat Completions search model searches for the answer
        server = True
        units.add("web_search_calls")
    if server:
        terms["server_tools"] = True
        terms["tool_units"] = tuple(sorted(units))
    bound = kwargs.get("max_tool_calls")
    if type(bound) is int and bound >= 0:
        terms["max_tool_calls"] = bound
    return terms


def _base_type(kind: str) -> str:
    """A dated tool type without its date: "web_search_preview_2025_03_11" → "web_search_preview"."""
    head, _, tail = kind.rpartition("_")
    while head and tail.isdigit():
        kind = head
        head, _, tail = kind.rpartition("_")
    return kind
