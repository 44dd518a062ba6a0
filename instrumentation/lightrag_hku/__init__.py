"""OpenTelemetry instrumentation for LightRAG (``lightrag-hku``): what indexing and querying cost, by stage.

Usage::

    from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor

    LightRAGInstrumentor().instrument()  # or: opentelemetry-instrument python app.py

Each public operation (``insert``/``ainsert``, ``query``/``aquery``, ``query_llm``, ``query_data``,
``apipeline_process_enqueue_documents``, ``adelete_by_doc_id``) gets one INTERNAL span ``lightrag.{operation}``,
and the LLM calls LightRAG makes (recorded by the OpenAI, Anthropic or Google GenAI instrumentation, which must be
instrumented too; its Ollama binding's by this one, see :mod:`.ollama`) become its children, carrying
``spendwatch.lightrag.stage`` (extraction, gleaning, summary, keywords, answer, embedding, multimodal, …),
``spendwatch.lightrag.doc_id``, ``spendwatch.lightrag.query_mode`` and
``spendwatch.lightrag.operation`` on their spans and usage records. The operation span carries a roll-up of its
calls (``spendwatch.lightrag.cost_usd``, ``…input_tokens``, ``…cache_hits``, ``…avoided_usd``, …) for convenience;
spend is counted once, on the calls. A call answered from LightRAG's LLM cache is recorded as a free
``cache_hit`` with the spend it avoided (see :mod:`.cache`).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.lightrag_hku.package import _instruments
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env
from spendwatch.instrumentation.records import register_sink, unregister_sink

__all__ = ["LightRAGInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"


class LightRAGInstrumentor(BaseInstrumentor):
    """Instruments ``lightrag-hku``. ``instrument()`` takes the usual ``tracer_provider`` and an optional
    ``price_table`` (used to price what a cache hit avoided when the original call was not seen)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs):
        from spendwatch.instrumentation.lightrag_hku.cache import CacheAccounting
        from spendwatch.instrumentation.lightrag_hku.scopes import RollupSink

        prices = kwargs.get("price_table") or price_table_from_env()
        self._prices_chosen_by_caller = kwargs.get("price_table") is not None
        self._tracer = get_tracer(__name__, "", kwargs.get("tracer_provider"), schema_url=_SCHEMA_URL)
        self._rollup = RollupSink()
        register_sink(self._rollup)
        self._cache_accounting = CacheAccounting(self._tracer, prices)
        self._wrapped_targets = []
        # Patched when the app imports lightrag (at once if it has): importing it costs ~100 MiB.
        self._on_import = PatchOnImport("lightrag", self._patch)
        # LightRAG's Ollama binding calls the ``ollama`` client, which no other instrumentor covers (see .ollama).
        meter = get_meter(__name__, "", kwargs.get("meter_provider"), schema_url=_SCHEMA_URL)
        self._ollama_recorder = CallRecorder(self._tracer, meter, prices)
        self._on_ollama_import = PatchOnImport("lightrag.llm.ollama", self._patch_ollama)

    def _patch(self, _lightrag) -> None:
        from spendwatch.instrumentation.lightrag_hku import patch

        self._wrapped_targets += patch.apply(self._tracer, self._cache_accounting)

    def _patch_ollama(self, _binding) -> None:
        from spendwatch.instrumentation.lightrag_hku import ollama

        # By module path: the package's own ``ollama._client`` attribute is its default Client, not the module.
        client_module = importlib.import_module("ollama._client")
        for target, operation in ollama.TARGETS:
            wrap_function_wrapper(client_module, target, ollama.api_wrapper(self._ollama_recorder, operation))
            owner, name = target.split(".")
            self._wrapped_targets.append((getattr(client_module, owner), name))

    def _uninstrument(self, **kwargs):
        for attribute in ("_on_import", "_on_ollama_import"):
            if getattr(self, attribute, None) is not None:
                getattr(self, attribute).cancel()  # not imported yet: nothing to patch when it is
                setattr(self, attribute, None)
        if getattr(self, "_ollama_recorder", None) is not None:
            self._ollama_recorder.active = False  # a stream handed out earlier still ends its own call
        for owner, name in getattr(self, "_wrapped_targets", ()):
            unwrap(owner, name)
        self._wrapped_targets = []
        rollup = getattr(self, "_rollup", None)
        if rollup is not None:
            unregister_sink(rollup)
            self._rollup = None
        self._cache_accounting = None

    def use_configured_prices(self, prices: PriceTable) -> None:
        """Price what cache hits avoided with spendwatch's configured table from now on, unless ``instrument()`` was
        given a table of its own (see ``OpenAIInstrumentor.use_configured_prices``)."""
        accounting = getattr(self, "_cache_accounting", None)
        if accounting is not None and not self._prices_chosen_by_caller:
            accounting.prices = prices
            self._ollama_recorder.prices = prices
