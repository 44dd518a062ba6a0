"""What a GenAI span says a call used, whichever instrumentation made it: :func:`usage_of_span`.

Instrumentations name the same facts differently. Read here, most specific name first:

- OpenTelemetry GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/):
  ``gen_ai.provider.name``, ``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.response.model``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.usage.cache_read.input_tokens``,
  ``gen_ai.usage.cache_creation.input_tokens``, ``error.type``; and their older names still emitted in the wild:
  ``gen_ai.system`` and ``gen_ai.usage.prompt_tokens`` / ``completion_tokens``. spendwatch's own spans add
  ``gen_ai.usage.cache_write.input_tokens``, ``gen_ai.usage.reasoning.output_tokens``,
  ``gen_ai.usage.audio.*``/``image.*`` and ``gen_ai.usage.cost`` with ``gen_ai.usage.cost.source``.
- OpenInference (Arize-ai/openinference, spec/semantic_conventions.md): ``llm.model_name``, ``llm.provider``,
  ``llm.system``, ``llm.token_count.prompt`` / ``completion`` / ``total``,
  ``llm.token_count.prompt_details.cache_read`` / ``cache_write`` / ``audio``,
  ``llm.token_count.completion_details.reasoning`` / ``audio``, ``llm.cost.total``, ``openinference.span.kind``.
- OpenLLMetry (traceloop/openllmetry, opentelemetry-semantic-conventions-ai, semconv_ai SpanAttributes):
  ``gen_ai.usage.cache_read_input_tokens``, ``gen_ai.usage.cache_creation_input_tokens``, ``llm.usage.total_tokens``,
  ``llm.request.type``, ``gen_ai.usage.reasoning_tokens``.
- OpenLIT (openlit/openlit, sdk/python/src/openlit/semcov): ``gen_ai.usage.cost`` (computed by OpenLIT from its own
  price list), ``gen_ai.usage.total_tokens``, ``gen_ai.usage.reasoning_tokens``, ``gen_ai.usage.input_audio_tokens``
  / ``output_audio_tokens``.

A cost a span carries counts as what the provider charged only where the span says so
(``gen_ai.usage.cost.source = "provider"``); any other cost was computed by its producer from a price list, so
spendwatch prices the usage itself and keeps the producer's figure as an attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MODEL_KEYS", "READ_KEYS", "SpanUsage", "usage_of_span"]

# The attributes that name a model: a span with none of them is not an LLM call (the quick way out, also for the
# OTLP intake, which looks at a span's attribute keys before it decodes any value).
MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
# Operations that are not a billed model call of their own (an agent run, a tool): their model calls have spans of
# their own, which are counted.
_NOT_CALLS = frozenset({"invoke_agent", "create_agent", "execute_tool"})
# OpenInference span kinds that are model calls.
_OPENINFERENCE_CALLS = {"LLM": "chat", "EMBEDDING": "embeddings"}
# OpenLLMetry's llm.request.type values, as semconv operation names.
_REQUEST_TYPES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings", "rerank": "rerank"}
# Provider values of gen_ai.system (older semconv, OpenLLMetry, OpenLIT) and OpenInference's llm.provider /
# llm.system, as the current semconv gen_ai.provider.name values the price lists know (lower-cased first).
_PROVIDERS = {
    "az.ai.openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "az.ai.inference": "azure.ai.inference",
    "gemini": "gcp.gemini",
    "google": "gcp.gemini",
    "google_genai": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "vertex ai": "gcp.vertex_ai",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "mistralai": "mistral_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
}
# Each token count by its names, most specific first.
_INPUT = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
_OUTPUT = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
_TOTAL = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
_CACHE_READ = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
_CACHE_WRITE = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
_REASONING = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
_INPUT_AUDIO = (
    "gen_ai.usage.audio.input_tokens",
    "gen_ai.usage.input_audio_tokens",
    "llm.token_count.prompt_details.audio",
)
_OUTPUT_AUDIO = (
    "gen_ai.usage.audio.output_tokens",
    "gen_ai.usage.output_audio_tokens",
    "llm.token_count.completion_details.audio",
)
_COST = ("gen_ai.usage.cost.amount", "gen_ai.usage.cost", "llm.cost.total")
_SERVICE_TIER = ("openai.response.service_tier", "gen_ai.openai.response.service_tier")
_SUBSET_COUNTS = (
    ("cache_read_tokens", _CACHE_READ),
    ("cache_write_tokens", _CACHE_WRITE),
    ("reasoning_tokens", _REASONING),
    ("input_audio_tokens", _INPUT_AUDIO),
    ("output_audio_tokens", _OUTPUT_AUDIO),
)
_SUBSET_KEYS = frozenset(key for _, keys in _SUBSET_COUNTS for key in keys)
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_OPERATION_KEYS = ("gen_ai.operation.name", "openinference.span.kind", "llm.request.type", "gen_ai.request.type")
_COST_KEYS = frozenset((*_COST, "gen_ai.usage.cost.currency", "gen_ai.usage.cost.source"))
# Every attribute key usage_of_span reads: the OTLP intake decodes the values of these only (tests check the list).
READ_KEYS = frozenset(
    (
        *MODEL_KEYS,
        *_PROVIDER_KEYS,
        *_OPERATION_KEYS,
        *_INPUT,
        *_OUTPUT,
        *_TOTAL,
        *_SUBSET_KEYS,
        *_COST_KEYS,
        *_SERVICE_TIER,
        "spendwatch.category",
        "error.type",
    )
)


@dataclass(slots=True)
class SpanUsage:
    """One LLM call as a span describes it; token counts as the semconv counts them (input includes cached)."""

    provider: str
    operation: str
    request_model: str
    response_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    estimated: bool = False  # the split of a total the span gave without its parts is assumed (see below)
    has_usage: bool = False  # whether the span gave any token count at all
    cost_usd: float | None = None  # a cost the span carries
    provider_reported: bool = False  # ...and it says the provider charged it (else its producer computed it)
    service_tier: str | None = None
    category: str | None = None  # spendwatch.category on the span
    error_type: str | None = None


def usage_of_span(attributes: Mapping[str, Any]) -> SpanUsage | None:
    """The call a span's attributes describe, or None when it is not an LLM call (most spans: a few dict lookups)."""
    get = attributes.get
    model = get("gen_ai.request.model") or get("llm.model_name") or get("gen_ai.response.model")
    if not model:
        return None
    operation = _operation(get)
    if operation is None:
        return None
    usage = SpanUsage(_provider(get), operation, str(model))
    response_model = get("gen_ai.response.model")
    if response_model:
        usage.response_model = str(response_model)
    _read_tokens(usage, attributes)
    if not _COST_KEYS.isdisjoint(attributes):
        _read_cost(usage, get)
    if not (usage.has_usage or usage.cost_usd is not None or get("error.type")):
        return None  # a span that names a model but says nothing billable (a request still in the air, a wrapper)
    tier = _first_text(get, _SERVICE_TIER)
    usage.service_tier = tier
    category = get("spendwatch.category")
    usage.category = None if category is None else str(category)
    error_type = get("error.type")
    usage.error_type = None if error_type is None else str(error_type)
    return usage


