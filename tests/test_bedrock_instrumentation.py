"""The Bedrock instrumentor with the real boto3 over real HTTP, against the Bedrock stub running as a process."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.exceptions
import genai_prices
import pytest
from botocore.config import Config
from opentelemetry.instrumentation.utils import suppress_instrumentation

import spendwatch
from spendwatch import runtime
from spendwatch.demo.bedrock_stub import BedrockStub
from spendwatch.instrumentation import admission
from spendwatch.instrumentation.errors import BudgetExceededError
from tests.bedrock import *  # noqa: F403
from tests.bedrock import ACCESS_KEY, CACHE_READ, CACHE_WRITE, SECRET_KEY, SESSION_TOKEN, bedrock_client
from tests.cassettes import Interaction, RecordedRequest, RecordedResponse, ReplayServer
from tests.test_auto_instrumentation import console_spans, ledger_in

MESSAGES = [{"role": "user", "content": [{"text": "Say this is a test"}]}]
CACHED_MESSAGES = [{"role": "user", "content": [{"text": "Say this is a test"}, {"cachePoint": {"type": "default"}}]}]
CONVERSE_MODEL = "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
# One InvokeModel request body per model family, each capping the output where that family's API does.
FAMILY_BODIES = {
    "anthropic.claude-3-haiku-20240307-v1:0": {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say this is a test"}]}],
    },
    "amazon.nova-micro-v1:0": {
        "schemaVersion": "messages-v1",
        "messages": [{"role": "user", "content": [{"text": "Say this is a test"}]}],
        "inferenceConfig": {"max_new_tokens": 5},
    },
    "meta.llama3-1-70b-instruct-v1:0": {"prompt": "Say this is a test", "max_gen_len": 5},
    "mistral.mistral-7b-instruct-v0:2": {"prompt": "Say this is a test", "max_tokens": 5},
    "cohere.command-r-v1:0": {"message": "Say this is a test", "max_tokens": 5},
    "amazon.titan-text-lite-v1": {"inputText": "Say this is a test", "textGenerationConfig": {"maxTokenCount": 5}},
}
STUB_INPUT = 5  # words of "Say this is a test": the stub counts one token per word
REPLY = 5  # every request above caps the output at 5


def expected_cost(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0):
    """What genai-prices says the call costs, or None when it has no AWS Bedrock price for the model."""
    usage = genai_prices.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    try:
        return float(genai_prices.calc_price(usage, model, provider_id="aws").total_price)
    except LookupError:
        return None


def the_span(span_exporter):
    spans = span_exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def check_usage(span, record, model, input_tokens, output_tokens, cache_read=0, estimated=False):
    attributes = span.attributes
    assert attributes["gen_ai.provider.name"] == "aws.bedrock" == record.provider
    assert attributes["gen_ai.request.model"] == model == record.request_model
    assert attributes["gen_ai.usage.input_tokens"] == input_tokens == record.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == output_tokens == record.output_tokens
    assert attributes.get("gen_ai.usage.cache_read.input_tokens", 0) == cache_read
    assert attributes["spendwatch.cost.estimated"] is estimated
    cost = expected_cost(model, input_tokens, output_tokens, cache_read)
    if cost is None:
        assert attributes["spendwatch.pricing"] == "unpriced" and record.cost_usd is None
    else:
        assert record.cost_usd == pytest.approx(cost, rel=1e-9)


def caller_view(result: dict) -> dict:
    """What a caller reads of an answer, without the per-request metadata (date, request id)."""
    return {key: value for key, value in result.items() if key != "ResponseMetadata"}


# --- the four operations -----------------------------------------------------------------------------------------


def test_converse_gets_one_span_with_its_usage_and_cost(instrument_bedrock, bedrock, span_exporter, sink):
    result = bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 5})

    assert result["usage"] == {"inputTokens": STUB_INPUT, "outputTokens": REPLY, "totalTokens": STUB_INPUT + REPLY}
    span = the_span(span_exporter)
    assert span.name == f"chat {CONVERSE_MODEL}"
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.request.max_tokens"] == 5
    assert span.attributes["cloud.region"] == "us-east-1"
    assert span.attributes["server.address"] == "127.0.0.1"
    (record,) = sink.records
    check_usage(span, record, CONVERSE_MODEL, STUB_INPUT, REPLY)


def test_converse_cache_reads_and_writes_are_part_of_the_input(instrument_bedrock, bedrock, span_exporter, sink):
    # Bedrock's inputTokens leaves out the tokens read from and written to the cache; the conventions' input has them.
    result = bedrock.converse(modelId=CONVERSE_MODEL, messages=CACHED_MESSAGES, inferenceConfig={"maxTokens": 5})

    assert result["usage"]["cacheReadInputTokens"] == CACHE_READ
    span = the_span(span_exporter)
    total_input = STUB_INPUT + CACHE_READ + CACHE_WRITE
    assert span.attributes["gen_ai.usage.input_tokens"] == total_input
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == CACHE_WRITE
    (record,) = sink.records
    assert record.cost_usd == pytest.approx(expected_cost(CONVERSE_MODEL, total_input, REPLY, CACHE_READ, CACHE_WRITE))


@pytest.mark.parametrize("stream", [False, True], ids=["converse", "converse_stream"])
def test_converse_service_tier_and_hour_long_cache_writes_are_recorded(
    stream, instrument_bedrock, bedrock, span_exporter, sink
):
    messages = [{"role": "user", "content": [{"text": "Say this is a test"}, {"cachePoint": {"type": "default"}}]}]
    messages[0]["content"][1]["cachePoint"]["ttl"] = "1h"
    arguments = {"modelId": CONVERSE_MODEL, "messages": messages, "serviceTier": {"type": "priority"}}

    if stream:
        list(bedrock.converse_stream(**arguments)["stream"])
    else:
        bedrock.converse(**arguments)

    (record,) = sink.records
    assert record.service_tier == "priority"
    assert record.cache_write_tokens == CACHE_WRITE and record.units == {"cache_write_1h_tokens": CACHE_WRITE}


def test_invoke_model_service_tier_is_recorded(instrument_bedrock, bedrock, sink):
    model = "meta.llama3-1-70b-instruct-v1:0"
    bedrock.invoke_model(modelId=model, body=json.dumps(FAMILY_BODIES[model]), serviceTier="flex")["body"].read()

    assert sink.records[0].service_tier == "flex"


def test_converse_stream_events_reach_the_caller_untouched(
    instrument_bedrock, bedrock, span_exporter, sink, tracer_provider, meter_provider
):
    instrument_bedrock.uninstrument()
    bare = list(bedrock.converse_stream(modelId=CONVERSE_MODEL, messages=MESSAGES)["stream"])
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    response = bedrock.converse_stream(modelId=CONVERSE_MODEL, messages=MESSAGES)
    assert not span_exporter.get_finished_spans()  # the call ends when the stream has been read
    events = list(response["stream"])

    assert events == bare
    span = the_span(span_exporter)
    check_usage(span, sink.records[0], CONVERSE_MODEL, STUB_INPUT, 12)


@pytest.mark.parametrize("model", FAMILY_BODIES)
def test_invoke_model_reads_each_familys_usage(
    model, instrument_bedrock, bedrock, span_exporter, sink, tracer_provider, meter_provider
):
    body = json.dumps(FAMILY_BODIES[model])
    instrument_bedrock.uninstrument()
    bare = bedrock.invoke_model(modelId=model, body=body)
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    result = bedrock.invoke_model(modelId=model, body=body)

    assert result["body"].read() == bare["body"].read()
    assert caller_view(result).keys() == caller_view(bare).keys()
    span = the_span(span_exporter)
    check_usage(span, sink.records[0], model, STUB_INPUT, REPLY)


@pytest.mark.parametrize("model", FAMILY_BODIES)
def test_invoke_model_with_response_stream_reads_the_invocation_metrics(
    model, instrument_bedrock, bedrock, span_exporter, sink, tracer_provider, meter_provider
):
    body = json.dumps(FAMILY_BODIES[model])
    instrument_bedrock.uninstrument()
    bare = list(bedrock.invoke_model_with_response_stream(modelId=model, body=body)["body"])
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    events = list(bedrock.invoke_model_with_response_stream(modelId=model, body=body)["body"])

    assert events == bare
    span = the_span(span_exporter)
    check_usage(span, sink.records[0], model, STUB_INPUT, REPLY)


def test_anthropic_stream_cache_counts_come_from_message_start(instrument_bedrock, bedrock, span_exporter):
    body = dict(FAMILY_BODIES["anthropic.claude-3-haiku-20240307-v1:0"])
    body["system"] = [{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral"}}]
    model = "anthropic.claude-3-haiku-20240307-v1:0"

    list(bedrock.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))["body"])

    span = the_span(span_exporter)
    assert span.attributes["gen_ai.usage.input_tokens"] == STUB_INPUT + 2 + CACHE_READ + CACHE_WRITE
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == CACHE_WRITE


@pytest.mark.parametrize(
    ("model", "marker"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", {"cache_control": {"type": "ephemeral"}}),
        ("amazon.nova-micro-v1:0", {"cachePoint": {"type": "default"}}),
    ],
)
def test_invoke_model_cache_counts_come_from_the_body(model, marker, instrument_bedrock, bedrock, span_exporter, sink):
    body = json.loads(json.dumps(FAMILY_BODIES[model]))
    body["messages"][0]["content"][0].update(marker)

    bedrock.invoke_model(modelId=model, body=json.dumps(body))["body"].read()

    span = the_span(span_exporter)
    total_input = STUB_INPUT + CACHE_READ + CACHE_WRITE
    assert span.attributes["gen_ai.usage.input_tokens"] == total_input
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == CACHE_WRITE
    expected = expected_cost(model, total_input, REPLY, CACHE_READ, CACHE_WRITE)
    assert sink.records[0].cost_usd == pytest.approx(expected)


def test_an_inference_profile_arn_is_priced_as_its_profile(instrument_bedrock, bedrock, span_exporter, sink):
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{CONVERSE_MODEL}"
    bedrock.converse(modelId=arn, messages=MESSAGES, inferenceConfig={"maxTokens": 5})

    check_usage(the_span(span_exporter), sink.records[0], CONVERSE_MODEL, STUB_INPUT, REPLY)


# --- failures, streams cut short ---------------------------------------------------------------------------------


def test_an_error_answer_is_raised_unchanged_and_not_billed(instrument_bedrock, bedrock, span_exporter, sink):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.converse(modelId="does-not-exist", messages=MESSAGES)

    assert type(raised.value).__name__ == "ValidationException"
    span = the_span(span_exporter)
    assert span.attributes["error.type"] == "ValidationException"
    (record,) = sink.records
    assert record.outcome == "error" and record.cost_usd == 0.0 and record.pricing == "not billed"


def test_a_stream_error_is_raised_unchanged_and_what_was_streamed_counted(
    instrument_bedrock, bedrock, span_exporter, sink
):
    stream = bedrock.converse_stream(modelId="stub-stream-error", messages=MESSAGES)["stream"]
    seen = []
    with pytest.raises(botocore.exceptions.EventStreamError, match="modelStreamErrorException"):
        for event in stream:
            seen.append(event)

    assert len(seen) == 3  # messageStart and two deltas
    span = the_span(span_exporter)
    assert span.attributes["error.type"] == "EventStreamError"
    (record,) = sink.records
    assert record.outcome == "error" and record.estimated and record.output_tokens == 2


def test_a_stream_closed_before_it_is_read_ends_its_call(instrument_bedrock, bedrock, span_exporter, sink):
    response = bedrock.converse_stream(modelId=CONVERSE_MODEL, messages=MESSAGES)
    response["stream"].close()

    span = the_span(span_exporter)
    assert span.attributes["spendwatch.cost.estimated"] is True
    assert sink.records[0].outcome == "success"


# --- the guard ---------------------------------------------------------------------------------------------------


class RecordingGuard:
    """A real guard: refuses every call, or admits it with the changes it is given; keeps what it was asked."""

    def __init__(self, refuse: bool = False, changes: dict | None = None) -> None:
        self.refuse, self.changes, self.requests = refuse, changes, []

    def admit(self, request):
        self.requests.append(request)
        if self.refuse:
            raise BudgetExceededError("global", "day", 1.0, 1.0, 0.5)
        return self if self.changes else None

    @property
    def request_changes(self):
        return self.changes

    def settle(self, record) -> None:
        pass


@pytest.fixture
def guard():
    made = []

    def register(**kwargs) -> RecordingGuard:
        made.append(RecordingGuard(**kwargs))
        admission.register_guard(made[-1])
        return made[-1]

    yield register
    for each in made:
        admission.unregister_guard(each)


def test_a_refusal_is_a_client_error_and_sends_nothing(instrument_bedrock, bedrock_stub, guard, span_exporter, sink):
    client = bedrock_client(bedrock_stub.url)
    asked = guard(refuse=True)

    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.converse(modelId=CONVERSE_MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 7})

    refusal = raised.value
    assert isinstance(refusal, BudgetExceededError)
    assert refusal.response["Error"]["Code"] == "BudgetExceededError"
    assert refusal.operation_name == "Converse"
    assert "spendwatch refused the call" in str(refusal)
    copy = pickle.loads(pickle.dumps(refusal))
    assert isinstance(copy, botocore.exceptions.ClientError) and copy.budget == "global"
    (request,) = asked.requests
    assert request.provider == "aws.bedrock" and request.model == CONVERSE_MODEL
    assert request.max_output_tokens == 7 and request.input_tokens >= len("Say this is a test")
    assert sink.records[0].outcome == "blocked"


@pytest.mark.parametrize(
    ("model", "cap_path"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", ("max_tokens",)),
        ("amazon.nova-micro-v1:0", ("inferenceConfig", "max_new_tokens")),
        ("meta.llama3-1-70b-instruct-v1:0", ("max_gen_len",)),
    ],
)
def test_the_guard_reads_and_degrades_each_familys_output_cap(
    model, cap_path, instrument_bedrock, bedrock, guard, span_exporter
):
    asked = guard(changes={"max_tokens": 2})

    result = bedrock.invoke_model(modelId=model, body=json.dumps(FAMILY_BODIES[model]))
    result["body"].read()

    assert asked.requests[0].max_output_tokens == 5
    assert the_span(span_exporter).attributes["gen_ai.usage.output_tokens"] == 2  # the stub honoured the lower cap


def test_the_guard_degrades_a_converse_cap(instrument_bedrock, bedrock, guard, span_exporter):
    guard(changes={"max_tokens": 2})

    result = bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    assert result["usage"]["outputTokens"] == 2


@pytest.fixture
def enforced(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    attached = spendwatch.configure(
        ledger=str(tmp_path / "ledger.db"), metrics_address="off", enforce="block", daily_budget_usd=0.0001
    )
    yield attached
    runtime.detach()


def test_configure_instruments_bedrock_and_its_guard_refuses_before_sending(enforced):
    with BedrockStub() as stub:  # in this process, to see what reached it
        client = bedrock_client(stub.origin)
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            client.converse(modelId=CONVERSE_MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 4000})

    assert stub.requests == []
    assert isinstance(refused.value, spendwatch.BudgetExceededError)
    enforced.sink.flush()
    (total,) = enforced.ledger.totals()
    assert (total["blocked"], total["success"]) == (1, 0)


# --- safety ------------------------------------------------------------------------------------------------------


def test_credentials_and_signatures_are_never_recorded(
    instrument_bedrock, bedrock, span_exporter, sink, monkeypatch, tracer_provider, meter_provider
):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    instrument_bedrock.uninstrument()
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)
    bedrock.invoke_model(modelId="meta.llama3-1-70b-instruct-v1:0", body=json.dumps({"prompt": "hi"}))["body"].read()

    recorded = repr([dict(span.attributes) for span in span_exporter.get_finished_spans()]) + repr(sink.records)
    assert "Say this is a test" in recorded  # content capture is on, so the prompt is there...
    for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, "AWS4-HMAC-SHA256", "Signature="):
        assert secret not in recorded  # ...but never a credential or a signature


def test_content_is_not_recorded_unless_opted_in(instrument_bedrock, bedrock, span_exporter, sink):
    bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    span = the_span(span_exporter)
    assert "gen_ai.input.messages" not in span.attributes and "gen_ai.output.messages" not in span.attributes
    assert "Say this is a test" not in repr(dict(span.attributes)) + repr(sink.records)


def test_suppressed_instrumentation_records_nothing(instrument_bedrock, bedrock, span_exporter, sink):
    with suppress_instrumentation():
        bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    assert not span_exporter.get_finished_spans() and not sink.records


def test_other_aws_services_are_left_alone(instrument_bedrock, bedrock_stub, span_exporter, sink):
    control_plane = bedrock_client(bedrock_stub.url, service="bedrock")  # Bedrock's control plane, not its runtime
    with pytest.raises(botocore.exceptions.ClientError):
        control_plane.list_foundation_models()

    assert not span_exporter.get_finished_spans() and not sink.records


def test_instrument_uninstrument_instrument_gives_one_span_per_call(
    instrument_bedrock, bedrock, span_exporter, sink, tracer_provider, meter_provider
):
    instrument_bedrock.uninstrument()
    bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)
    assert not span_exporter.get_finished_spans()

    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    bedrock.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    the_span(span_exporter)
    assert len(sink.records) == 1


# --- opentelemetry-instrument ------------------------------------------------------------------------------------

APP = """
import os, boto3
client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=os.environ["BEDROCK_STUB_URL"])
stream = client.converse_stream(
    modelId="us.anthropic.claude-3-5-sonnet-20240620-v1:0",
    messages=[{"role": "user", "content": [{"text": "Say this is a test"}]}],
)["stream"]
deltas = [event["contentBlockDelta"]["delta"]["text"] for event in stream if "contentBlockDelta" in event]
print("APP-RESULT", "".join(deltas))
"""


def test_opentelemetry_instrument_counts_a_bedrock_call(tmp_path, bedrock_stub):
    app = tmp_path / "app.py"
    app.write_text(APP)
    environment = {
        **os.environ,
        "BEDROCK_STUB_URL": bedrock_stub.url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"),
        "SPENDWATCH_METRICS_ADDRESS": "off",
    }
    command = [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(app)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "APP-RESULT This is a test reply" in result.stdout
    (span,) = [span for span in console_spans(result.stdout) if span["name"] == f"chat {CONVERSE_MODEL}"]
    assert span["kind"] == "SpanKind.CLIENT"
    assert span["attributes"]["gen_ai.usage.input_tokens"] == STUB_INPUT
    assert span["attributes"]["gen_ai.usage.cost"] == pytest.approx(expected_cost(CONVERSE_MODEL, STUB_INPUT, 12))
    assert ledger_in(tmp_path).call_count() == 1
    for secret in (SECRET_KEY, SESSION_TOKEN):
        assert secret not in result.stdout + result.stderr


# --- answers that are not what they should be ----------------------------------------------------------------------


def answer(path: str, body: bytes, content_type: str = "application/json", **headers: str) -> Interaction:
    request = RecordedRequest("POST", f"http://bedrock{path}", {}, None)
    return Interaction(request, RecordedResponse(200, "OK", {"content-type": content_type, **headers}, body))


def converse_outcome(origin: str):
    """What a caller gets from a converse call: the answer, or the exception's type and message."""
    try:
        return bedrock_client(origin).converse(modelId=CONVERSE_MODEL, messages=MESSAGES)["output"]
    except Exception as error:  # noqa: BLE001 - botocore's own parser may refuse the answer
        return (type(error), str(error))


