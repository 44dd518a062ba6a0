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

from spendwatch.instrumentation.google_genai_sdk.package import _instruments
from spendwatch.instrumentation.sdk_instrumentor import SDKInstrumentor

__all__ = ["GoogleGenAIInstrumentor"]

_MODULE = "google.genai.models"


class GoogleGenAIInstrumentor(SDKInstrumentor):
    """Instruments ``google-genai``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
    optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _patches_on_import(self):
        return ((_MODULE, self._patch),)

    def _patch(self, models_module) -> None:
        from spendwatch.instrumentation.google_genai_sdk import patch
        from spendwatch.instrumentation.google_genai_sdk.targets import ASYNC, ASYNC_STREAM, STREAM, TARGETS

        factories = {ASYNC: patch.async_wrapper, STREAM: patch.stream_wrapper, ASYNC_STREAM: patch.async_stream_wrapper}
        for class_name, method, operation, kind in TARGETS:
            wrapper = factories.get(kind, patch.sync_wrapper)(self._recorder, operation, self._capture)
            self._wrap(getattr(models_module, class_name, None), method, wrapper)
