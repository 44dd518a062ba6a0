"""What a failed call counts as. Nothing was billed when the provider answered with an error, the request never
reached it, or the SDK refused the arguments: the call costs $0, "not billed". When the request went out and no
usable answer came back (a client timeout, a cancelled task, an answer the SDK could not validate or parse), the
provider may well have billed it: the call is counted from the request's input, flagged as estimated, and never
recorded as free."""

from __future__ import annotations

import asyncio
import socket
import time

import openai
import pydantic
import pytest
from openai import _base_client

from spendwatch.demo.stub import StubServer
from spendwatch.instrumentation.background import FLUSH_INTERVAL_S
from spendwatch.instrumentation.pricing import rounded_usd
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

MESSAGES = [{"role": "user", "content": "How much does this call cost?"}]  # 29 characters: 8 tokens at 4 a token
ESTIMATED_INPUT_TOKENS = 8
# openai 3.x sends through httpx2, older releases through httpx.
_httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx


class Answer(pydantic.BaseModel):
    amount_usd: float


@pytest.fixture(scope="module")
def slow_stub():
    with StubServer(reply_delay_s=1.0) as server:
        yield server


def assert_counted_from_the_request(span_exporter, sink, error_type: str) -> None:
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.outcome, record.error_type, record.estimated) == ("error", error_type, True)
    assert (record.input_tokens, record.output_tokens) == (ESTIMATED_INPUT_TOKENS, 0)
    assert record.pricing.startswith("genai-prices") and record.cost_usd > 0
    assert span.attributes["error.type"] == error_type
    assert span.attributes["spendwatch.cost.estimated"] is True
    assert span.attributes["gen_ai.usage.input_tokens"] == ESTIMATED_INPUT_TOKENS
    assert span.attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)


def assert_not_billed(span_exporter, sink, error_type: str) -> None:
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.outcome, record.error_type) == ("error", error_type)
    assert (record.cost_usd, record.pricing) == (0.0, "not billed")
    assert span.attributes["error.type"] == error_type
    assert "gen_ai.usage.cost" not in span.attributes


def test_a_client_timeout_is_counted_from_the_request(slow_stub, span_exporter, sink):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=slow_stub.base_url, max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert_counted_from_the_request(span_exporter, sink, "APITimeoutError")


async def test_a_cancelled_async_call_is_counted_from_the_request(slow_stub, span_exporter, sink):
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=slow_stub.base_url, max_retries=0)
    with pytest.raises(TimeoutError):
        call = client.embeddings.create(model="text-embedding-3-small", input=MESSAGES[0]["content"])
        await asyncio.wait_for(call, 0.2)

    (record,) = sink.records
    assert (record.operation, record.error_type, record.estimated) == ("embeddings", "CancelledError", True)
    assert record.input_tokens == ESTIMATED_INPUT_TOKENS and record.cost_usd > 0


def test_an_answer_the_sdk_cannot_parse_is_counted_from_the_request(client, stub, span_exporter, sink):
    # The stub answers in prose, which is no Answer: the provider billed the call, then parse() raises.
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES, response_format=Answer)

    assert len(stub.usage_log) == 1  # it was answered
    assert_counted_from_the_request(span_exporter, sink, "ValidationError")


def test_an_answer_that_fails_strict_validation_is_counted_from_the_request(stub, span_exporter, sink):
    client = openai.OpenAI(
        api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0, _strict_response_validation=True
    )
    with pytest.raises(openai.APIResponseValidationError):  # the stub's usage fields hold strings: billed, unreadable
        client.chat.completions.create(model="stub-malformed-usage", messages=MESSAGES)

    (record,) = sink.records
    assert (record.error_type, record.estimated, record.input_tokens) == ("APIResponseValidationError", True, 8)
    assert record.pricing == "unpriced"  # the stub's model has no price: counted, never free


