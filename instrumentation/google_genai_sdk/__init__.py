"""OpenTelemetry instrumentation for Google's ``google-genai`` SDK with token usage and USD cost on every span.

Usage::

    from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor

    GoogleGenAIInstrumentor().instrument()  # or: opentelemetry-instrument python app.py

Covers ``generate_content`` (one span per request sent, so each round of automatic function calling is counted),
``generate_content_stream`` and ``embed_content`` on ``client.models`` and ``client.aio.models`` (``count_tokens`` is
free and not recorded), for Gemini API clients (provider ``gcp.gemini``) and Vertex AI clients
(``gcp.vertex_ai``). Prompts and completions are recorded only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; API keys and credentials never are.
"""

from __future__ import annotations

from collections.abc import Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.google_genai_sdk.package import _instruments
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.openai_sdk import content_capture_enabled
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env

__all__ = ["GoogleGenAIInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
_MODULE = "google.genai.models"


class GoogleGenAIInstrumentor(BaseInstrumentor):
    """Instruments ``google-genai``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
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
        # Patched when the app imports google.genai's models (at once if it has): no import cost until then.
        self._on_import = PatchOnImport(_MODULE, self._patch)

    def _patch(self, models_module) -> None:
        from spendwatch.instrumentation.google_genai_sdk import patch
        from spendwatch.instrumentation.google_genai_sdk.targets import ASYNC, ASYNC_STREAM, STREAM, TARGETS

        factories = {ASYNC: patch.async_wrapper, STREAM: patch.stream_wrapper, ASYNC_STREAM: patch.async_stream_wrapper}
        for class_name, method, operation, kind in TARGETS:
            owner = getattr(models_module, class_name, None)
            if owner is None or not hasattr(owner, method):
                continue  # an SDK release without this method
            factory = factories.get(kind, patch.sync_wrapper)
            wrap_function_wrapper(owner, method, factory(self._recorder, operation, self._capture))
            self._wrapped_targets.append((owner, method))

    def _uninstrument(self, **kwargs):
        if getattr(self, "_on_import", None) is not None:
            self._on_import.cancel()  # google.genai not imported yet: nothing to patch when it is
            self._on_import = None
        for owner, method in getattr(self, "_wrapped_targets", ()):
            unwrap(owner, method)
        self._wrapped_targets = []
        if getattr(self, "_recorder", None) is not None:
            self._recorder.active = False  # a stream started while instrumented passes its chunks straight through
        self._recorder = None

    def use_configured_prices(self, prices: PriceTable) -> None:
        """Price the calls made from now on with spendwatch's configured table, unless ``instrument()`` was given
        one (see ``OpenAIInstrumentor.use_configured_prices``)."""
        recorder = getattr(self, "_recorder", None)
        if recorder is not None and not self._prices_chosen_by_caller:
            recorder.prices = prices
