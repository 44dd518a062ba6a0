"""GenAI spans in every attribute dialect, as their producers document them, read and priced like instrumented calls.

The attribute sets are written from each dialect's published conventions (OpenTelemetry GenAI semconv, its older
names, OpenInference's spec/semantic_conventions.md, OpenLLMetry's semconv_ai, OpenLIT's semcov), not from our code;
costs are checked against genai_prices.calc_price, the reference the instrumented calls' tests use."""

from __future__ import annotations

import genai_prices
import pytest

from spendwatch.exporter.spans import PRODUCER_COST_ATTRIBUTE, entry_id_of, record_of, usage_of_span
from spendwatch.exporter.spans.dialects import MODEL_KEYS, READ_KEYS
from spendwatch.instrumentation.pricing import PriceTable

TRACE, SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def record(attributes: dict, **overrides):
    usage = usage_of_span(attributes)
    assert usage is not None
    arguments = dict(
        prices=PriceTable(),
        trace_id=TRACE,
        span_id=SPAN,
        start_time=1_700_000_000.0,
        duration_s=0.5,
        service="checkout",
        source="otlp",
    )
    return record_of(usage, **(arguments | overrides))


def reference(model: str, provider: str = "openai", **usage) -> float:
    return float(genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider).total_price)


def test_current_semconv_span_is_priced_with_its_cache_reads():
    r = record(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 200,
            "gen_ai.usage.cache_read.input_tokens": 600,
        }
    )
    assert (r.provider, r.operation, r.request_model, r.response_model) == (
        "openai",
        "chat",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert (r.input_tokens, r.output_tokens, r.cache_read_tokens) == (1_000, 200, 600)
    expected = reference("gpt-4o-mini-2024-07-18", input_tokens=1_000, output_tokens=200, cache_read_tokens=600)
    assert r.cost_usd == pytest.approx(expected, rel=1e-9)
    assert (r.source, r.service, r.outcome, r.estimated) == ("otlp", "checkout", "success", False)
    assert (r.trace_id, r.span_id) == (TRACE, SPAN)


def test_older_semconv_names_gen_ai_system_and_prompt_completion_tokens():
    r = record(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.prompt_tokens": 300,
            "gen_ai.usage.completion_tokens": 40,
        }
    )
    assert (r.provider, r.operation, r.input_tokens, r.output_tokens) == ("openai", "chat", 300, 40)
    assert r.cost_usd == pytest.approx(reference("gpt-4o", input_tokens=300, output_tokens=40), rel=1e-9)


