"""OpenTelemetry instrumentation for the official ``anthropic`` SDK with token usage and USD cost on every span.

Usage::

    from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor

    AnthropicInstrumentor().instrument()  # or: opentelemetry-instrument python app.py

Covers ``messages.create`` (streamed or not), ``messages.parse``, the ``messages.stream()`` helper, the same on
``beta.messages``, ``with_raw_response`` / ``with_streaming_response``, and Message Batches results (counted when read,
at the batch discount), sync and async, on ``Anthropic``, ``AnthropicBedrock`` (provider ``aws.bedrock``) and
``AnthropicVertex`` (``gcp.vertex_ai``) clients. ``messages.count_tokens`` is free and not counted. Prompts and
completions are recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

Recent SDK releases make a span of their own per API call (``anthropic.messages.create``). spendwatch's call span is
current while the SDK works, so the SDK's span is its child: one call, one cost, on spendwatch's span and record.
"""

from __future__ import annotations

from collections.abc import Collection

from spendwatch.instrumentation.anthropic_sdk.package import _instruments
from spendwatch.instrumentation.sdk_instrumentor import SDKInstrumentor

__all__ = ["AnthropicInstrumentor"]

_MESSAGES = "anthropic.resources.messages.messages"
_BETA_MESSAGES = "anthropic.resources.beta.messages.messages"
_BATCHES = "anthropic.resources.messages.batches"
_BETA_BATCHES = "anthropic.resources.beta.messages.batches"

# (module, class, method, is_async)
CALL_TARGETS = tuple(
    (module, prefix + "Messages", method, prefix == "Async")
    for module in (_MESSAGES, _BETA_MESSAGES)
    for prefix in ("", "Async")
    for method in ("create", "parse")
)
STREAM_HELPER_TARGETS = tuple(
    (module, prefix + "Messages", "stream", prefix == "Async")
    for module in (_MESSAGES, _BETA_MESSAGES)
    for prefix in ("", "Async")
)
BATCH_RESULTS_TARGETS = tuple(
    (module, prefix + "Batches", "results", prefix == "Async")
    for module in (_BATCHES, _BETA_BATCHES)
    for prefix in ("", "Async")
)


class AnthropicInstrumentor(SDKInstrumentor):
    """Instruments ``anthropic``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
    optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _patches_on_import(self):
        return (("anthropic", self._patch),)

    def _patch(self, _anthropic) -> None:
        from spendwatch.instrumentation.anthropic_sdk import batches, patch

        recorder, capture = self._recorder, self._capture
        for module_name, class_name, method, is_async in CALL_TARGETS:
            factory = patch.async_wrapper if is_async else patch.sync_wrapper
            self._wrap_in(module_name, class_name, method, factory(recorder, capture))
        for module_name, class_name, method, is_async in STREAM_HELPER_TARGETS:
            self._wrap_in(module_name, class_name, method, patch.stream_helper_wrapper(recorder, capture, is_async))
        for module_name, class_name, method, is_async in BATCH_RESULTS_TARGETS:
            factory = batches.async_results_wrapper if is_async else batches.results_wrapper
            self._wrap_in(module_name, class_name, method, factory(recorder))
