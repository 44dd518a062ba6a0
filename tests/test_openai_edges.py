"""The instrumentation at its edges, through the real SDK. Streams: Azure's opening filter chunk, failures a Responses
stream reports in its events, the SDK's ``.stream()`` helpers closed early, ``aclose()`` and ``aiter()``, a stream
dropped inside the garbage collector while the thread holds a lock that recording a call takes. Calls: a budget guard
that fails, a billed answer the SDK raises on, raw-response accessors bound while instrumented, a fork while the
background thread records."""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import os
import threading
import time

import openai
import pydantic
import pytest
from openai import _base_client
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import StatusCode

from spendwatch.instrumentation import register_sink, unregister_sink
from spendwatch.instrumentation.admission import register_guard, unregister_guard
from spendwatch.instrumentation.background import flush_all
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import rounded_usd

pytestmark = pytest.mark.usefixtures("instrument_openai")

# openai 3.x sends through httpx2, older releases through httpx.
_httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx
MESSAGES = [{"role": "user", "content": "How much does this call cost?"}]
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def sse(events: list[dict], named: bool = False) -> bytes:
    """A server-sent event stream: ``data:`` lines, with ``event:`` lines as the Responses API sends them."""
    lines = []
    for event in events:
        if named:
            lines.append(f"event: {event['type']}")
        lines.append(f"data: {json.dumps(event)}\n")
    return ("\n".join(lines) + "\ndata: [DONE]\n\n").encode()


def serving(body: bytes, content_type: str = "text/event-stream") -> _httpx.Client:
    headers = {"content-type": content_type}
    return _httpx.Client(
        transport=_httpx.MockTransport(lambda request: _httpx.Response(200, headers=headers, content=body))
    )


def chunk(model: str, delta: dict | None, usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def test_an_azure_stream_opening_with_a_filter_chunk_is_priced_by_the_model_the_others_name(span_exporter, sink):
    # Azure's first chunk carries the prompt filter results and no model; the deployment name is not a model.
    opening = {**chunk("", None), "id": "", "object": "", "created": 0, "prompt_filter_results": [{"prompt_index": 0}]}
    body = sse(
        [opening, chunk("gpt-4o-mini-2024-07-18", {"content": "Hi"}), chunk("gpt-4o-mini-2024-07-18", None, USAGE)]
    )
    client = openai.AzureOpenAI(
        api_key="k", api_version="2024-10-21", azure_endpoint="https://x.openai.azure.com", http_client=serving(body)
    )

    list(client.chat.completions.create(model="prod-chat", messages=MESSAGES, stream=True))

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert span.attributes["spendwatch.pricing"].startswith("genai-prices")
    assert sink.records[0].cost_usd > 0


ANSWER = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
).encode()


@pytest.mark.parametrize(
    ("base_url", "provider"),
    [
        ("https://my-resource.openai.azure.com/openai/v1/", "azure.ai.openai"),
        ("https://My-Resource.cognitiveservices.azure.com/openai/v1/", "azure.ai.openai"),
        ("https://api.openai.com/v1/", "openai"),
        ("https://openai.azure.com.example.org/v1/", "openai"),
    ],
)
def test_a_plain_client_on_azure_openai_v1_reports_azure(base_url, provider, span_exporter, sink):
    # Microsoft's v1 API is reached with the plain OpenAI client: its host, not its class, says Azure.
    client = openai.OpenAI(api_key="k", base_url=base_url, http_client=serving(ANSWER, "application/json"))

    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.provider.name"] == sink.records[0].provider == provider
    assert sink.records[0].cost_usd > 0


