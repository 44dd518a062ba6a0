"""OpenTelemetry instrumentation for the official ``openai`` SDK with token usage and USD cost on every span.

Usage::

    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()  # or: opentelemetry-instrument python app.py

Covers chat completions (``create``/``parse``, streaming), the Responses API, embeddings and legacy completions,
images, audio (speech, transcriptions, translations) and moderations, sync and async, ``with_raw_response`` and
Azure clients; each retried attempt the provider may have billed is counted too. Prompts and completions are
recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``. Prices come from bundled data plus
``SPENDWATCH_PRICES_FILE`` (``spendwatch.configure()`` later hands over its own table, which also honours a config
file's ``prices_file``); a model without a price is marked ``spendwatch.pricing="unpriced"``, never costed at $0.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.openai_sdk.package import _instruments
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env

__all__ = ["OpenAIInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def content_capture_enabled() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "false").strip().lower() == "true"


class OpenAIInstrumentor(BaseInstrumentor):
    """Instruments ``openai``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
    optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs):
        prices = kwargs.get("price_table") or price_table_from_env()
        self._prices_chosen_by_caller = kwargs.get("price_table") is not None
        tracer = get_tracer(__name__, "", kwargs.get("tracer_provider"), schema_url=_SCHEMA_URL)
        meter = get_meter(__name__, "", kwargs.get("meter_provider"), schema_url=_SCHEMA_URL)
        self._recorder = CallRecorder(tracer, meter, prices)
        self._capture = content_capture_enabled()
        self._wrapped_targets = []
        # Patched when the app imports openai (at once if it has): a process that never does never pays for it.
        self._on_import = PatchOnImport("openai", self._patch)

    def _patch(self, _openai) -> None:
        from spendwatch.instrumentation.openai_sdk import attempts, background_responses, patch

        recorder, capture = self._recorder, self._capture
        for module_name, class_name, method, kind, operation, is_async in patch.TARGETS:
            factory = patch.async_wrapper if is_async else patch.sync_wrapper
            self._wrap(module_name, class_name, method, factory(recorder, kind, operation, capture))
        for module_name, class_name, is_async in patch.HELPER_TARGETS:
            self._wrap(module_name, class_name, "close", patch.async_helper_close if is_async else patch.helper_close)
        for module_name, class_name, method, is_async in background_responses.RETRIEVAL_TARGETS:
            read = background_responses.async_retrieved if is_async else background_responses.retrieved
            self._wrap(module_name, class_name, method, read)
        # An SDK that retries some other way has only its last attempt counted.
        for module_name, class_name, is_async in attempts.RETRY_TARGETS:
            retrying = attempts.async_retrying if is_async else attempts.retrying
            self._wrap(module_name, class_name, "_sleep_for_retry", retrying)

    def _wrap(self, module_name: str, class_name: str, method: str, wrapper) -> None:
        owner = getattr(_import_or_none(module_name), class_name, None)
        if owner is None or not hasattr(owner, method):
            return  # an older SDK without this API
        wrap_function_wrapper(owner, method, wrapper)
        self._wrapped_targets.append((owner, method))

    def _uninstrument(self, **kwargs):
        if getattr(self, "_on_import", None) is not None:
            self._on_import.cancel()  # openai not imported yet: nothing to patch when it is
            self._on_import = None
        for owner, method in getattr(self, "_wrapped_targets", ()):
            unwrap(owner, method)
        self._wrapped_targets = []
        if getattr(self, "_recorder", None) is not None:
            # with_raw_response / with_streaming_response bind the method when first touched and keep it:
            # a wrapper bound while instrumented passes every call straight through from now on.
            self._recorder.active = False
        self._recorder = None

    def use_configured_prices(self, prices: PriceTable) -> None:
        """Price the calls made from now on with ``prices``, spendwatch's configured table, unless ``instrument()``
        was given a table of its own. ``opentelemetry-instrument`` instruments before spendwatch reads its settings
        (a config file's ``prices_file``), so the exporter hands its table over this way."""
        recorder = getattr(self, "_recorder", None)
        if recorder is not None and not self._prices_chosen_by_caller:
            recorder.prices = prices


def _import_or_none(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None
