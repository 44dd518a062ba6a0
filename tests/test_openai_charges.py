"""Every billed unit of an OpenAI SDK call is read from the response, recorded on the span and in the ledger, and
priced as genai-prices' ``calc_price`` prices it: cache writes, audio and image tokens, the Responses API's built-in
tools, and the cost a provider or gateway states itself. Through the real SDK over HTTP against the local stub."""

from __future__ import annotations

import json
from dataclasses import replace
from zoneinfo import ZoneInfo

import openai
import pytest
from openai import _base_client

from spendwatch.demo.stub import StubServer
from spendwatch.exporter import Ledger, LedgerEntry
from spendwatch.exporter.ledger import open_backend
from spendwatch.instrumentation.pricing import rounded_usd
from tests.charges import client_at, genai_cost, genai_cost_of

pytestmark = pytest.mark.usefixtures("instrument_openai")
httpx_module = getattr(_base_client, "httpx2", None) or _base_client.httpx  # what this SDK sends through

MESSAGES = [{"role": "user", "content": "How much does this call cost?"}]
CACHE_WRITE_MODEL = "gpt-5.6-sol"  # OpenAI bills cache writes from GPT-5.6 on
TOOLS_MODEL = "gpt-4o-mini"  # priced per web search and per file search in genai-prices


@pytest.fixture
def stub_with(request):
    """A stub of its own started with the test's options: ``stub_with(cache_write_tokens=5)``."""
    started = []

    def start(**options) -> StubServer:
        server = StubServer(**options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def only_call(span_exporter, sink):
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    return span, record


def ledger_row(record, tmp_path) -> dict:
    """The calls row the ledger writes for ``record``."""
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    try:
        ledger.ingest([LedgerEntry("charges:1", record)])
        (row,) = ledger.table_rows("calls")
    finally:
        ledger.close()
    return row


def assert_costs(span, record, row, expected: float) -> None:
    assert expected is not None and expected > 0
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert span.attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)


# --- cache writes ------------------------------------------------------------------------------------------------


def test_chat_cache_writes_are_recorded_and_priced_at_their_own_rate(stub_with, span_exporter, sink, tmp_path):
    stub = stub_with(cache_write_tokens=5, cached_tokens=2)
    client_at(stub.base_url, stub).chat.completions.create(model=CACHE_WRITE_MODEL, messages=MESSAGES)

    span, record = only_call(span_exporter, sink)
    (reported,) = stub.usage_log
    row = ledger_row(record, tmp_path)
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == record.cache_write_tokens == 5
    assert row["cache_write_tokens"] == 5
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 2
    assert_costs(span, record, row, genai_cost_of(reported))
    # The point: the call costs more than it would with its cache writes priced as plain input.
    assert record.cost_usd > genai_cost_of(replace(reported, cache_write_tokens=0))


@pytest.mark.parametrize("stream", [False, True])
def test_responses_cache_writes_are_recorded_and_priced(stream, stub_with, span_exporter, sink, tmp_path):
    stub = stub_with(cache_write_tokens=4)
    result = client_at(stub.base_url, stub).responses.create(model=CACHE_WRITE_MODEL, input="Cache me", stream=stream)
    if stream:
        list(result)

    span, record = only_call(span_exporter, sink)
    (reported,) = stub.usage_log
    row = ledger_row(record, tmp_path)
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == record.cache_write_tokens == 4
    assert_costs(span, record, row, genai_cost_of(reported))


# --- audio and image tokens --------------------------------------------------------------------------------------

AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_audio_tokens_in_and_out_are_recorded_and_priced_at_the_audio_rates(stub, span_exporter, sink, tmp_path):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Say it back"}, AUDIO_PART]}]
    client_at(stub.base_url, stub).chat.completions.create(
        model="gpt-audio", messages=messages, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}
    )

    span, record = only_call(span_exporter, sink)
    (reported,) = stub.usage_log
    row = ledger_row(record, tmp_path)
    assert reported.input_audio_tokens > 0 and reported.output_audio_tokens > 0
    assert (
        span.attributes["gen_ai.usage.audio.input_tokens"] == record.input_audio_tokens == reported.input_audio_tokens
    )
    assert span.attributes["gen_ai.usage.audio.output_tokens"] == record.output_audio_tokens
    assert (row["input_audio_tokens"], row["output_audio_tokens"]) == (
        reported.input_audio_tokens,
        reported.output_audio_tokens,
    )
    assert_costs(span, record, row, genai_cost_of(reported))


