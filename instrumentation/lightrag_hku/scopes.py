"""Where a LightRAG call happens: the operation (insert, query, …) and the stage inside it, kept in the context.

Each wrapper enters a :class:`Scope` for as long as the wrapped function runs. The scope does two things:

- it merges its attributes (stage, document id, query mode) into
  :data:`~spendwatch.instrumentation.calls.CALL_ATTRIBUTES_KEY`, so every OpenAI call made inside carries them on its
  span and usage record (the ledger's ``attributes`` column);
- it is what :class:`RollupSink` adds each usage record to: the innermost scope's ``own`` tally (what this stage
  itself spent, used to price a later cache hit) and the operation's ``total`` (the roll-up on its span).

Context is copied into every asyncio task and into LightRAG's queue workers (``priority_limit_async_func_call``
runs each call under the context captured at enqueue time), and a copy shares the scope objects, so calls made in
worker tasks still land in the right scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import context

from spendwatch.instrumentation.calls import CALL_ATTRIBUTES_KEY
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["CACHE_HIT", "RollupSink", "Scope", "Tally", "current_scope", "pop", "push"]

CACHE_HIT = "cache_hit"  # the operation name of a call LightRAG answered from its own LLM cache
_SCOPE_KEY = context.create_key("spendwatch.lightrag.scope")


@dataclass(slots=True)
class Tally:
    """Usage records added up. Cache hits are counted apart: they cost nothing and carry what they avoided."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    cache_hits: int = 0
    avoided_usd: float = 0.0
    provider: str | None = None  # of the last call, for pricing a later cache hit of it
    model: str | None = None

    def add(self, record: UsageRecord) -> None:
        if record.operation == CACHE_HIT:
            self.cache_hits += 1
            self.avoided_usd += float(record.attributes.get("spendwatch.lightrag.avoided_usd") or 0.0)
            return
        self.calls += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cache_read_tokens += record.cache_read_tokens
        if record.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += record.cost_usd
        self.provider = record.provider
        self.model = record.request_model

    def span_attributes(self) -> dict:
        """The roll-up for the operation's span. Deliberately not ``gen_ai.usage.*``: backends that sum those
        over a trace would count every dollar twice (once on the OpenAI call, once here)."""
        prefix = "spendwatch.lightrag."
        return {
            prefix + "llm_calls": self.calls,
            prefix + "input_tokens": self.input_tokens,
            prefix + "output_tokens": self.output_tokens,
            prefix + "cache_read_tokens": self.cache_read_tokens,
            prefix + "cost_usd": self.cost_usd,
            prefix + "unpriced_calls": self.unpriced,
            prefix + "cache_hits": self.cache_hits,
            prefix + "avoided_usd": self.avoided_usd,
        }


class Scope:
    """One wrapped LightRAG function in progress; ``root`` is the operation it belongs to (None outside one)."""

    __slots__ = ("root", "own", "total", "doc_ids")

    def __init__(self, root: Scope | None) -> None:
        self.root = root if root is not None else self
        self.own = Tally()
        self.total = Tally()  # everything the operation spent (kept on roots only)
        self.doc_ids: set[str] = set()  # documents an insert's pipeline processed (roots only)


def current_scope() -> Scope | None:
    return context.get_value(_SCOPE_KEY)


def push(attributes: dict[str, str], *, operation: bool = False, ctx: context.Context | None = None):
    """Make a new scope current (a new operation when ``operation``), with ``attributes`` added to the call
    attributes already in force. Returns the scope and the token to hand to :func:`pop`."""
    parent = current_scope()
    scope = Scope(None if operation or parent is None else parent.root)
    inherited = context.get_value(CALL_ATTRIBUTES_KEY)
    merged = {**inherited, **attributes} if inherited else dict(attributes)
    ctx = context.set_value(CALL_ATTRIBUTES_KEY, merged, ctx)
    return scope, context.attach(context.set_value(_SCOPE_KEY, scope, ctx))


def pop(token: object) -> None:
    context.detach(token)


class RollupSink:
    """A usage sink that adds each record to the scope it was made in. It runs on the caller's path, inside the
    call's context, which is how it finds the scope; records made outside any LightRAG scope are ignored."""

    def record(self, record: UsageRecord) -> None:
        scope = context.get_value(_SCOPE_KEY)
        if scope is None:
            return
        scope.own.add(record)
        scope.root.total.add(record)
