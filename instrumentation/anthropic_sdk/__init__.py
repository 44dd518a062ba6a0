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

import importlib
from collections.abc import Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.anthropic_sdk.package import _instruments
from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.openai_sdk import content_capture_enabled
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env

__all__ = ["AnthropicInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
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


class AnthropicInstrumentor(BaseInstrumentor):
    """Instruments ``anthropic``. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and an
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
        # Patched when the app imports anthropic (at once if it has): a process that never does never pays for it.
        self._on_import = PatchOnImport("anthropic", self._patch)

    def _patch(self, _anthropic) -> None:
        from spendwatch.instrumentation.anthropic_sdk import batches, patch

        recorder, capture = self._recorder, self._capture
        for module_name, class_name, method, is_async in CALL_TARGETS:
            factory = patch.async_wrapper if is_async else patch.sync_wrapper
            self._wrap(module_name, class_name, method, factory(recorder, capture))
        for module_name, class_name, method, is_async in STREAM_HELPER_TARGETS:
            self._wrap(module_name, class_name, method, patch.stream_helper_wrapper(recorder, capture, is_async))
        for module_name, class_name, method, is_async in BATCH_RESULTS_TARGETS:
            factory = batches.async_results_wrapper if is_async else batches.results_wrapper
            self._wrap(module_name, class_name, method, factory(recorder))

    def _wrap(self, module_name: str, class_name: str, method: str, wrapper) -> None:
        owner = getattr(_import_or_none(module_name), class_name, None)
        if owner is None or not hasattr(owner, method):
            return  # an older SDK without this API
        wrap_function_wrapper(owner, method, wrapper)
        self._wrapped_targets.append((owner, method))

    def _uninstrument(self, **kwargs):
        if getattr(self, "_on_import", None) is not None:
            self._on_import.cancel()  # anthropic not imported yet: nothing to patch when it is
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
        """Price the calls made from now on with spendwatch's configured table, unless ``instrument()`` was given a
        table of its own (see ``OpenAIInstrumentor.use_configured_prices``)."""
        recorder = getattr(self, "_recorder", None)
        if recorder is not None and not self._prices_chosen_by_caller:
            recorder.prices = prices


def _import_or_none(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None
