"""OpenTelemetry instrumentation for AWS Bedrock Runtime through ``boto3`` / ``botocore``, with token usage and USD
cost on every span.

Usage::

    from spendwatch.instrumentation.bedrock_sdk import BedrockInstrumentor

    BedrockInstrumentor().instrument()  # or: opentelemetry-instrument python app.py

Covers ``converse``, ``converse_stream``, ``invoke_model`` and ``invoke_model_with_response_stream`` of
``bedrock-runtime`` clients (provider ``aws.bedrock``), boto3's and aiobotocore's (``aioboto3``, see :mod:`.aio`),
for every model family whose usage Bedrock reports. The model
id is priced as given, inference-profile prefix included (``us.``, ``eu.``, ``global.``): genai-prices prices a
cross-region profile apart from the in-region model. Prompts and answers are recorded only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; AWS credentials and signed headers never are.
"""

from __future__ import annotations

from collections.abc import Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.bedrock_sdk.package import _instruments
from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.on_import import PatchOnImport
from spendwatch.instrumentation.openai_sdk import content_capture_enabled
from spendwatch.instrumentation.pricing import PriceTable, price_table_from_env

__all__ = ["BedrockInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"


class BedrockInstrumentor(BaseInstrumentor):
    """Instruments ``botocore``'s Bedrock Runtime calls. ``instrument()`` takes the usual ``tracer_provider`` /
    ``meter_provider`` and an optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

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
        # Patched when the app imports botocore (at once if it has): a process that never does never pays for it.
        self._on_import = PatchOnImport("botocore.client", self._patch)
        # aiobotocore (aioboto3) clients call their own async _make_api_call, never botocore's.
        self._on_aio_import = PatchOnImport("aiobotocore.client", self._patch_aio)

    def _patch(self, client_module) -> None:
        from spendwatch.instrumentation.bedrock_sdk import patch

        wrapper = patch.api_call_wrapper(self._recorder, self._capture)
        wrap_function_wrapper(client_module, "BaseClient._make_api_call", wrapper)
        self._wrapped_targets.append((client_module.BaseClient, "_make_api_call"))

    def _patch_aio(self, client_module) -> None:
        from spendwatch.instrumentation.bedrock_sdk import aio

        wrap_function_wrapper(
            client_module, "AioBaseClient._make_api_call", aio.api_call_wrapper(self._recorder, self._capture)
        )
        self._wrapped_targets.append((client_module.AioBaseClient, "_make_api_call"))

    def _uninstrument(self, **kwargs):
        for attribute in ("_on_import", "_on_aio_import"):
            if getattr(self, attribute, None) is not None:
                getattr(self, attribute).cancel()  # not imported yet: nothing to patch when it is
                setattr(self, attribute, None)
        for owner, method in getattr(self, "_wrapped_targets", ()):
            unwrap(owner, method)
        self._wrapped_targets = []
        if getattr(self, "_recorder", None) is not None:
            self._recorder.active = False  # a stream proxy handed out earlier still ends its own call
        self._recorder = None

    def use_configured_prices(self, prices: PriceTable) -> None:
        """Price the calls made from now on with ``prices``, spendwatch's configured table, unless ``instrument()``
        was given a table of its own (see ``OpenAIInstrumentor.use_configured_prices``)."""
        recorder = getattr(self, "_recorder", None)
        if recorder is not None and not self._prices_chosen_by_caller:
            recorder.prices = prices