def test_a_client_whose_base_url_is_set_again_reports_the_new_provider(span_exporter, sink):
    client = openai.OpenAI(
        api_key="k", base_url="https://api.openai.com/v1/", http_client=serving(ANSWER, "application/json")
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.base_url = "https://my-resource.openai.azure.com/openai/v1/"
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert [record.provider for record in sink.records] == ["openai", "azure.ai.openai"]


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "output": [],
    "status": "in_progress",
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": None,
}
RESPONSES_USAGE = {
    "input_tokens": 9,
    "output_tokens": 2,
    "total_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}
DELTA = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "Hi"}
FAILED = {
    "type": "response.failed",
    "response": {
        **RESPONSE,
        "status": "failed",
        "error": {"code": "server_error", "message": "boom"},
        "usage": RESPONSES_USAGE,
    },
}
ERROR = {"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}


@pytest.mark.parametrize(
    ("last", "error_type", "output_tokens"),
    [(FAILED, "server_error", 2), (ERROR, "rate_limit_exceeded", 1)],
    ids=["response.failed", "error-event"],
)
def test_a_responses_stream_that_reports_a_failure_in_its_events_is_recorded_as_failed(
    last, error_type, output_tokens, span_exporter, sink
):
    events = [{"type": "response.created", "response": RESPONSE}, DELTA, last]
    body = sse([{**event, "sequence_number": number} for number, event in enumerate(events)], named=True)
    client = openai.OpenAI(api_key="k", base_url="http://mock.invalid/v1", http_client=serving(body))

    seen = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))

    assert [event.type for event in seen] == [event["type"] for event in events]  # the caller's stream is untouched
    (span,) = span_exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    (record,) = sink.records
    assert (record.outcome, record.error_type, record.output_tokens) == ("error", error_type, output_tokens)


@pytest.mark.parametrize("helper", ["chat", "responses"])
def test_a_stream_helper_closed_early_ends_its_call_when_its_block_ends(helper, client, span_exporter, sink):
    api = client.chat.completions if helper == "chat" else client.responses
    arguments = {"messages": MESSAGES} if helper == "chat" else {"input": "hi"}
    with api.stream(model="gpt-4o-mini", **arguments) as stream:
        for _ in stream:
            break

    assert len(span_exporter.get_finished_spans()) == 1  # not left to the garbage collector
    assert len(sink.records) == 1


async def test_an_async_stream_helper_closed_early_ends_its_call(async_client, span_exporter, sink):
    async with async_client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        async for _ in stream:
            break

    assert len(span_exporter.get_finished_spans()) == 1
    assert len(sink.records) == 1


async def test_an_async_stream_supports_aclosing_its_iterator_and_aclose(async_client, span_exporter, sink):
    stream = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert inspect.isasyncgen(aiter(stream))  # as the SDK's own AsyncStream.__aiter__ gives
    async with contextlib.aclosing(aiter(stream)) as chunks:
        async for _ in chunks:
            break
    if hasattr(openai.AsyncStream, "aclose"):  # openai 3.x; 1.x and 2.x have close() only
        await stream.aclose()
    else:
        await stream.close()

    assert len(span_exporter.get_finished_spans()) == 1
    assert len(sink.records) == 1


