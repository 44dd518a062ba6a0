"""What an Anthropic Messages request tells the budget guard about its price beyond tokens (a table of cases)."""

from __future__ import annotations

import pytest

from spendwatch.instrumentation.anthropic_sdk.guard_request import price_terms

MESSAGES = [{"role": "user", "content": "hi"}]
CACHED = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
FUNCTION = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("request_kwargs", "terms"),
    [
        pytest.param({"messages": MESSAGES}, {"cache_write_possible": False}, id="plain: no cache mark, no tools"),
        pytest.param({"messages": CACHED}, {"cache_write_possible": True}, id="a cache_control mark in a message"),
        pytest.param(
            {"messages": MESSAGES, "cache_control": {"type": "ephemeral"}},
            {"cache_write_possible": True},
            id="automatic caching",
        ),
        pytest.param(
            {"messages": MESSAGES, "service_tier": "standard_only"},
            {"cache_write_possible": False, "service_tier": "default"},
            id="standard only",
        ),
        pytest.param(
            {"messages": MESSAGES, "service_tier": "auto"},
            {"cache_write_possible": False, "service_tier": "auto"},
            id="auto tier",
        ),
        pytest.param(
            {"messages": MESSAGES, "tools": [FUNCTION, SEARCH]},
            {"cache_write_possible": False, "server_tools": True, "tool_units": ("web_search_calls",)},
            id="web search without max_uses",
        ),
        pytest.param(
            {"messages": MESSAGES, "tools": [{**SEARCH, "max_uses": 3}, {"type": "web_fetch_20250910"}]},
            {"cache_write_possible": False, "server_tools": True, "tool_units": ("web_search_calls",)},
            id="web fetch without max_uses leaves the uses unbounded",
        ),
        pytest.param(
            {"messages": MESSAGES, "tools": [{**SEARCH, "max_uses": 3}]},
            {
                "cache_write_possible": False,
                "server_tools": True,
                "tool_units": ("web_search_calls",),
                "max_tool_calls": 3,
            },
            id="web search with max_uses",
        ),
        pytest.param(
            {"messages": MESSAGES, "tools": [FUNCTION]}, {"cache_write_possible": False}, id="client tools only"
        ),
    ],
)
def test_price_terms(request_kwargs, terms):
    assert price_terms(request_kwargs) == terms
