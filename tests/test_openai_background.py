"""Background responses: the create call counts the request's input (estimated); when this process reads the
finished response back (polling ``retrieve``, a retrieved stream, ``cancel``) a second record counts what the final
usage adds, once, priced as the rest."""

from __future__ import annotations

import openai
import pytest

from spendwatch.demo.stub import StubServer
from spendwatch.instrumentation.openai_sdk import background_responses
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

MODEL = "o3-pro"
INPUT = "Research the price of every unit of an LLM call"  # 47 characters: 12 tokens estimated; the stub says 13
LONG_WORDS = "internationalization " * 3  # 63 characters: 16 tokens estimated; the stub says 6
PRICES = PriceTable()


@pytest.fixture
def background_stub():
    with StubServer(background_polls=2) as server:
        yield server


@pytest.fixture
def client(background_stub):
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url=background_stub.base_url, max_retries=0)


def price(usage) -> float:
    return PRICES.lookup(MODEL).cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens)


def assert_counted_in_two_records(sink, stub, first_span, spans):
    (usage,) = stub.usage_log
    created, finished = sink.records
    assert (created.output_tokens, created.estimated) == (0, True)  # the request's input, estimated
    # The second adds the output, and the input beyond the estimate: never less than nothing.
    added_input = max(usage.input_tokens - created.input_tokens, 0)
    assert (finished.input_tokens, finished.output_tokens) == (added_input, usage.output_tokens)
    assert finished.estimated is (created.input_tokens > usage.input_tokens)  # the pair counts more than reported
    assert finished.cost_usd == pytest.approx(PRICES.lookup(MODEL).cost(added_input, usage.output_tokens, 0), rel=1e-12)
    assert created.cost_usd + finished.cost_usd == pytest.approx(
        max(price(usage), created.cost_usd + finished.cost_usd)
    )
    assert (finished.operation, finished.request_model, finished.response_model) == ("generate_content", MODEL, MODEL)
    second = next(span for span in spans if span.attributes.get("gen_ai.response.id"))
    assert second.parent == first_span.parent  # in the trace the create call was made in


@pytest.mark.parametrize("text", [INPUT, LONG_WORDS], ids=["estimate below", "estimate above"])
def test_polling_until_completed_counts_the_output_once(client, background_stub, sink, span_exporter, text):
    response = client.responses.create(model=MODEL, input=text, background=True)
    assert response.status == "queued" and len(sink.records) == 1
    (first_span,) = span_exporter.get_finished_spans()

    while response.status in ("queued", "in_progress"):
        response = client.responses.retrieve(response.id)
    client.responses.retrieve(response.id)  # read again: not counted again

    assert response.status == "completed"
    assert_counted_in_two_records(sink, background_stub, first_span, span_exporter.get_finished_spans())
    assert not background_responses.awaiting(response.id)


async def test_an_async_retrieved_stream_counts_the_output(background_stub, sink, span_exporter):
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=background_stub.base_url, max_retries=0)
    response = await client.responses.create(model=MODEL, input=INPUT, background=True)
    (first_span,) = span_exporter.get_finished_spans()
    await client.responses.retrieve(response.id)
    await client.responses.retrieve(response.id)  # the stub finishes it after two polls

    events = [event.type async for event in await client.responses.retrieve(response.id, stream=True)]

    assert events[-1] == "response.completed"
    assert_counted_in_two_records(sink, background_stub, first_span, span_exporter.get_finished_spans())


def test_a_cancelled_response_counts_what_it_produced(client, background_stub, sink, span_exporter):
    response = client.responses.create(model=MODEL, input=INPUT, background=True)
    (first_span,) = span_exporter.get_finished_spans()

    assert client.responses.with_raw_response.cancel(response.id).parse().status == "cancelled"

    assert_counted_in_two_records(sink, background_stub, first_span, span_exporter.get_finished_spans())


def test_a_response_never_read_back_adds_nothing_and_an_unknown_one_is_left_alone(client, background_stub, sink):
    waiting = client.responses.create(model=MODEL, input=INPUT, background=True)
    other = StubServer(background_polls=0)
    with other:
        plain = openai.OpenAI(api_key=FAKE_API_KEY, base_url=other.base_url, max_retries=0)
        plain.responses.create(model=MODEL, input=INPUT)  # not in the background: counted in full at once

    assert len(sink.records) == 2 and sink.records[1].output_tokens > 0
    assert background_responses.awaiting(waiting.id)
