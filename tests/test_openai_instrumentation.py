"""The OpenAI instrumentation through the real SDK over HTTP against the local stub: spans, usage, cost, records."""

from __future__ import annotations

import gc

import openai
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode

from spendwatch.demo.stub import StubServer
from spendwatch.instrumentation.background import flush_all
from spendwatch.instrumentation.pricing import PriceTable, load_overrides, rounded_usd
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

MESSAGES = [{"role": "user", "content": "How much does this call cost?"}]
PRICES = PriceTable()


def only_span(span_exporter):
    spans = span_exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def expected_cost(model: str, usage) -> float:
    return PRICES.lookup(model).cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens)


def assert_priced_like_stub(span, record, stub, model="gpt-4o-mini"):
    (usage,) = stub.usage_log
    attributes = span.attributes
    assert attributes["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert record.cost_usd == pytest.approx(expected_cost(model, usage), rel=1e-12)  # the ledger's value, unrounded
    assert attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)  # the span's, to a billionth of a dollar
    assert attributes["gen_ai.usage.cost.amount"] == attributes["gen_ai.usage.cost"]
    assert attributes["gen_ai.usage.cost.currency"] == "USD"
    assert attributes["gen_ai.usage.cost.source"] == "local"
    assert attributes["spendwatch.pricing"].startswith("genai-prices")
    assert attributes["spendwatch.cost.estimated"] is False
    assert (record.input_tokens, record.output_tokens) == (usage.input_tokens, usage.output_tokens)


def test_chat_completion_span_carries_semconv_usage_and_cost(client, stub, span_exporter, sink):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span = only_span(span_exporter)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.provider.name"] == span.attributes["gen_ai.system"] == "openai"
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert span.attributes["gen_ai.response.model"] == completion.model
    assert_priced_like_stub(span, sink.records[0], stub)
    assert sink.records[0].outcome == "success"


async def test_async_chat_completion_is_priced_the_same_way(async_client, stub, span_exporter, sink):
    await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_streamed_chat_with_include_usage_counts_the_final_usage_chunk(client, stub, span_exporter, sink):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert chunks[-1].usage is not None
    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


async def test_async_stream_counts_usage_once_consumed(async_client, stub, span_exporter, sink):
    stream = await async_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert span_exporter.get_finished_spans() == ()
    chunks = [chunk async for chunk in stream]

    assert len(chunks) > 2
    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_stream_without_usage_is_estimated_and_the_request_is_left_alone(client, stub, span_exporter, sink):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))

    span = only_span(span_exporter)
    assert "stream_options" not in stub.requests[0]["body"]
    assert span.attributes["spendwatch.cost.estimated"] is True
    assert span.attributes["gen_ai.usage.output_tokens"] == sum(1 for chunk in chunks if chunk.choices[0].delta.content)
    assert span.attributes["gen_ai.usage.cost"] > 0
    assert sink.records[0].estimated is True


def test_a_loop_left_early_and_resumed_still_counts_the_final_usage_chunk(client, stub, span_exporter, sink):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:  # peeking at the first chunk, as a time-to-first-token measurement does
        first = chunk
        break
    assert span_exporter.get_finished_spans() == ()
    rest = list(stream)

    assert first.choices and rest[-1].usage is not None
    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_a_loop_abandoned_midway_ends_the_span_when_the_stream_is_dropped(client, span_exporter, sink):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    for index, _ in enumerate(stream):
        if index == 2:
            break
    del stream
    gc.collect()
    flush_all()  # what the background thread does within a second: a finaliser only queues the call's end

    assert only_span(span_exporter).attributes["spendwatch.cost.estimated"] is True
    assert sink.records[0].output_tokens == 2  # the role chunk carries no content: two deltas were read


def test_stream_used_as_context_manager_ends_its_span_once(client, span_exporter):
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
        assert isinstance(stream, openai.Stream)
        for _ in stream:
            pass

    assert only_span(span_exporter).attributes["gen_ai.usage.output_tokens"] > 0


def test_stream_closed_early_ends_its_span_once_with_what_was_read(client, span_exporter, sink):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(stream)
    next(stream)
    stream.close()
    stream.close()

    assert only_span(span_exporter).attributes["spendwatch.cost.estimated"] is True
    assert len(sink.records) == 1


def test_stream_abandoned_half_read_still_ends_its_span(client, span_exporter, sink):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()
    flush_all()

    only_span(span_exporter)
    assert len(sink.records) == 1


def test_chat_stream_helper_makes_one_span(client, stub, span_exporter):
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.content
    assert only_span(span_exporter).attributes["gen_ai.usage.input_tokens"] == stub.usage_log[0].input_tokens


