"""In-process span ingestion: the official OpenTelemetry OpenAI instrumentation
(opentelemetry-instrumentation-openai-v2, not spendwatch) calls the local OpenAI stub through the real SDK, and
spendwatch's span processor prices its spans. With spendwatch's own OpenAI instrumentor active too, each call is
counted once, whichever wraps the other."""

from __future__ import annotations

import openai
import pytest
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OfficialOpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import spendwatch
from spendwatch.exporter.spans.processor import SpanIngestProcessor
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import FAKE_API_KEY, CollectingSink

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def ingested():
    """What the span processor hands to its sink."""
    return CollectingSink()


@pytest.fixture
def processor(ingested):
    return SpanIngestProcessor(ingested, PriceTable())


@pytest.fixture
def provider(processor, span_exporter):
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def official(provider):
    instrumentor = OfficialOpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def client(stub):
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)


def spendwatch_instrumented(provider, meter_provider):
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=meter_provider)
    return instrumentor


def test_official_instrumentation_spans_are_priced_with_service_and_category(official, client, ingested):
    with spendwatch.category("support"):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (record,) = ingested.records
    assert (record.source, record.service, record.category) == ("span", "checkout", "support")
    assert (record.provider, record.operation, record.request_model) == ("openai", "chat", "gpt-4o-mini")
    assert record.input_tokens == response.usage.prompt_tokens
    assert record.output_tokens == response.usage.completion_tokens
    price = PriceTable().lookup(response.model)
    assert record.cost_usd == pytest.approx(price.cost(record.input_tokens, record.output_tokens), rel=1e-12)
    assert record.trace_id and record.span_id and record.duration_s > 0


def test_a_non_genai_span_is_passed_over(provider, ingested):
    with provider.get_tracer("app").start_as_current_span("GET /orders", attributes={"http.request.method": "GET"}):
        pass
    assert ingested.records == []


def test_spendwatch_own_spans_are_never_counted_again(provider, meter_provider, client, ingested, sink):
    instrumentor = spendwatch_instrumented(provider, meter_provider)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    assert len(sink.records) == 1  # the instrumentor's record
    assert ingested.records == []


@pytest.mark.parametrize("spendwatch_first", [True, False], ids=["spendwatch-inner", "spendwatch-outer"])
def test_official_and_spendwatch_instrumentation_together_count_a_call_once(
    provider, meter_provider, client, ingested, sink, span_exporter, spendwatch_first
):
    official = OfficialOpenAIInstrumentor()
    if spendwatch_first:
        instrumentor = spendwatch_instrumented(provider, meter_provider)
        official.instrument(tracer_provider=provider)
    else:
        official.instrument(tracer_provider=provider)
        instrumentor = spendwatch_instrumented(provider, meter_provider)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        official.uninstrument()
        instrumentor.uninstrument()
    scopes = sorted(span.instrumentation_scope.name for span in span_exporter.get_finished_spans())
    assert scopes.count("opentelemetry.instrumentation.openai_v2") == 2  # both really saw both calls
    assert [record.request_model for record in sink.records] == ["gpt-4o-mini", "gpt-4o"]  # spendwatch's records
    assert ingested.records == []


def test_a_detached_processor_does_nothing(official, client, ingested, processor):
    processor.active = False  # what spendwatch's detach does: a tracer provider cannot drop a processor
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert ingested.records == []