@pytest.mark.parametrize(
    "usage",
    [{"inputTokens": "many", "outputTokens": -1}, {"inputTokens": None}, {"outputTokens": 3}, "not a dict", [1, 2]],
    ids=["wrong-types", "nulls", "no-input", "a-string", "a-list"],
)
def test_a_malformed_converse_usage_reaches_the_caller_as_without_spendwatch(
    usage, instrument_bedrock, span_exporter, sink, tracer_provider, meter_provider
):
    body = json.dumps({"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}}, "usage": usage})
    path = f"/model/{CONVERSE_MODEL.replace(':', '%3A')}/converse"
    instrument_bedrock.uninstrument()
    with ReplayServer([answer(path, body.encode())]) as server:
        bare = converse_outcome(server.origin)
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    with ReplayServer([answer(path, body.encode())]) as server:
        instrumented = converse_outcome(server.origin)

    assert instrumented == bare
    (record,) = sink.records
    if isinstance(bare, tuple):  # botocore refused the answer: a failed call, counted from its request
        assert record.outcome == "error" and record.estimated
    else:  # botocore let it through: what the usage lacks is estimated, and flagged
        assert record.outcome == "success" and record.estimated


def test_an_invoke_model_body_that_is_not_json_is_handed_back_whole(instrument_bedrock, span_exporter, sink):
    body = b"\x00\xffnot json at all"
    path = "/model/mistral.mistral-7b-instruct-v0%3A2/invoke"
    with ReplayServer([answer(path, body, **{"x-amzn-bedrock-input-token-count": "7"})]) as server:
        result = bedrock_client(server.origin).invoke_model(modelId="mistral.mistral-7b-instruct-v0:2", body="{}")
        assert result["body"].read() == body

    record = sink.records[0]
    assert record.input_tokens == 7 and record.estimated  # the output count is missing: flagged, never invented


def test_no_connection_is_not_billed(instrument_bedrock, sink):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        origin = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        bedrock_client(origin).converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    (record,) = sink.records
    assert record.outcome == "error" and record.pricing == "not billed"


def test_an_answer_lost_after_sending_is_counted_from_the_request(instrument_bedrock, sink):
    with socket.socket() as silent:  # takes the request (the kernel accepts it) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"max_attempts": 1}, read_timeout=0.5),
        )
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            client.converse(modelId=CONVERSE_MODEL, messages=MESSAGES)

    (record,) = sink.records
    assert record.outcome == "error" and record.estimated and record.input_tokens > 0