def test_chat_image_tokens_are_recorded_and_priced(stub, span_exporter, sink, tmp_path):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE_PART, IMAGE_PART]}]
    client_at(stub.base_url, stub).chat.completions.create(model="gpt-4o-mini", messages=messages)

    span, record = only_call(span_exporter, sink)
    (reported,) = stub.usage_log
    row = ledger_row(record, tmp_path)
    assert reported.input_image_tokens > 0
    assert span.attributes["gen_ai.usage.image.input_tokens"] == record.input_image_tokens
    assert row["input_image_tokens"] == reported.input_image_tokens
    assert_costs(span, record, row, genai_cost_of(reported))


def test_responses_image_tokens_are_recorded(stub, span_exporter, sink):
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "data:,"}]
    client_at(stub.base_url, stub).responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": content}])

    span, record = only_call(span_exporter, sink)
    assert record.input_image_tokens == stub.usage_log[0].input_image_tokens > 0
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0]), rel=1e-9)


# --- the Responses API's built-in tools --------------------------------------------------------------------------

SEARCH_TOOLS = [{"type": "web_search"}, {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]


@pytest.mark.parametrize("stream", [False, True])
def test_web_and_file_searches_are_counted_and_priced_per_call(stream, stub, span_exporter, sink, tmp_path):
    result = client_at(stub.base_url, stub).responses.create(
        model=TOOLS_MODEL, input="Look it up", tools=SEARCH_TOOLS, stream=stream
    )
    if stream:
        list(result)

    span, record = only_call(span_exporter, sink)
    row = ledger_row(record, tmp_path)
    units = {"web_search_calls": 2, "file_search_calls": 1}
    assert record.units == units
    assert json.loads(row["units"]) == units
    assert span.attributes["spendwatch.usage.web_search_calls"] == 2
    assert span.attributes["spendwatch.usage.file_search_calls"] == 1
    expected = genai_cost_of(stub.usage_log[0], units=units)
    assert expected > genai_cost_of(stub.usage_log[0])  # the searches are billed: they must be in the cost
    assert_costs(span, record, row, expected)


async def test_an_async_stream_counts_its_searches_too(async_client, stub, span_exporter, sink):
    stream = await async_client.responses.create(model=TOOLS_MODEL, input="Look it up", tools=SEARCH_TOOLS, stream=True)
    async for _ in stream:
        pass

    _, record = only_call(span_exporter, sink)
    assert record.units == {"web_search_calls": 2, "file_search_calls": 1}
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0], units=record.units), rel=1e-9)


def test_a_code_interpreter_container_is_one_session_however_many_calls_use_it(stub, span_exporter, sink):
    client = client_at(stub.base_url, stub)
    tool = {"type": "code_interpreter", "container": "cntr_charges_test_shared"}
    for _ in range(2):
        client.responses.create(model=TOOLS_MODEL, input="Add two and two", tools=[tool])
    client.responses.create(model=TOOLS_MODEL, input="Again", tools=[{"type": "code_interpreter", "container": {}}])

    first, second, fresh = sink.records
    assert first.units == {"code_interpreter_sessions": 1}
    assert not second.units  # the same container: billed once, when created
    assert fresh.units == {"code_interpreter_sessions": 1}
    for record, reported in zip(sink.records, stub.usage_log, strict=True):
        assert record.cost_usd == pytest.approx(genai_cost_of(reported, units=record.units), rel=1e-9)


