"""``spendwatch.category(...)``: which research category (or feature, or team) an LLM call's spend belongs to.

The category travels as OpenTelemetry baggage (key ``spendwatch.category``), so it follows the OpenTelemetry
context across threads and asyncio tasks the way OpenTelemetry does, and into every call LightRAG makes for you.
It is also kept in a context variable of spendwatch's own, so a web framework's instrumentation that attaches a
fresh context (extracted from the request headers) inside the block does not lose it.
A category that is too long or holds unexpected characters never breaks a call: it is recorded as ``other``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

from spendwatch.instrumentation.calls import CategoryTokens, attach_category, detach_category
from spendwatch.instrumentation.categories import OTHER, VALID_CATEGORY, clean_category, is_valid_category

__all__ = ["category", "clean_category", "is_valid_category", "OTHER", "VALID_CATEGORY"]


class category(contextlib.ContextDecorator):  # noqa: N801 - used like a function: `with spendwatch.category(...)`
    """Attribute every LLM call inside to ``name``: ``with spendwatch.category("x"):`` or as a decorator."""

    def __init__(self, name: str) -> None:
        self.name = clean_category(name)
        self._tokens: list[CategoryTokens] = []

    def _recreate_cm(self) -> category:
        # A decorated function may run in many threads at once: each run gets its own context token.
        return category(self.name)

    def __enter__(self) -> category:
        self._tokens.append(attach_category(self.name))
        return self

    def __exit__(self, *exc_info: object) -> None:
        detach_category(self._tokens.pop())

    def __call__(self, function):
        if inspect.iscoroutinefunction(function):
            # ContextDecorator would only cover creating the coroutine, not running it.
            @functools.wraps(function)
            async def categorised(*args, **kwargs):
                with self._recreate_cm():
                    return await function(*args, **kwargs)

            return categorised
        return super().__call__(function)
