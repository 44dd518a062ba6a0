"""Every real Bedrock Runtime recording in ``../shared/fixtures/bedrock-cassettes`` replayed through the real boto3:
the caller gets exactly what it gets uninstrumented, each call gets one span, and the span and usage record carry the
tokens the recording reports and the cost ``genai_prices.calc_price`` gives for them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import unquote

import botocore.exceptions
import genai_prices
import pytest
from botocore.eventstream import EventStreamBuffer

from tests.bedrock import *  # noqa: F403
from tests.bedrock import bedrock_client
from tests.cassettes import Interaction, ReplayServer, load_cassette

CASSETTE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "bedrock-cassettes"
CASSETTES = sorted(CASSETTE_DIR.glob("*.yaml")) if CASSETTE_DIR.is_dir() else []
INVOCATION_METRICS = "amazon-bedrock-invocationMetrics"


def require_cassettes() -> None:
    """Skip when the recordings are absent; fail instead when ``CI=true``."""
    if CASSETTES:
        return
    reason = f"the Bedrock recordings are not at {CASSETTE_DIR} (clone the shared/ folder beside the repository)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def params():
    if not CASSETTES:
        return [pytest.param(None, id="cassettes-missing")]
    return [pytest.param(path, id=path.stem) for path in CASSETTES]


# --- making the recorded call, and what its caller sees ------------------------------------------------------------


def route(interaction: Interaction) -> tuple[str, str]:
    """(model id, action) of a recorded ``/model/{modelId}/{action}`` request."""
    _, _, model, action = interaction.request.path.split("/")
    return unquote(model), action


def metadata_view(result: dict) -> dict:
    """The response metadata a caller sees, without what differs between two replays (the date)."""
    metadata = dict(result.get("ResponseMetadata") or {})
    metadata["HTTPHeaders"] = {key: value for key, value in metadata.get("HTTPHeaders", {}).items() if key != "date"}
    return metadata


def read_stream(stream, close_first: bool) -> list:
    if close_first:
        stream.close()
        return ["closed"]
    events = []
    try:
        for event in stream:
            events.append(event)
    except botocore.exceptions.EventStreamError as error:
        events.append(("EventStreamError", error.response))
    return events


def call(client, interaction: Interaction, cassette: str):
    """Make the recorded call; return everything its caller can observe of the answer."""
    model, action = route(interaction)
    body = interaction.request.body or {}
    close_first = "close_before_consumption" in cassette
    try:
        if action == "converse":
            result = client.converse(modelId=model, **body)
        elif action == "converse-stream":
            result = client.converse_stream(modelId=model, **body)
            result["stream"] = read_stream(result["stream"], close_first)
        elif action == "invoke":
            result = client.invoke_model(modelId=model, body=json.dumps(body))
            result["body"] = result["body"].read()
        else:
            result = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))
            result["body"] = read_stream(result["body"], close_first)
    except botocore.exceptions.ClientError as error:
        return (type(error).__name__, str(error), metadata_view(error.response))
    return {**result, "ResponseMetadata": metadata_view(result)}


def replay(interactions: list[Interaction], cassette: str) -> list:
    with ReplayServer(interactions) as server:
        client = bedrock_client(server.origin)
        return [call(client, interaction, cassette) for interaction in interactions]


# --- what the recording says was used ------------------------------------------------------------------------------


def recorded_events(interaction: Interaction) -> list[tuple[str, dict]]:
    """(event type, JSON payload) of each frame of a recorded event stream, decoded by botocore's own parser."""
    buffer = EventStreamBuffer()
    buffer.add_data(interaction.response.body)
    return [(message.headers.get(":event-type", ""), json.loads(message.payload)) for message in buffer]


def recorded_usage(interaction: Interaction) -> tuple[int, int, int, int] | None:
    """(input without cache, output, cache read, cache write) as the recording reports them; None when it does not."""
    _, action = route(interaction)
    if action == "converse":
        usage = interaction.response.json()["usage"]
    elif action == "invoke":
        headers = interaction.response.headers
        return int(headers["x-amzn-bedrock-input-token-count"]), int(headers["x-amzn-bedrock-output-token-count"]), 0, 0
    elif action == "converse-stream":
        usage = next((payload["usage"] for kind, payload in recorded_events(interaction) if kind == "metadata"), None)
    else:
        chunks = [json.loads(base64.b64decode(payload["bytes"])) for _, payload in recorded_events(interaction)]
        metrics = next((chunk[INVOCATION_METRICS] for chunk in chunks if INVOCATION_METRICS in chunk), None)
        if metrics is None:
            return None
        return metrics["inputTokenCount"], metrics["outputTokenCount"], 0, 0
    if usage is None:
        return None
    read, write = usage.get("cacheReadInputTokens", 0), usage.get("cacheWriteInputTokens", 0)
    return usage["inputTokens"], usage["outputTokens"], read, write


def check_span_against_recording(interaction: Interaction, cassette: str, span, record) -> None:
    model, _ = route(interaction)
    assert span.attributes["gen_ai.provider.name"] == "aws.bedrock"
    assert span.attributes["gen_ai.request.model"] == model
    if interaction.is_error:
        assert span.attributes["error.type"] == "ValidationException"
        assert record.outcome == "error" and record.pricing == "not billed"
        return
    usage = recorded_usage(interaction)
    if "close_before_consumption" in cassette or usage is None:
        assert record.estimated  # never read to the end: counted from the request, and flagged
        return
    # The "handles_..._error" recordings hold whole streams: the tests that made them raised their errors in the client.
    assert "error.type" not in span.attributes
    input_tokens, output_tokens, read, write = usage
    assert span.attributes["gen_ai.usage.input_tokens"] == input_tokens + read + write == record.input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == output_tokens == record.output_tokens
    assert record.cache_read_tokens == read and not record.estimated
    priced = genai_prices.Usage(
        input_tokens=input_tokens + read + write,
        output_tokens=output_tokens,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )
    try:
        cost = float(genai_prices.calc_price(priced, model, provider_id="aws").total_price)
    except LookupError:
        assert span.attributes["spendwatch.pricing"] == "unpriced" and record.cost_usd is None
        return
    assert record.cost_usd == pytest.approx(cost, rel=1e-9)
    assert span.attributes["gen_ai.usage.cost"] == pytest.approx(cost, abs=1e-9)


@pytest.mark.parametrize("path", params())
def test_recorded_bedrock_call_is_untouched_and_priced_from_its_recorded_usage(
    path, instrument_bedrock, tracer_provider, meter_provider, span_exporter, sink
):
    require_cassettes()
    interactions = load_cassette(path)

    instrument_bedrock.uninstrument()
    bare = replay(interactions, path.stem)
    instrument_bedrock.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrumented = replay(interactions, path.stem)

    assert instrumented == bare
    spans = span_exporter.get_finished_spans()
    assert len(spans) == len(sink.records) == len(interactions)
    for interaction, span, record in zip(interactions, spans, sink.records, strict=True):
        check_span_against_recording(interaction, path.stem, span, record)


def test_every_recording_is_replayed():
    require_cassettes()
    assert len(CASSETTES) == 61  # the README's count: a recording left out would go untested