def _operation(get) -> str | None:
    """The semconv operation name, or None for a span that is not a model call."""
    operation = get("gen_ai.operation.name")
    if operation:
        return None if operation in _NOT_CALLS else str(operation)
    kind = get("openinference.span.kind")
    if kind is not None:
        return _OPENINFERENCE_CALLS.get(str(kind).upper())
    request_type = get("llm.request.type") or get("gen_ai.request.type")
    if request_type:
        return _REQUEST_TYPES.get(str(request_type), str(request_type))
    return "chat"


def _provider(get) -> str:
    provider = _first_text(get, _PROVIDER_KEYS)
    if not provider:
        return "unknown"
    name = str(provider).strip().lower()
    return _PROVIDERS.get(name, name)


def _read_tokens(usage: SpanUsage, attributes: Mapping[str, Any]) -> None:
    get = attributes.get
    input_tokens, output_tokens = _first_count(get, _INPUT), _first_count(get, _OUTPUT)
    has_usage = input_tokens is not None or output_tokens is not None
    if output_tokens is None:
        total = _first_count(get, _TOTAL)
        if total is not None and input_tokens is not None:
            output_tokens = max(total - input_tokens, 0)  # OpenInference may give prompt and total only
        elif total is not None:
            # A total without its parts: counted as output, the dearer side, so the call is never undercounted,
            # and flagged as estimated.
            output_tokens, has_usage, usage.estimated = total, True, True
    usage.input_tokens, usage.output_tokens = input_tokens or 0, output_tokens or 0
    if not _SUBSET_KEYS.isdisjoint(attributes):  # most spans give none of them: one look instead of fifteen
        for name, keys in _SUBSET_COUNTS:
            count = _first_count(get, keys)
            if count:
                setattr(usage, name, count)
                has_usage = True
    usage.has_usage = has_usage


def _read_cost(usage: SpanUsage, get) -> None:
    cost = None
    for key in _COST:
        cost = _number(get(key))
        if cost is not None:
            break
    if cost is None:
        return
    usage.cost_usd = cost
    currency = get("gen_ai.usage.cost.currency")
    usage.provider_reported = get("gen_ai.usage.cost.source") == "provider" and currency in (None, "USD")


def _first_count(get, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = get(key)
        if type(value) is int and value >= 0:  # as most spans give a count (a bool is not an int here)
            return value
        if value is not None:
            number = _number(value)
            if number is not None and number >= 0:
                return int(number)
    return None


def _first_text(get, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = get(key)
        if value:
            return str(value)
    return None


def _number(value: Any) -> float | None:
    """A count or amount as a span may carry it (an int, a float, or a string from a loose producer); None when it is
    not a finite number (a bool is not one)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None
