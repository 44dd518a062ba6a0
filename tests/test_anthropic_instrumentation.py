"""The Anthropic instrumentor: the real ``anthropic`` SDK over real HTTP against spendwatch's Anthropic stub, run as
its own process (``python -m spendwatch.demo.anthropic_stub``) and stopped by PID.

The stub's usage is a pure function of the request (:meth:`AnthropicStub.answer`), so each test knows what the
response said without reading it back; the stub reports 4 cache-read, 6 cache-written (2 of them for an hour) and one
web search on every answer, so every usage field is exercised.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import subprocess
import sys
import textwrap
from zoneinfo import ZoneInfo

import anthropic
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation

import spendwatch
from spendwatch import runtime
from spendwatch.demo.anthropic_stub import AnthropicStub
from spendwatch.demo.processes import http_get, start_on_free_port, start_process
from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.spans.processor import SpanIngestProcessor
from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor
from spendwatch.instrumentation.background import flush_all
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import CollectingSink
from tests.test_auto_instrumentation import BIN, console_spans

MODEL = "claude-sonnet-4-20250514"
API_KEY = "sk-ant-spendwatch-test-key-5e1d"
MESSAGES = [{"role": "user", "content": "Say hello in one word please"}]
STUB_OPTIONS = {"cache_read_tokens": 4, "cache_write_tokens": 6, "cache_write_1h_tokens": 2, "web_search_requests": 1}
PRICES = PriceTable()


def start_stub(log_path, **options):
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]

    def launch(port):
        argv = [sys.executable, "-m", "spendwatch.demo.anthropic_stub", "--port", str(port), *flags]
        return start_process(argv, log_path=log_path)

    def ready(port):
        return lambda: http_get(f"http://127.0.0.1:{port}/v1/nothing", timeout=2)[0] == 404

    return start_on_free_port(launch, ready, "the Anthropic stub", 60.0)


@pytest.fixture(scope="module")
def anthropic_stub(tmp_path_factory):
    """The stub's origin (``http://127.0.0.1:PORT``), served by a process of its own."""
    process, port = start_stub(tmp_path_factory.mktemp("anthropic-stub") / "stub.log", **STUB_OPTIONS)
    yield f"http://127.0.0.1:{port}"
    process.stop()


def expected(body: dict, model: str = MODEL):
    """What the stub reports for a request ``body`` (its usage is a pure function of it)."""
    return AnthropicStub(**STUB_OPTIONS).answer(body, model, log=False)[1]


@pytest.fixture
def instrument(tracer_provider, meter_provider, sink):
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield instrumentor
    instrumentor.uninstrument()


# Releases from 1.x on make a span of their own per call (older ones take no open_telemetry option).
SDK_TRACES = "open_telemetry" in inspect.signature(anthropic.Anthropic).parameters


@pytest.fixture
def client(anthropic_stub, tracer_provider):
    # The SDK's own span goes to the same provider, so a test sees how the two relate.
    telemetry = {"open_telemetry": {"tracer_provider": tracer_provider}} if SDK_TRACES else {}
    return anthropic.Anthropic(base_url=anthropic_stub, api_key=API_KEY, max_retries=0, **telemetry)


@pytest.fixture
def async_client(anthropic_stub):
    return anthropic.AsyncAnthropic(base_url=anthropic_stub, api_key=API_KEY, max_retries=0)


def ours(span_exporter):
    return [
        span for span in span_exporter.get_finished_spans() if span.instrumentation_scope.name.startswith("spendwatch")
    ]


def assert_counted(record, usage, *, tier=None):
    """The record carries the conventions' tokens for Anthropic's ``usage`` and the cost they imply."""
    input_tokens = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert (record.provider, record.response_model) == ("anthropic", usage.model)
    assert (record.input_tokens, record.output_tokens) == (input_tokens, usage.output_tokens)
    assert (record.cache_read_tokens, record.cache_write_tokens) == (4, 6)
    assert record.units == {"cache_write_1h_tokens": 2, "web_search_calls": 1}
    assert not record.estimated
    # The Batch API's discount is a price mode of its own, not a service tier (see calls.apply_usage).
    price = PRICES.lookup_call(usage.model, MODEL, "anthropic", batch=tier == "batch")
    units = {"cache_write_1h_tokens": 2, "web_search_calls": 1}
    cost = price.cost(input_tokens, usage.output_tokens, 4, 6, units=units)
    assert record.cost_usd == pytest.approx(cost, rel=1e-12)


