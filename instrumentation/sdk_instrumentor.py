"""The bookkeeping every SDK instrumentor shares: its call recorder, its patching on import, and undoing its wraps.

An SDK instrumentor (openai, anthropic, Bedrock, google-genai) subclasses :class:`SDKInstrumentor`, names the
modules whose import patches it in ``_patches_on_import`` and wraps through ``_wrap``, which remembers each target.
``uninstrument()`` then cancels the hooks not yet run, unwraps every target and stops the recorder, so a wrapper
bound while instrumented passes every call straight through from then on.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env

__all__ = ["CAPTURE_CONTENT_ENV", "SDKInstrumentor", "content_capture_enabled"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def content_capture_enabled() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "false").strip().lower() == "true"


def _import_or_none(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None


class SDKInstrumentor(BaseInstrumentor):
    """Base of the SDK instrumentors. ``instrument()`` takes the usual ``tracer_provider`` / ``meter_provider`` and
    an optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def _patches_on_import(self) -> tuple[tuple[str, Callable[[ModuleType], None]], ...]:
        """Pairs of a module name and the method that patches it once the app imports that module."""
        raise NotImplementedError

    def _instrument(self, **kwargs):
        prices = kwargs.get("price_table") or price_table_from_env()
        self._prices_chosen_by_caller = kwargs.get("price_table") is not None
        # The instrumentation scope is the SDK's package, where the subclass is defined.
        scope = type(self).__module__
        tracer = get_tracer(scope, "", kwargs.get("tracer_provider"), schema_url=_SCHEMA_URL)
        meter = get_meter(scope, "", kwargs.get("meter_provider"), schema_url=_SCHEMA_URL)
        self._recorder = CallRecorder(tracer, meter, prices)
        self._capture = content_capture_enabled()
        self._wrapped_targets = []
        # Patched when the app imports the SDK (at once if it has): a process that never does never pays for it.
        self._on_imports = [PatchOnImport(module_name, patch) for module_name, patch in self._patches_on_import()]

    def _wrap_in(self, module_name: str, class_name: str, method: str, wrapper) -> None:
        self._wrap(getattr(_import_or_none(module_name), class_name, None), method, wrapper)

    def _wrap(self, owner, method: str, wrapper) -> None:
        if owner is None or not hasattr(owner, method):
            return  # an older SDK without this API
        wrap_function_wrapper(owner, method, wrapper)
        self._wrapped_targets.append((owner, method))

    def _uninstrument(self, **kwargs):
        # A hook whose SDK is not imported yet does nothing when it is.
        for on_import in getattr(self, "_on_imports", ()):
            on_import.cancel()
        self._on_imports = []
        for owner, method in getattr(self, "_wrapped_targets", ()):
            unwrap(owner, method)
        self._wrapped_targets = []
        if getattr(self, "_recorder", None) is not None:
            # with_raw_response / with_streaming_response bind the method when first touched and keep it, and a
            # stream handed out earlier still ends its own call: both pass straight through from now on.
            self._recorder.active = False
        self._recorder = None

    def use_configured_prices(self, prices: PriceTable) -> None:
        """Price the calls made from now on with ``prices``, spendwatch's configured table, unless ``instrument()``
        was given a table of its own. ``opentelemetry-instrument`` instruments before spendwatch reads its settings
        (a config file's ``prices_file``), so the exporter hands its table over this way."""
        recorder = getattr(self, "_recorder", None)
        if recorder is not None and not self._prices_chosen_by_caller:
            recorder.prices = prices