def test_chat_completions_parse_is_instrumented(client, stub, span_exporter, sink):
    client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES)

    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_responses_api_reports_cached_and_reasoning_tokens(span_exporter, sink):
    with StubServer(cached_tokens=4, reasoning_tokens=5) as server:
        responses_client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=server.base_url, max_retries=0)
        responses_client.responses.create(model="o4-mini", input="Summarise the budget")
        (usage,) = server.usage_log

    span = only_span(span_exporter)
    assert span.name == "generate_content o4-mini"
    assert span.attributes["gen_ai.operation.name"] == sink.records[0].operation == "generate_content"
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == usage.cached_tokens == 4
    assert span.attributes["gen_ai.usage.reasoning.output_tokens"] == usage.reasoning_tokens == 5
    assert span.attributes["gen_ai.usage.cost"] == pytest.approx(expected_cost("o4-mini", usage), abs=1e-9)
    assert sink.records[0].cache_read_tokens == 4


def test_streamed_responses_count_the_completed_event(client, stub, span_exporter, sink):
    events = list(client.responses.create(model="gpt-4o-mini", input="Summarise the budget", stream=True))

    assert events[-1].type == "response.completed"
    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


async def test_async_streamed_responses(async_client, stub, span_exporter, sink):
    stream = await async_client.responses.create(model="gpt-4o-mini", input="Summarise the budget", stream=True)
    async with stream:
        async for _ in stream:
            pass

    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_embeddings_are_priced_on_input_tokens(client, stub, span_exporter, sink):
    client.embeddings.create(model="text-embedding-3-small", input=["one text", "another text"])

    span = only_span(span_exporter)
    assert span.name == "embeddings text-embedding-3-small"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert_priced_like_stub(span, sink.records[0], stub, model="text-embedding-3-small")


async def test_async_embeddings(async_client, stub, span_exporter, sink):
    await async_client.embeddings.create(model="text-embedding-3-small", input="one text")

    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub, model="text-embedding-3-small")


def test_legacy_completions_are_text_completion_operations(client, stub, span_exporter, sink):
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")

    span = only_span(span_exporter)
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert_priced_like_stub(span, sink.records[0], stub, model="gpt-3.5-turbo-instruct")


def test_with_raw_response_returns_the_raw_response_and_counts_the_call(client, stub, span_exporter, sink):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)

    assert raw.headers["content-type"].startswith("application/json")
    assert isinstance(raw.parse(), openai.types.chat.ChatCompletion)
    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_with_raw_response_stream_is_counted_when_read(client, stub, span_exporter, sink):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert span_exporter.get_finished_spans() == ()
    list(raw.parse())

    assert_priced_like_stub(only_span(span_exporter), sink.records[0], stub)


def test_azure_client_reports_the_azure_provider(stub, span_exporter):
    azure = openai.AzureOpenAI(
        azure_endpoint=stub.origin, api_version="2024-10-21", api_key=FAKE_API_KEY, max_retries=0
    )
    azure.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span = only_span(span_exporter)
    assert span.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert span.attributes["gen_ai.usage.cost"] > 0


def test_unknown_model_is_unpriced_never_free(client, span_exporter, sink):
    client.chat.completions.create(model="my-private-model", messages=MESSAGES)

    span = only_span(span_exporter)
    assert span.attributes["spendwatch.pricing"] == "unpriced"
    assert not any(name.startswith("gen_ai.usage.cost") for name in span.attributes)
    assert span.attributes["gen_ai.usage.input_tokens"] > 0
    assert sink.records[0].cost_usd is None
    assert sink.records[0].pricing == "unpriced"


@pytest.mark.parametrize("model", ["stub-malformed-usage", "stub-no-usage"])
def test_malformed_or_missing_usage_never_reaches_the_caller_and_is_estimated(client, span_exporter, sink, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES)

    assert completion.choices
    span = only_span(span_exporter)
    assert span.attributes["spendwatch.cost.estimated"] is True
    assert sink.records[0].estimated is True


@pytest.mark.parametrize(
    ("model", "error_class"),
    [("stub-error-500", openai.InternalServerError), ("stub-not-found", openai.NotFoundError)],
)
def test_server_error_is_reraised_unchanged_and_recorded(client, span_exporter, sink, model, error_class):
    with pytest.raises(error_class) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)

    assert type(raised.value) is error_class
    span = only_span(span_exporter)
    assert span.attributes["error.type"] == error_class.__name__
    assert span.status.status_code is StatusCode.ERROR
    assert FAKE_API_KEY not in str(span.status.description)
    assert sink.records[0].outcome == "error"


def test_stream_cut_midway_raises_the_sdks_error_and_ends_the_span(client, span_exporter, sink):
    stream = client.chat.completions.create(model="stub-stream-cut", messages=MESSAGES, stream=True)
    with pytest.raises(Exception) as raised:
        list(stream)

    assert not type(raised.value).__module__.startswith("spendwatch")
    assert only_span(span_exporter).attributes["error.type"] == type(raised.value).__qualname__
    assert sink.records[0].outcome == "error"


