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

from collections.abc import Collection

from spendwatch.instrumentation.openai_sdk.package import _instruments
from spendwatch.instrumentation.sdk_instrumentor import SDKInstrumentor

__all__ = ["OpenAIInstrumentor"]


class OpenAIInstrumentor(SDKInstrumentor):
    """Instruments ``openai``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
    optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _patches_on_import(self):
        return (("openai", self._patch),)

    def _patch(self, _openai) -> None:
        from spendwatch.instrumentation.openai_sdk import attempts, background_responses, patch

        recorder, capture = self._recorder, self._capture
        for module_name, class_name, method, kind, operation, is_async in patch.TARGETS:
            factory = patch.async_wrapper if is_async else patch.sync_wrapper
            self._wrap_in(module_name, class_name, method, factory(recorder, kind, operation, capture))
        for module_name, class_name, is_async in patch.HELPER_TARGETS:
            close = patch.async_helper_close if is_async else patch.helper_close
            self._wrap_in(module_name, class_name, "close", close)
        for module_name, class_name, method, is_async in background_responses.RETRIEVAL_TARGETS:
            read = background_responses.async_retrieved if is_async else background_responses.retrieved
            self._wrap_in(module_name, class_name, method, read)
        # An SDK that retries some other way has only its last attempt counted.
        for module_name, class_name, is_async in attempts.RETRY_TARGETS:
            retrying = attempts.async_retrying if is_async else attempts.retrying
            self._wrap_in(module_name, class_name, "_sleep_for_retry", retrying)