def create(client, **options):
    return client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, **options)


# --- messages.create ------------------------------------------------------------------------------------------------


def test_create_gets_one_span_and_record_with_cache_tokens_in_the_input(instrument, client, span_exporter, sink):
    message = create(client)

    assert message.content[0].text.startswith("This is a test reply")
    (span,) = ours(span_exporter)
    (record,) = sink.records
    assert span.name == f"chat {MODEL}"
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    assert span.attributes["gen_ai.request.max_tokens"] == 20
    assert span.attributes["gen_ai.usage.input_tokens"] == message.usage.input_tokens + 10
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == 6
    assert span.attributes["spendwatch.usage.web_search_calls"] == 1
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


@pytest.mark.skipif(not SDK_TRACES, reason="this anthropic release makes no span of its own")
def test_the_sdks_own_span_is_a_child_of_ours_and_carries_no_cost(instrument, client, span_exporter, sink):
    create(client)

    (sdk_span,) = [span for span in span_exporter.get_finished_spans() if span.name == "anthropic.messages.create"]
    (our_span,) = ours(span_exporter)
    assert sdk_span.parent.span_id == our_span.context.span_id
    assert "gen_ai.usage.cost" not in sdk_span.attributes
    assert len(sink.records) == 1


async def test_async_create_is_counted(instrument, async_client, sink):
    message = await create(async_client)

    (record,) = sink.records
    assert record.output_tokens == message.usage.output_tokens
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


def test_a_streamed_create_read_to_the_end_is_counted_from_its_events(instrument, client, sink, span_exporter):
    events = list(create(client, stream=True))

    assert [event.type for event in events][:2] == ["message_start", "content_block_start"]
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))
    assert len(ours(span_exporter)) == 1


async def test_an_async_stream_is_counted(instrument, async_client, sink):
    stream = await create(async_client, stream=True)
    events = [event async for event in stream]

    assert events[-1].type == "message_stop"
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


def test_raw_response_is_counted_when_parsed(instrument, client, sink):
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=20, messages=MESSAGES)

    assert sink.records == []
    message = raw.parse()
    assert message.usage.output_tokens > 0
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


def test_beta_messages_are_counted(instrument, client, sink):
    client.beta.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)

    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


@pytest.mark.skipif(not hasattr(anthropic.resources.Messages, "parse"), reason="this release has no messages.parse")
def test_parse_is_counted(instrument, client, sink):
    client.messages.parse(model=MODEL, max_tokens=20, messages=MESSAGES)

    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


# --- the messages.stream() helper -----------------------------------------------------------------------------------


def test_stream_helper_read_to_the_end(instrument, client, sink, span_exporter):
    with client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES) as stream:
        assert sink.records == []  # the call is open while the caller reads
        message = stream.get_final_message()

    assert message.usage.output_tokens == 12
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))
    assert len(ours(span_exporter)) == 1


def test_stream_helper_iterated_as_events(instrument, client, sink):
    with client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES) as stream:
        texts = [event.text for event in stream if event.type == "text"]

    assert "".join(texts).startswith("This is a test")
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


def test_stream_helper_closed_early_counts_what_was_said(instrument, client, sink):
    with client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "text":
                break

    (record,) = sink.records
    assert record.outcome == "success"
    assert record.input_tokens == expected({"max_tokens": 20, "messages": MESSAGES}).input_tokens + 10
    assert record.output_tokens == 1  # message_start's count: the final one never came


def test_stream_helper_abandoned_half_read_is_counted_later(instrument, client, sink):
    manager = client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES)
    stream = manager.__enter__()
    next(iter(stream))
    del manager, stream
    gc.collect()
    flush_all()

    (record,) = sink.records
    assert record.input_tokens == expected({"max_tokens": 20, "messages": MESSAGES}).input_tokens + 10


async def test_async_stream_helper(instrument, async_client, sink):
    async with async_client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES) as stream:
        text = await stream.get_final_text()

    assert text.startswith("This is a test")
    (record,) = sink.records
    assert_counted(record, expected({"max_tokens": 20, "messages": MESSAGES}))


def test_stream_helper_never_entered_sends_and_counts_nothing(instrument, client, sink):
    client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES)

    assert sink.records == []


# --- the SDK's own span and span ingestion (SPENDWATCH_INGEST_SPANS=on) ----------------------------------------------


