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

from spendwatch.instrumentation.bedrock_sdk.package import _instruments
from spendwatch.instrumentation.sdk_instrumentor import SDKInstrumentor

__all__ = ["BedrockInstrumentor"]


class BedrockInstrumentor(SDKInstrumentor):
    """Instruments ``botocore``'s Bedrock Runtime calls. ``instrument()`` takes the usual ``tracer_provider`` /
    ``meter_provider`` and an optional ``price_table`` (a :class:`~spendwatch.instrumentation.pricing.PriceTable`)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _patches_on_import(self):
        # aiobotocore (aioboto3) clients call their own async _make_api_call, never botocore's.
        return (("botocore.client", self._patch), ("aiobotocore.client", self._patch_aio))

    def _patch(self, client_module) -> None:
        from spendwatch.instrumentation.bedrock_sdk import patch

        self._wrap(client_module.BaseClient, "_make_api_call", patch.api_call_wrapper(self._recorder, self._capture))

    def _patch_aio(self, client_module) -> None:
        from spendwatch.instrumentation.bedrock_sdk import aio

        self._wrap(client_module.AioBaseClient, "_make_api_call", aio.api_call_wrapper(self._recorder, self._capture))