class LockingSink:
    """A sink that takes a lock, as the ledger's journal does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records = []

    def record(self, record) -> None:
        with self.lock:
            self.records.append(record)


def test_a_stream_dropped_while_its_thread_holds_a_recording_lock_does_not_deadlock(client):
    locking = LockingSink()
    register_sink(locking)
    try:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        next(stream)

        def drop_holding_the_lock():
            nonlocal stream
            with locking.lock:  # the garbage collector may finalise the stream at any allocation, lock held or not
                stream = None
                gc.collect()

        thread = threading.Thread(target=drop_holding_the_lock, daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "finalising the stream waited for a lock its own thread holds"
        flush_all()  # the background thread ends the dropped stream's call within a second
        assert len(locking.records) == 1
    finally:
        unregister_sink(locking)


# --- calls ----------------------------------------------------------------------------------------------------------


class UnreachableGuard:
    """A budget guard whose ledger cannot be reached (a guard is any object with ``admit``)."""

    def admit(self, request):
        raise ConnectionError("the ledger is unreachable")


def test_a_failing_budget_guard_lets_the_call_through_and_leaves_no_span_current(client, span_exporter, sink):
    guard = UnreachableGuard()
    register_guard(guard)
    try:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        unregister_guard(guard)

    assert reply.choices[0].message.content
    (span,) = span_exporter.get_finished_spans()
    assert span.status.status_code is not StatusCode.ERROR
    assert sink.records[0].cost_usd > 0
    assert not trace.get_current_span().is_recording()


class Answer(pydantic.BaseModel):
    answer: str


CUT_SHORT = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": '{"answer": '}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 4000, "total_tokens": 5200},
    }
).encode()


@pytest.mark.parametrize("raw", [False, True], ids=["parse", "with_raw_response.parse"])
def test_an_answer_the_sdk_raises_on_is_still_billed(raw, span_exporter, sink):
    # The provider answered (and billed) up to the token limit; parse() then raises LengthFinishReasonError.
    client = openai.OpenAI(
        api_key="k", base_url="http://mock.invalid/v1", http_client=serving(CUT_SHORT, "application/json")
    )
    api = client.chat.completions.with_raw_response if raw else client.chat.completions

    with pytest.raises(openai.LengthFinishReasonError):
        result = api.parse(model="gpt-4o-mini", messages=MESSAGES, response_format=Answer)
        result.parse()  # with_raw_response: the caller's own parse() raises

    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.outcome, record.input_tokens, record.output_tokens) == ("error", 1200, 4000)
    assert record.cost_usd > 0 and span.attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)


def test_a_raw_response_accessor_bound_while_instrumented_stops_recording_when_uninstrumented(client, span_exporter):
    raw_create = client.chat.completions.with_raw_response.create  # the SDK caches it, bound to the wrapped method
    OpenAIInstrumentor().uninstrument()

    raw_create(model="gpt-4o-mini", messages=MESSAGES).parse()

    assert span_exporter.get_finished_spans() == ()


@pytest.mark.parametrize("stream", [False, True], ids=["response", "stream"])
def test_with_streaming_response_counts_what_the_caller_parses(stream, client, stub, span_exporter, sink):
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, **options
    ) as response:
        parsed = response.parse()
        if stream:
            list(parsed)

    (usage,) = stub.usage_log
    (record,) = sink.records
    assert (record.input_tokens, record.output_tokens, record.estimated) == (
        usage.input_tokens,
        usage.output_tokens,
        False,
    )
    assert len(span_exporter.get_finished_spans()) == 1


async def test_async_with_streaming_response_counts_what_the_caller_parses(async_client, stub, sink):
    async with async_client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    ) as response:
        await response.parse()

    (usage,) = stub.usage_log
    assert (sink.records[0].input_tokens, sink.records[0].output_tokens) == (usage.input_tokens, usage.output_tokens)


def test_with_streaming_response_never_parsed_is_counted_from_the_request_when_closed(client, span_exporter, sink):
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
        for _ in response.iter_lines():
            pass

    (record,) = sink.records
    assert record.estimated is True and record.input_tokens > 0
    assert len(span_exporter.get_finished_spans()) == 1


class FailingSpanProcessor(SpanProcessor):
    """A third-party span processor with a bug."""

    def on_end(self, span) -> None:
        raise RuntimeError("exporter bug")


def test_a_span_processor_that_raises_costs_neither_the_call_nor_its_usage_record(tracer_provider, client, sink):
    tracer_provider.add_span_processor(FailingSpanProcessor())

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reply.choices[0].message.content
    assert len(sink.records) == 1 and sink.records[0].cost_usd > 0


def test_a_responses_stream_closed_early_estimates_tool_call_output_too(span_exporter, sink):
    arguments = {"type": "response.function_call_arguments.delta", "item_id": "f", "output_index": 0}
    events = [{"type": "response.created", "response": RESPONSE}] + [{**arguments, "delta": part} for part in "abc"]
    body = sse([{**event, "sequence_number": number} for number, event in enumerate(events)], named=True)
    client = openai.OpenAI(api_key="k", base_url="http://mock.invalid/v1", http_client=serving(body))

    stream = client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    for _ in stream:
        pass  # the server ended the stream without its response.completed event
    stream.close()

    (record,) = sink.records
    assert (record.output_tokens, record.estimated) == (3, True)


def test_a_dropped_stream_is_counted_by_the_background_thread_within_a_second_or_two(client, sink):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()

    deadline = time.monotonic() + 5  # the thread's interval is one second
    while not sink.records and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.records) == 1


def test_a_call_ended_when_no_thread_can_start_is_still_recorded(sink):
    # At interpreter shutdown (Python 3.12.0-1) no thread may start: a call ended then, in a process whose metrics
    # thread was never started (here: a forked child), must still reach the sinks.
    client = openai.OpenAI(
        api_key="k", base_url="http://mock.invalid/v1", http_client=serving(ANSWER, "application/json")
    )
    pid = os.fork()
    if pid == 0:
        try:

            def refuse(self):
                raise RuntimeError("can't create new thread at interpreter shutdown")

            threading.Thread.start = refuse
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            os._exit(0 if len(sink.records) == 1 and sink.records[0].cost_usd > 0 else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