def test_arguments_the_sdk_refuses_before_sending_are_not_billed(client, stub, span_exporter, sink):
    with pytest.raises(TypeError):
        client.chat.completions.create(model="gpt-4o-mini")  # no messages: refused before any request

    assert stub.requests == []
    assert_not_billed(span_exporter, sink, "TypeError")


@pytest.mark.parametrize("model, error_class", [("stub-error-500", openai.InternalServerError),
                                                ("stub-error-429", openai.RateLimitError)])  # fmt: skip
def test_an_error_the_provider_answered_with_is_not_billed(client, span_exporter, sink, model, error_class):
    with pytest.raises(error_class):
        client.chat.completions.create(model=model, messages=MESSAGES)

    assert_not_billed(span_exporter, sink, error_class.__name__)


def test_a_request_that_never_reached_the_provider_is_not_billed(span_exporter, sink):
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert_not_billed(span_exporter, sink, "APIConnectionError")


class _CutBody(_httpx.SyncByteStream):
    """A response body that ends with the connection dropped after its first bytes."""

    def __iter__(self):
        yield b'{"id": "chatcmpl-1", "object": "chat.completion", '
        raise _httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def close(self) -> None:
        pass


def _cut_client() -> openai.OpenAI:
    def answer(request):
        return _httpx.Response(200, headers={"content-type": "application/json"}, stream=_CutBody())

    http_client = _httpx.Client(transport=_httpx.MockTransport(answer))
    return openai.OpenAI(
        api_key=FAKE_API_KEY, base_url="http://mock.invalid/v1", http_client=http_client, max_retries=0
    )


def test_an_answer_cut_short_is_counted_from_the_request(span_exporter, sink):
    with pytest.raises(openai.APIConnectionError):
        _cut_client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert_counted_from_the_request(span_exporter, sink, "APIConnectionError")


def test_an_answer_cut_short_while_the_caller_parses_it_is_counted_from_the_request(span_exporter, sink):
    api = _cut_client().chat.completions.with_streaming_response
    with api.create(model="gpt-4o-mini", messages=MESSAGES) as response, pytest.raises(_httpx.RemoteProtocolError):
        response.parse()

    assert_counted_from_the_request(span_exporter, sink, "RemoteProtocolError")


def test_a_raw_answer_that_cannot_be_parsed_is_counted_from_the_request(span_exporter, sink):
    # with_raw_response: the answer arrived (HTTP 200) and was billed; the SDK's parse of its body then fails.
    client = openai.OpenAI(
        api_key=FAKE_API_KEY, base_url="http://mock.invalid/v1", http_client=_answering(b"{not json"), max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)

    assert raw.status_code == 200
    assert_counted_from_the_request(span_exporter, sink, "JSONDecodeError")


def _answering(body: bytes) -> _httpx.Client:
    def answer(request):
        return _httpx.Response(200, headers={"content-type": "application/json"}, content=body)

    return _httpx.Client(transport=_httpx.MockTransport(answer))


async def test_a_call_whose_coroutine_is_closed_mid_wait_is_counted_from_the_request(slow_stub, sink):
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=slow_stub.base_url, max_retries=0)
    call = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    task = asyncio.ensure_future(_drive_then_close(call))
    await task

    assert sink.records == []  # not ended in place: closing may happen in a finaliser, which must not end a call
    deadline = time.monotonic() + 5 * FLUSH_INTERVAL_S
    while not sink.records and time.monotonic() < deadline:  # the background thread ends it
        await asyncio.sleep(0.05)
    (record,) = sink.records
    assert (record.error_type, record.estimated, record.input_tokens) == ("GeneratorExit", True, ESTIMATED_INPUT_TOKENS)


async def _drive_then_close(coroutine) -> None:
    """Start ``coroutine`` by hand until it waits for the answer, then close it, as a dropped coroutine is closed."""
    waiting = coroutine.send(None)
    while waiting is None or not isinstance(waiting, asyncio.Future):
        waiting = coroutine.send(None)
    await asyncio.sleep(0.1)
    coroutine.close()
