"""Cache hits: a call LightRAG answered from its own LLM cache costs nothing; count it and what it avoided.

LightRAG looks its cache up in ``handle_cache`` and writes it in ``save_to_cache`` (extraction, gleaning and
summaries through ``use_llm_func_with_cache``; keywords and answers directly in ``operate``). On a hit,
:class:`CacheAccounting` emits one usage record with ``operation="cache_hit"``, provider ``lightrag``,
``cost_usd=0.0`` and ``pricing="cache"``, so a hit never adds spend and ``llm_requests_total{operation="cache_hit"}``
counts hits apart from real LLM requests. Its attributes say what the hit avoided:

- ``spendwatch.lightrag.avoided_usd`` — what the original call cost. Exact when this process made that call (each
  ``save_to_cache`` remembers the usage of the call that produced the entry); otherwise estimated from LightRAG's
  tokenizer over the cached prompt and answer, priced at the role's model, and flagged
  ``spendwatch.lightrag.avoided_estimated="true"``. Absent (``avoided_pricing="unpriced"``) when the model has no price.
- ``spendwatch.lightrag.avoided_input_tokens`` / ``avoided_output_tokens`` and ``spendwatch.lightrag.cache_type``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind

from spendwatch.instrumentation import records
from spendwatch.instrumentation.calls import CALL_ATTRIBUTES_KEY, current_category
from spendwatch.instrumentation.lightrag_hku.scopes import CACHE_HIT, Tally, current_scope
from spendwatch.instrumentation.pricing import PriceTable

__all__ = ["CacheAccounting"]

MAX_REMEMBERED = 4096  # cache entries whose original usage is kept (LRU); older hits fall back to an estimate
# LightRAG's cache types and the LLM role whose model answers them (for estimating a hit's price).
_ROLE_BY_CACHE_TYPE = {"extract": "extract", "summary": "extract", "keywords": "keyword", "query": "query"}


class CacheAccounting:
    """Remembers what each cache entry cost to make, and records cache hits."""

    def __init__(self, tracer: trace.Tracer, prices: PriceTable, max_remembered: int = MAX_REMEMBERED) -> None:
        self._tracer = tracer
        self.prices = prices  # replaced when the exporter hands over its configured table
        self._max = max_remembered
        self._originals: OrderedDict[tuple[str, str, str], Tally] = OrderedDict()

    def remember(self, cache_data: Any) -> None:
        """``save_to_cache`` is writing ``cache_data``: the current scope's own calls are what produced it."""
        scope = current_scope()
        if scope is None or scope.own.calls == 0:
            return
        key = (str(cache_data.mode), str(cache_data.cache_type), str(cache_data.args_hash))
        self._originals[key] = dataclasses.replace(scope.own)
        self._originals.move_to_end(key)
        while len(self._originals) > self._max:
            self._originals.popitem(last=False)

    def record_hit(self, hashing_kv: Any, args_hash: str, prompt: str, mode: str, cache_type: str, content: Any):
        original = self._originals.get((str(mode), str(cache_type), str(args_hash)))
        if original is not None:
            model, avoided = original.model or "unknown", original
            cost = None if original.unpriced else original.cost_usd
        else:
            model = _role_model(hashing_kv, cache_type)
            avoided, cost = self._estimate(hashing_kv, model, prompt, content)
        attributes = dict(context.get_value(CALL_ATTRIBUTES_KEY) or {})
        attributes.update(
            {
                "spendwatch.lightrag.cache": "hit",
                "spendwatch.lightrag.cache_type": str(cache_type),
                "spendwatch.lightrag.avoided_input_tokens": str(avoided.input_tokens),
                "spendwatch.lightrag.avoided_output_tokens": str(avoided.output_tokens),
                "spendwatch.lightrag.avoided_estimated": "false" if original is not None else "true",
            }
        )
        if cost is None:
            attributes["spendwatch.lightrag.avoided_pricing"] = "unpriced"
        else:
            attributes["spendwatch.lightrag.avoided_usd"] = repr(float(cost))
        self._emit(model, attributes)

    def _estimate(self, hashing_kv: Any, model: str, prompt: str, content: Any) -> tuple[Tally, float | None]:
        tokenizer = _global_config(hashing_kv).get("tokenizer")
        estimate = Tally(input_tokens=_count_tokens(tokenizer, prompt), output_tokens=_count_tokens(tokenizer, content))
        price = self.prices.lookup(model)
        cost = None if price is None else price.cost(estimate.input_tokens, estimate.output_tokens)
        return estimate, cost

    def _emit(self, model: str, attributes: dict[str, str]) -> None:
        category = current_category()
        record = records.UsageRecord(
            provider="lightrag",
            operation=CACHE_HIT,
            request_model=model,
            cost_usd=0.0,
            pricing="cache",
            start_time=time.time(),
            category=category,
            attributes=attributes,
        )
        span_attributes = {"gen_ai.operation.name": CACHE_HIT, "gen_ai.request.model": model, **attributes}
        if category is not None:
            span_attributes["spendwatch.category"] = category
        span = self._tracer.start_span(f"{CACHE_HIT} {model}", kind=SpanKind.INTERNAL, attributes=span_attributes)
        span_context = span.get_span_context()
        record.trace_id, record.span_id = span_context.trace_id, span_context.span_id
        span.end()
        records.emit(record)


def _global_config(hashing_kv: Any) -> dict:
    config = getattr(hashing_kv, "global_config", None)
    return config if isinstance(config, dict) else {}


def _role_model(hashing_kv: Any, cache_type: str) -> str:
    config = _global_config(hashing_kv)
    identities = config.get("llm_cache_identities")
    role = _ROLE_BY_CACHE_TYPE.get(str(cache_type), "extract")
    identity = identities.get(role) if isinstance(identities, dict) else None
    model = identity.get("model") if isinstance(identity, dict) else None
    return str(model or config.get("llm_model_name") or "unknown")


def _count_tokens(tokenizer: Any, text: Any) -> int:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if tokenizer is not None:
        try:
            return len(tokenizer.encode(text))
        except Exception:  # noqa: BLE001 - a tokenizer that cannot count: fall back to words
            pass
    return len(text.split())