@pytest.mark.parametrize(
    ("system", "provider"),
    [
        ("az.ai.openai", "azure.ai.openai"),
        ("gemini", "gcp.gemini"),
        ("vertex_ai", "gcp.vertex_ai"),
        ("aws.bedrock", "aws.bedrock"),
        ("Anthropic", "anthropic"),  # OpenLLMetry capitalises its vendor names
        ("MistralAI", "mistral_ai"),
        ("xai", "x_ai"),
    ],
)
def test_gen_ai_system_values_become_semconv_provider_names(system, provider):
    usage = usage_of_span({"gen_ai.system": system, "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1})
    assert usage.provider == provider


def test_openinference_llm_span_with_cache_and_reasoning_details():
    r = record(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o",
            "llm.provider": "openai",
            "llm.system": "openai",
            "llm.token_count.prompt": 1_200,
            "llm.token_count.completion": 300,
            "llm.token_count.total": 1_500,
            "llm.token_count.prompt_details.cache_read": 1_024,
            "llm.token_count.completion_details.reasoning": 100,
        }
    )
    assert (r.operation, r.input_tokens, r.output_tokens) == ("chat", 1_200, 300)
    assert (r.cache_read_tokens, r.reasoning_tokens) == (1_024, 100)
    expected = reference("gpt-4o", input_tokens=1_200, output_tokens=300, cache_read_tokens=1_024)
    assert r.cost_usd == pytest.approx(expected, rel=1e-9)


def test_openinference_embedding_span_and_prompt_with_total_only():
    usage = usage_of_span(
        {
            "openinference.span.kind": "EMBEDDING",
            "llm.model_name": "text-embedding-3-small",
            "llm.token_count.prompt": 80,
            "llm.token_count.total": 80,
        }
    )
    assert (usage.operation, usage.input_tokens, usage.output_tokens) == ("embeddings", 80, 0)


def test_openinference_chain_and_agent_spans_are_not_calls():
    for kind in ("CHAIN", "AGENT", "TOOL", "RETRIEVER"):
        attributes = {"openinference.span.kind": kind, "llm.model_name": "gpt-4o", "llm.token_count.prompt": 5}
        assert usage_of_span(attributes) is None


def test_openinference_provider_values():
    for provider, expected in (("azure", "azure.ai.openai"), ("mistralai", "mistral_ai"), ("google", "gcp.gemini")):
        attributes = {"openinference.span.kind": "LLM", "llm.model_name": "m", "llm.provider": provider}
        assert usage_of_span(attributes | {"llm.token_count.prompt": 1}).provider == expected


def test_openllmetry_anthropic_span_with_cache_reads_and_writes():
    r = record(
        {
            "gen_ai.system": "Anthropic",
            "gen_ai.request.model": "claude-3-5-sonnet-20241022",
            "llm.request.type": "chat",
            "gen_ai.usage.prompt_tokens": 2_100,
            "gen_ai.usage.completion_tokens": 90,
            "gen_ai.usage.cache_read_input_tokens": 1_500,
            "gen_ai.usage.cache_creation_input_tokens": 500,
            "llm.usage.total_tokens": 2_190,
        }
    )
    assert (r.provider, r.operation) == ("anthropic", "chat")
    assert (r.input_tokens, r.cache_read_tokens, r.cache_write_tokens) == (2_100, 1_500, 500)
    expected = reference(
        "claude-3-5-sonnet-20241022",
        "anthropic",
        input_tokens=2_100,
        output_tokens=90,
        cache_read_tokens=1_500,
        cache_write_tokens=500,
    )
    assert r.cost_usd == pytest.approx(expected, rel=1e-9)


def test_openllmetry_completion_and_embedding_request_types():
    base = {"gen_ai.system": "openai", "gen_ai.request.model": "m", "gen_ai.usage.prompt_tokens": 3}
    assert usage_of_span(base | {"llm.request.type": "completion"}).operation == "text_completion"
    assert usage_of_span(base | {"llm.request.type": "embedding"}).operation == "embeddings"


def test_a_total_without_its_parts_counts_as_output_and_is_flagged():
    r = record({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "llm.usage.total_tokens": 1_000})
    assert (r.input_tokens, r.output_tokens, r.estimated) == (0, 1_000, True)
    assert r.cost_usd == pytest.approx(reference("gpt-4o", output_tokens=1_000), rel=1e-9)


def test_openlit_cost_is_the_producers_so_spendwatch_prices_the_usage_and_keeps_it_aside():
    r = record(
        {
            "gen_ai.system": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 500,
            "gen_ai.usage.output_tokens": 100,
            "gen_ai.usage.total_tokens": 600,
            "gen_ai.usage.reasoning_tokens": 0,
            "gen_ai.usage.cost": 0.123,
        }
    )
    assert r.cost_usd == pytest.approx(reference("gpt-4o", input_tokens=500, output_tokens=100), rel=1e-9)
    assert r.attributes == {PRODUCER_COST_ATTRIBUTE: "0.123"}


def test_a_cost_the_span_says_the_provider_charged_wins():
    r = record(
        {
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "some-routed-model",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
            "gen_ai.usage.cost": 0.0042,
            "gen_ai.usage.cost.currency": "USD",
            "gen_ai.usage.cost.source": "provider",
        }
    )
    assert (r.cost_usd, r.pricing) == (0.0042, "provider")


def test_unknown_model_is_unpriced_not_free():
    r = record({"gen_ai.system": "openai", "gen_ai.request.model": "no-such-model-x", "gen_ai.usage.input_tokens": 9})
    assert (r.cost_usd, r.pricing, r.input_tokens) == (None, "unpriced", 9)


def test_a_failed_call_without_usage_is_an_error_that_billed_nothing():
    r = record({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "error.type": "RateLimitError"})
    assert (r.outcome, r.error_type, r.cost_usd, r.pricing) == ("error", "RateLimitError", 0.0, "not billed")


def test_category_from_the_span_else_the_one_given():
    attributes = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1}
    assert record(attributes, category="fallback").category == "fallback"
    assert record(attributes | {"spendwatch.category": "search"}, category="fallback").category == "search"


@pytest.mark.parametrize(
    "attributes",
    [
        {"http.request.method": "GET", "url.full": "http://x/"},
        {},
        # an agent or tool span names a model, but its calls have spans of their own
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 9},
        {"gen_ai.operation.name": "execute_tool", "gen_ai.request.model": "gpt-4o"},
        # names a model but says nothing billable: a wrapper span
        {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"},
        # not numbers
        {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": "many"},
    ],
)
def test_spans_that_are_not_billed_calls_are_none(attributes):
    assert usage_of_span(attributes) is None


def test_entry_id_is_the_trace_and_span_id():
    assert entry_id_of(TRACE, SPAN) == "span:0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"
    assert entry_id_of(1, 2) != entry_id_of(1, 3)


class _AskedFor(dict):
    """Attributes that remember every key a reader asked for; they claim to hold every key when iterated, so that
    each branch of usage_of_span that looks for a group of keys is taken."""

    def __init__(self, values: dict, claimed) -> None:
        super().__init__(values)
        self.asked: set[str] = set()
        self._claimed = claimed

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __iter__(self):
        return iter(self._claimed)


@pytest.mark.parametrize("model_key", sorted(MODEL_KEYS))
def test_every_attribute_usage_of_span_reads_is_one_the_otlp_intake_decodes(model_key):
    # The intake decodes only READ_KEYS' values: a key read here but missing from READ_KEYS would be ignored silently.
    values = {model_key: "gpt-4o", "gen_ai.usage.cost": 0.25, "error.type": "timeout"}
    attributes = _AskedFor(values, READ_KEYS | {"another.key"})

    assert usage_of_span(attributes) is not None
    assert attributes.asked - READ_KEYS == set()
    assert "gen_ai.usage.cost.source" in attributes.asked  # the cost branch was taken
    assert "gen_ai.usage.reasoning_tokens" in attributes.asked  # and the token subsets'
