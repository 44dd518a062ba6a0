"""Each attempt of a call the SDK retries that the provider may have billed is counted: a read timeout is an
estimate from the request whether or not it was the last attempt, a refused connection costs nothing."""

from __future__ import annotations

import openai
import pytest

from spendwatch.demo.stub import StubServer
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

MESSAGES = [{"role": "user", "content": "How much does this call cost?"}]  # 29 characters: 8 tokens at 4 a token
ESTIMATED_INPUT_TOKENS = 8


def assert_estimated(record, error_type: str) -> None:
    assert (record.outcome, record.error_type, record.estimated) == ("error", error_type, True)
    assert (record.input_tokens, record.output_tokens) == (ESTIMATED_INPUT_TOKENS, 0)
    assert record.pricing.startswith("genai-prices") and record.cost_usd > 0


def test_three_read_timeouts_are_three_estimates(sink, span_exporter):
    with StubServer(reply_delay_s=1.0) as slow:
        client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=slow.base_url, max_retries=2, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert len(slow.requests) == 3

    assert len(sink.records) == 3
    for record in sink.records:
        assert_estimated(record, "APITimeoutError")
    spans = {span.attributes.get("spendwatch.attempt"): span for span in span_exporter.get_finished_spans()}
    assert set(spans) == {1, 2, None}  # the two retried attempts, and the call, which ended with the third
    call = spans[None]
    for attempt in (spans[1], spans[2]):
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.name == call.name == "chat gpt-4o-mini"
        assert attempt.attributes["spendwatch.cost.estimated"] is True


def test_a_read_timeout_then_a_refused_connection_is_one_estimate_and_one_free_attempt(sink):
    with StubServer(reply_delay_s=1.0, refuse_after=1) as failing:
        client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=failing.base_url, max_retries=1, timeout=0.2)
        with pytest.raises(openai.APIConnectionError) as raised:
            client.embeddings.create(model="text-embedding-3-small", input=MESSAGES[0]["content"])

    assert not isinstance(raised.value, openai.APITimeoutError)  # the last attempt was refused
    timed_out, refused = sink.records
    assert_estimated(timed_out, "APITimeoutError")
    assert (refused.error_type, refused.cost_usd, refused.pricing) == ("APIConnectionError", 0.0, "not billed")


async def test_an_async_call_counts_its_retried_attempts_too(sink):
    with StubServer(reply_delay_s=1.0) as slow:
        client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=slow.base_url, max_retries=1, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert len(sink.records) == 2
    for record in sink.records:
        assert_estimated(record, "APITimeoutError")


@pytest.fixture(scope="module")
def refusing_url():
    with StubServer() as gone:
        url = gone.base_url
    return url  # nothing listens there any more: every connection is refused


CALLS = {
    "chat": lambda client: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),
    "chat stream": lambda client: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True),
    "raw responses": lambda client: client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi"),
    "images": lambda client: client.images.generate(model="gpt-image-1", prompt="a cat"),
    "moderations": lambda client: client.moderations.create(input="Hi"),
}


@pytest.mark.parametrize("max_retries", [0, 1])
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_refused_call_is_not_billed_on_its_record_and_span(refusing_url, sink, span_exporter, call, max_retries):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=refusing_url, max_retries=max_retries)
    with pytest.raises(openai.APIConnectionError):
        call(client)

    (record,) = sink.records  # a refused attempt adds nothing
    (span,) = span_exporter.get_finished_spans()
    assert (record.cost_usd, record.pricing) == (0.0, "not billed")
    assert span.attributes["spendwatch.pricing"] == "not billed"
    assert "gen_ai.usage.cost" not in span.attributes
