"""Every one of the 26 real Vertex AI recordings, replayed through the instrumented ``google-genai`` SDK: the caller
gets exactly what it gets uninstrumented, each call gets one span, and its cost is what ``genai_prices.calc_price``
makes of the recorded usage.

The recordings live outside the repository (``../shared/fixtures/google-genai-cassettes``): absent, the tests skip,
unless ``CI=true``. The ``vertexai-sdk--*`` ones were made by the older ``vertexai`` SDK, which asks for enums as
numbers; their requests map onto ``generate_content`` directly (contents, system instruction, generation config,
tools), and the replay server answers by method and path alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import genai_prices
import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from tests.cassettes import Interaction, ReplayServer, load_cassette
from tests.google_genai_fixtures import *  # noqa: F403 - the fixtures

CASSETTE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "google-genai-cassettes"
_URI = re.compile(
    r"/(?P<version>v1\w*)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/publishers/google/models/"
    r"(?P<model>[^/:]+):(?P<method>\w+)"
)


# The enum numbers the recordings hold, by field: Vertex AI's names for them, which google-genai asks for and reads.
_ENUM_NAMES = {
    "finishReason": {1: "STOP", 2: "MAX_TOKENS"},
    "modality": {1: "TEXT", 2: "IMAGE", 3: "VIDEO", 4: "AUDIO", 5: "DOCUMENT"},
    "trafficType": {1: "ON_DEMAND", 2: "PROVISIONED_THROUGHPUT"},
    "type": {1: "STRING", 2: "NUMBER", 3: "INTEGER", 4: "BOOLEAN", 5: "ARRAY", 6: "OBJECT"},
}


def with_enum_names(value):
    """``value`` with enum numbers named, as Vertex AI answers a client that does not ask for numbers."""
    if isinstance(value, dict):
        named = {}
        for key, item in value.items():
            names = _ENUM_NAMES.get(key)
            named[key] = names.get(item, item) if names and type(item) is int else with_enum_names(item)
        return named
    if isinstance(value, list):
        return [with_enum_names(item) for item in value]
    return value


def as_google_genai_sees_it(interaction: Interaction) -> Interaction:
    """The recording as google-genai's request gets it: the older SDK asked for enums as numbers
    (``$alt=json;enum-encoding=int``); google-genai does not, so Vertex AI names them."""
    if "enum-encoding" not in unquote(interaction.request.uri) or interaction.response.is_stream:
        return interaction
    body = json.dumps(with_enum_names(interaction.response.json())).encode()
    request = replace(interaction.request, body=with_enum_names(interaction.request.body))
    return replace(interaction, request=request, response=replace(interaction.response, body=body))


def cassette_params() -> list:
    paths = sorted(CASSETTE_DIR.glob("*.yaml")) if CASSETTE_DIR.is_dir() else []
    if not paths:
        return [pytest.param(None, id="cassettes-missing")]
    return [pytest.param(path, id=path.stem) for path in paths]


def require_cassettes() -> None:
    if CASSETTE_DIR.is_dir() and any(CASSETTE_DIR.glob("*.yaml")):
        return
    reason = f"the google-genai recordings are not at {CASSETTE_DIR} (clone the shared/ folder beside the repository)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def client_for(interaction: Interaction, base_url: str) -> genai.Client:
    """A Vertex AI client that sends the recorded request to ``base_url``: same API version, project and location."""
    where = _URI.search(interaction.request.uri)
    options = {"base_url": base_url, "api_version": where["version"], "retry_options": {"attempts": 1}}
    return genai.Client(
        vertexai=True,
        project=where["project"],
        location=where["location"],
        credentials=Credentials(token="ya29.replay"),
        http_options=options,
    )


def call_arguments(interaction: Interaction) -> dict:
    """``generate_content`` keyword arguments for the recorded REST body (the SDK takes its camelCase names)."""
    body = dict(interaction.request.body or {})
    config = dict(body.get("generationConfig") or {})
    for name in ("systemInstruction", "tools", "toolConfig"):
        if name in body:
            config[name] = body[name]
    model = _URI.search(interaction.request.uri)["model"]
    return {"model": model, "contents": body["contents"], "config": types.GenerateContentConfig.model_validate(config)}


def is_stream(interaction: Interaction) -> bool:
    return _URI.search(interaction.request.uri)["method"] == "streamGenerateContent"


def observed(result) -> object:
    """What a caller can observe of a result, comparable across runs (the HTTP headers carry the date)."""
    if isinstance(result, errors.APIError):
        return (type(result), result.code, result.status, result.message)
    if isinstance(result, list):
        return [observed(item) for item in result]
    return result.model_dump(exclude={"sdk_http_response"})


async def replay(interaction: Interaction, is_async: bool) -> object:
    with ReplayServer([interaction]) as server:
        models = client_for(interaction, f"{server.origin}/")
        arguments = call_arguments(interaction)
        try:
            if is_async and is_stream(interaction):
                return [chunk async for chunk in await models.aio.models.generate_content_stream(**arguments)]
            if is_async:
                return await models.aio.models.generate_content(**arguments)
            if is_stream(interaction):
                return list(models.models.generate_content_stream(**arguments))
            return models.models.generate_content(**arguments)
        except errors.APIError as error:
            return error


def recorded_usage(interaction: Interaction) -> dict | None:
    """The recording's last ``usageMetadata`` with token counts (a stream's last chunk)."""
    response = interaction.response
    payloads = response.events() if response.is_stream else [response.json()]
    usages = [payload.get("usageMetadata") or {} for payload in payloads]
    return next((usage for usage in reversed(usages) if "promptTokenCount" in usage), None)


def recorded_model(interaction: Interaction) -> str:
    response = interaction.response
    payloads = response.events() if response.is_stream else [response.json()]
    return payloads[-1]["modelVersion"]


@pytest.mark.parametrize("path", cassette_params())
async def test_recorded_call_is_untouched_and_priced_from_its_recorded_usage(
    path, instrument_google_genai, tracer_provider, meter_provider, span_exporter, sink
):
    require_cassettes()
    (interaction,) = map(as_google_genai_sees_it, load_cassette(path))
    is_async = "-async-" in path.name

    instrument_google_genai.uninstrument()
    bare = observed(await replay(interaction, is_async))
    instrument_google_genai.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrumented = observed(await replay(interaction, is_async))

    assert instrumented == bare
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert record.provider == "gcp.vertex_ai"
    if interaction.is_error:
        assert (record.outcome, record.cost_usd) == ("error", 0.0)
        assert span.attributes["error.type"] in ("ClientError", "ServerError")
        return
    usage = recorded_usage(interaction)
    output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    assert (record.input_tokens, record.output_tokens) == (usage["promptTokenCount"], output)
    assert record.reasoning_tokens == usage.get("thoughtsTokenCount", 0)
    assert not record.estimated
    prices = genai_prices.Usage(input_tokens=record.input_tokens, output_tokens=output)
    expected = genai_prices.calc_price(prices, model_ref=recorded_model(interaction), provider_id="google")
    assert record.cost_usd == pytest.approx(float(expected.total_price), rel=1e-9)