def test_failing_sink_never_breaks_the_call(client, span_exporter):
    class BrokenSink:
        def record(self, record):
            raise RuntimeError("sink is down")

    from spendwatch.instrumentation import register_sink, unregister_sink

    broken = BrokenSink()
    register_sink(broken)
    try:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        unregister_sink(broken)
    assert completion.choices
    only_span(span_exporter)


def test_suppressed_instrumentation_makes_no_span(client, span_exporter, sink):
    with suppress_instrumentation():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert span_exporter.get_finished_spans() == ()
    assert sink.records == []


def test_instrument_uninstrument_instrument(instrument_openai, tracer_provider, meter_provider, client, span_exporter):
    instrument_openai.uninstrument()
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert span_exporter.get_finished_spans() == ()

    instrument_openai.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    only_span(span_exporter)


@pytest.mark.parametrize("own_table", [False, True], ids=["default-table", "table-given-to-instrument"])
def test_the_configured_prices_replace_the_default_table_only(
    own_table, tmp_path, tracer_provider, meter_provider, client, span_exporter
):
    # spendwatch.configure() hands its table over when opentelemetry-instrument instrumented first; a table the
    # caller gave instrument() is the caller's choice and stays.
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."gpt-4o-mini"]\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n')
    configured = PriceTable(load_overrides(prices_file))
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    OpenAIInstrumentor().uninstrument()
    own = {"price_table": PRICES} if own_table else {}
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, **own)
    OpenAIInstrumentor().use_configured_prices(configured)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    pricing = only_span(span_exporter).attributes["spendwatch.pricing"]
    assert pricing.startswith("genai-prices") if own_table else pricing == f"file {prices_file}"


@pytest.mark.parametrize(
    ("azure", "request_model", "response_model"),
    [
        pytest.param(True, "prod-chat", "gpt-4o-2024-11-20", id="azure-deployment-name"),
        pytest.param(False, "gpt-4-turbo-preview", "gpt-4-0125-preview", id="openai-alias"),
    ],
)
def test_an_override_of_the_request_model_beats_the_bundled_price_of_the_response_model(
    azure, request_model, response_model, tmp_path, tracer_provider, meter_provider, span_exporter, sink
):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(f'[models."{request_model}"]\ninput_per_mtok = 1\noutput_per_mtok = 2\n')
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    OpenAIInstrumentor().uninstrument()
    prices = PriceTable(load_overrides(prices_file))
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, price_table=prices)
    with StubServer(response_models={request_model: response_model}) as stub:
        if azure:
            client = openai.AzureOpenAI(
                azure_endpoint=stub.origin, api_version="2024-10-21", api_key=FAKE_API_KEY, max_retries=0
            )
        else:
            client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)
        client.chat.completions.create(model=request_model, messages=MESSAGES)

    (usage,) = stub.usage_log
    span = only_span(span_exporter)
    assert span.attributes["gen_ai.response.model"] == response_model
    assert span.attributes["spendwatch.pricing"] == f"file {prices_file}"
    assert sink.records[0].cost_usd == pytest.approx(usage.input_tokens * 1e-6 + usage.output_tokens * 2e-6)


def test_content_and_api_key_are_not_recorded_by_default(client, span_exporter, sink):
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span = only_span(span_exporter)
    recorded = repr(dict(span.attributes)) + repr(sink.records[0]) + span.to_json()
    assert "How much does this call cost" not in recorded
    assert FAKE_API_KEY not in recorded


def test_content_is_recorded_when_the_user_opts_in(monkeypatch, tracer_provider, meter_provider, client, span_exporter):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    OpenAIInstrumentor().uninstrument()
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span = only_span(span_exporter)
    assert "How much does this call cost" in span.attributes["gen_ai.input.messages"]
    assert "test reply" in span.attributes["gen_ai.output.messages"]
    assert FAKE_API_KEY not in span.to_json()


def test_semconv_metrics_use_the_conventions_buckets(client, metric_reader):
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    metrics = {
        metric.name: metric
        for resource in metric_reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert set(metrics) == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"}
    tokens = metrics["gen_ai.client.token.usage"].data.data_points
    assert {point.attributes["gen_ai.token.type"] for point in tokens} == {"input", "output"}
    assert tokens[0].explicit_bounds[:3] == (1, 4, 16)
    duration = metrics["gen_ai.client.operation.duration"].data.data_points[0]
    assert duration.explicit_bounds[:2] == (0.01, 0.02)
    assert duration.attributes["gen_ai.request.model"] == "gpt-4o-mini"