@pytest.fixture
def ingesting(anthropic_stub, tracer_provider):
    """A client whose SDK spans go to a provider with spendwatch's span-ingest processor; yields what it ingests."""
    ingested = CollectingSink()
    tracer_provider.add_span_processor(SpanIngestProcessor(ingested, PRICES))
    client = anthropic.Anthropic(
        base_url=anthropic_stub, api_key=API_KEY, max_retries=0, open_telemetry={"tracer_provider": tracer_provider}
    )
    return client, ingested


@pytest.mark.skipif(not SDK_TRACES, reason="this anthropic release makes no span of its own")
def test_span_ingestion_prices_the_sdks_own_span_when_spendwatch_does_not_instrument(ingesting):
    client, ingested = ingesting
    create(client)

    (record,) = ingested.records
    assert record.input_tokens == expected({"max_tokens": 20, "messages": MESSAGES}).input_tokens + 10


@pytest.mark.skipif(not SDK_TRACES, reason="this anthropic release makes no span of its own")
def test_span_ingestion_never_counts_the_sdks_span_inside_ours(instrument, ingesting, sink):
    client, ingested = ingesting
    create(client)
    list(create(client, stream=True))

    assert len(sink.records) == 2  # spendwatch's own records, one per call
    assert ingested.records == []


# --- failures -------------------------------------------------------------------------------------------------------


def test_an_error_status_reaches_the_caller_unchanged_and_costs_nothing(instrument, client, sink, span_exporter):
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="stub-not-found", max_tokens=20, messages=MESSAGES)

    assert raised.value.status_code == 404
    (record,) = sink.records
    assert (record.outcome, record.error_type, record.cost_usd) == ("error", "NotFoundError", 0.0)
    (span,) = ours(span_exporter)
    assert span.attributes["error.type"] == "NotFoundError"


def test_an_error_event_mid_stream_is_raised_and_the_input_still_counted(instrument, client, sink):
    with pytest.raises(anthropic.APIStatusError):
        list(client.messages.create(model="stub-overloaded-mid-stream", max_tokens=20, messages=MESSAGES, stream=True))

    (record,) = sink.records
    assert record.outcome == "error"
    assert record.input_tokens == expected({"max_tokens": 20, "messages": MESSAGES}).input_tokens + 10


# --- free calls, batches, other clients -----------------------------------------------------------------------------


def test_count_tokens_is_free_and_not_counted(instrument, client, sink, span_exporter):
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)

    assert counted.input_tokens == expected({"messages": MESSAGES}).input_tokens
    assert sink.records == []
    assert ours(span_exporter) == []


def batch_request(custom_id: str, model: str = MODEL) -> dict:
    return {"custom_id": custom_id, "params": {"model": model, "max_tokens": 5, "messages": MESSAGES}}


def test_batch_results_are_counted_once_when_read_at_the_batch_tier(instrument, client, sink):
    batch = client.messages.batches.create(
        requests=[batch_request("a"), batch_request("b"), batch_request("c", "stub-error-500")]
    )
    assert sink.records == []  # nothing is billed until the batch's requests are answered

    results = list(client.messages.batches.results(batch.id))
    list(client.messages.batches.results(batch.id))  # read again: the same results, not counted again

    assert [result.result.type for result in results] == ["succeeded", "succeeded", "errored"]
    assert len(sink.records) == 2
    for record in sink.records:
        assert record.service_tier == "batch"
        assert_counted(record, expected({"max_tokens": 5, "messages": MESSAGES}), tier="batch")


def test_vertex_and_bedrock_clients_name_their_provider(instrument, anthropic_stub, sink):
    vertex = anthropic.AnthropicVertex(
        region="us-east5", project_id="p", access_token="ya29.token", base_url=anthropic_stub, max_retries=0
    )
    bedrock = anthropic.AnthropicBedrock(
        aws_access_key="AKIDEXAMPLE", aws_secret_key="secret", aws_region="us-east-1", base_url=anthropic_stub
    )
    vertex.messages.create(model="claude-sonnet-4@20250514", max_tokens=20, messages=MESSAGES)
    bedrock.messages.create(model="anthropic.claude-sonnet-4-20250514-v1:0", max_tokens=20, messages=MESSAGES)

    assert [record.provider for record in sink.records] == ["gcp.vertex_ai", "aws.bedrock"]
    assert [record.input_tokens for record in sink.records] == [expected({"messages": MESSAGES}).input_tokens + 10] * 2