def test_generated_images_are_counted(stub, span_exporter, sink):
    client_at(stub.base_url, stub).responses.create(
        model=TOOLS_MODEL, input="Draw a cat", tools=[{"type": "image_generation"}]
    )

    span, record = only_call(span_exporter, sink)
    assert record.units == {"images": 1}
    assert span.attributes["spendwatch.usage.images"] == 1


# --- the provider's own cost -------------------------------------------------------------------------------------

OPENROUTER = "https://openrouter.ai/api/v1"


@pytest.mark.parametrize("stream", [False, True])
def test_openrouters_usage_cost_wins_over_the_price_list(stream, stub_with, span_exporter, sink, tmp_path):
    stub = stub_with(usage_cost=0.0123)
    result = client_at(OPENROUTER, stub).chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=MESSAGES,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    if stream:
        list(result)

    span, record = only_call(span_exporter, sink)
    row = ledger_row(record, tmp_path)
    assert record.provider == "openrouter"
    assert record.cost_usd == row["cost_usd"] == 0.0123
    assert span.attributes["gen_ai.usage.cost.source"] == "provider"
    assert span.attributes["gen_ai.usage.cost"] == 0.0123


@pytest.mark.parametrize("stated", ["lots", -1.0, True])
def test_a_malformed_provider_cost_is_ignored_and_the_call_priced_from_its_tokens(
    stated, stub_with, span_exporter, sink
):
    stub = stub_with(usage_cost=stated)
    client_at(OPENROUTER, stub).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)

    span, record = only_call(span_exporter, sink)
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0], "openrouter"), rel=1e-9)
    assert span.attributes["gen_ai.usage.cost.source"] == "local"


def test_a_gateways_cost_header_is_the_cost_of_a_raw_response(stub_with, span_exporter, sink):
    stub = stub_with(cost_header="0.000415")
    raw = client_at(stub.base_url, stub).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )

    span, record = only_call(span_exporter, sink)
    assert raw.headers["x-litellm-response-cost"] == "0.000415"
    assert record.cost_usd == 0.000415
    assert span.attributes["gen_ai.usage.cost.source"] == "provider"


def test_the_bodys_cost_wins_over_a_gateways_header(stub_with, span_exporter, sink):
    stub = stub_with(cost_header="0.5", usage_cost=0.25)
    client_at(OPENROUTER, stub).chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)

    _, record = only_call(span_exporter, sink)
    assert record.cost_usd == 0.25


# --- hostile answers ---------------------------------------------------------------------------------------------


def test_malformed_details_and_output_items_are_left_out_and_the_rest_is_read(span_exporter, sink):
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": -5, "image_tokens": "many"},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 2, "audio_tokens": [3], "image_tokens": None},
        "total_tokens": 50,
        "cost": float("inf"),
    }
    output = [
        {"type": ["web_search_call"], "id": "odd"},
        {"type": "code_interpreter_call", "id": "ci", "container_id": 7},
        {"type": "web_search_call", "id": "ws", "status": "completed"},
        "not an item",
    ]
    body = {"id": "resp_1", "object": "response", "model": TOOLS_MODEL, "output": output, "usage": usage}
    headers = {"content-type": "application/json"}
    reply = json.dumps(body).encode()  # "Infinity" too, which Python's JSON reader (the SDK's) takes
    answer = httpx_module.MockTransport(lambda request: httpx_module.Response(200, headers=headers, content=reply))
    client = openai.OpenAI(
        api_key="k", base_url="https://api.openai.com/v1", http_client=httpx_module.Client(transport=answer)
    )

    client.responses.create(model=TOOLS_MODEL, input="Hi")

    _, record = only_call(span_exporter, sink)
    assert (record.input_tokens, record.output_tokens, record.cache_read_tokens) == (40, 10, 8)
    assert (record.cache_write_tokens, record.input_image_tokens, record.output_audio_tokens) == (0, 0, 0)
    assert record.units == {"web_search_calls": 1}
    assert record.estimated is False
    expected = genai_cost(
        TOOLS_MODEL, "openai", units=record.units, input_tokens=40, output_tokens=10, cache_read_tokens=8
    )
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)