# --- safety ---------------------------------------------------------------------------------------------------------


def test_suppressed_instrumentation_records_nothing(instrument, client, sink):
    with suppress_instrumentation():
        create(client)

    assert sink.records == []


def test_instrument_uninstrument_instrument(instrument, client, sink, tracer_provider, meter_provider):
    instrument.uninstrument()
    create(client)
    assert sink.records == []
    instrument.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    create(client)
    assert len(sink.records) == 1


def test_content_is_recorded_only_when_opted_in_and_the_key_never(
    client, sink, span_exporter, tracer_provider, meter_provider, monkeypatch
):
    for capture in ("false", "true"):
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", capture)
        instrumentor = AnthropicInstrumentor()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        create(client)
        instrumentor.uninstrument()

    plain, captured = ours(span_exporter)
    assert "gen_ai.input.messages" not in plain.attributes
    assert "Say hello in one word" in captured.attributes["gen_ai.input.messages"]
    assert "This is a test reply" in captured.attributes["gen_ai.output.messages"]
    for span in span_exporter.get_finished_spans():
        assert API_KEY not in str(dict(span.attributes))
    assert API_KEY not in repr(sink.records)


# --- the budget guard -----------------------------------------------------------------------------------------------


@pytest.fixture
def enforced(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    attached = spendwatch.configure(
        ledger=str(tmp_path / "ledger.db"), metrics_address="off", enforce="block", daily_budget_usd=0.0001
    )
    yield attached
    runtime.detach()
    AnthropicInstrumentor().uninstrument()


def test_a_refusal_is_an_anthropic_error_and_nothing_is_sent(enforced):
    with AnthropicStub() as stub:  # in this process, to see what reached it
        patient = anthropic.Anthropic(base_url=stub.origin, api_key=API_KEY, max_retries=5)
        with pytest.raises(anthropic.AnthropicError) as refused:
            patient.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES)
        helper = patient.messages.stream(model=MODEL, max_tokens=1000, messages=MESSAGES)
        with pytest.raises(anthropic.AnthropicError), helper:
            pass

    assert isinstance(refused.value, spendwatch.BudgetExceededError)
    assert stub.requests == []
    enforced.sink.flush()
    (total,) = enforced.ledger.totals()
    assert (total["blocked"], total["success"]) == (2, 0)


def test_count_tokens_is_never_refused(enforced, anthropic_stub):
    client = anthropic.Anthropic(base_url=anthropic_stub, api_key=API_KEY, max_retries=0)

    assert client.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens > 0


def test_async_refusal_is_an_anthropic_error(enforced, anthropic_stub):
    client = anthropic.AsyncAnthropic(base_url=anthropic_stub, api_key=API_KEY, max_retries=5)

    with pytest.raises(anthropic.AnthropicError) as refused:
        asyncio.run(client.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES))

    assert isinstance(refused.value, spendwatch.BudgetExceededError)


# --- opentelemetry-instrument ---------------------------------------------------------------------------------------

APP = textwrap.dedent(
    f"""
    import anthropic
    client = anthropic.Anthropic(max_retries=0)
    reply = client.messages.create(model={MODEL!r}, max_tokens=20, messages={MESSAGES!r})
    print("APP-RESULT", reply.content[0].text)
    """
)


def test_opentelemetry_instrument_counts_an_anthropic_call_once(tmp_path, anthropic_stub):
    (tmp_path / "app.py").write_text(APP)
    environment = {
        **os.environ,
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": anthropic_stub,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"),
        "SPENDWATCH_METRICS_ADDRESS": "off",
    }
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, str(tmp_path / "app.py")]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "APP-RESULT This is a test reply" in result.stdout
    spans = console_spans(result.stdout)
    (ours,) = [span for span in spans if span["name"] == f"chat {MODEL}"]
    if SDK_TRACES:
        (sdk,) = [span for span in spans if span["name"] == "anthropic.messages.create"]
        assert sdk["parent_id"] == ours["context"]["span_id"]  # the SDK's own span sits inside ours
    assert ours["attributes"]["gen_ai.usage.cost"] > 0
    assert API_KEY not in result.stdout + result.stderr
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    try:
        assert ledger.call_count() == 1
        (total,) = ledger.totals()
        assert total["input_tokens"] == expected({"max_tokens": 20, "messages": MESSAGES}).input_tokens + 10
    finally:
        ledger.close()
