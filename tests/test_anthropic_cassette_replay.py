"""Every real Anthropic recording (``../shared/fixtures/anthropic-cassettes``, 40 files, 72 calls) replayed through the
real ``anthropic`` SDK, bare and instrumented: the caller gets exactly the same results, each call gets one span and
one record, and the record's cost is what ``genai_prices.calc_price`` charges for the usage the recording reports.

A file named ``*_messages_stream_*`` was recorded through the ``messages.stream()`` helper, one whose request says
``"stream": true`` through ``messages.create(stream=True)``, any other through ``messages.create``; ``test_async_*``
files with ``AsyncAnthropic``. The folder's README says where the recordings come from.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import anthropic
import genai_prices
import pytest
from anthropic.resources.messages import Messages

from tests.cassettes import ReplayServer, load_cassette

CASSETTE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "anthropic-cassettes"
EXPECTED_CASSETTES, EXPECTED_CALLS = 40, 72
_PARAMETERS = frozenset(inspect.signature(Messages.create).parameters) - {"self"}


def cassette_paths() -> list[Path]:
    return sorted(CASSETTE_DIR.glob("*.yaml")) if CASSETTE_DIR.is_dir() else []


def require_cassettes() -> None:
    """Skip when the recordings are absent (a user's own clone); fail instead when ``CI=true``."""
    if cassette_paths():
        return
    reason = f"the Anthropic recordings are not at {CASSETTE_DIR} (clone the shared/ folder beside the repository)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def cassette_params() -> list:
    paths = cassette_paths()
    return [pytest.param(path, id=path.stem) for path in paths] or [pytest.param(None, id="cassettes-missing")]


def sdk_call(interaction) -> tuple[str, dict]:
    """How the recorded request was made (``create``, ``stream`` or ``helper``) and the keyword arguments for it."""
    body = dict(interaction.request.body or {})
    helper = "_messages_stream" in interaction.cassette
    how = "helper" if helper else ("stream" if body.get("stream") else "create")
    if helper:
        body.pop("stream", None)  # the helper sets it itself
    kwargs = {key: value for key, value in body.items() if key in _PARAMETERS}
    extra = {key: value for key, value in body.items() if key not in _PARAMETERS}
    if extra:
        kwargs["extra_body"] = extra
    return how, kwargs


def _error(error: anthropic.APIError):
    return (type(error), getattr(error, "status_code", None), error.body)


def call_sync(client: anthropic.Anthropic, interaction):
    """The recorded call made again: what the caller observes of its result, comparable across runs."""
    how, kwargs = sdk_call(interaction)
    try:
        if how == "helper":
            with client.messages.stream(**kwargs) as stream:
                events = [event.model_dump() for event in stream]
                return events, stream.get_final_message().model_dump()
        if how == "stream":
            return [event.model_dump() for event in client.messages.create(**kwargs)]
        return client.messages.create(**kwargs).model_dump()
    except anthropic.APIError as error:
        return _error(error)


async def call_async(client: anthropic.AsyncAnthropic, interaction):
    how, kwargs = sdk_call(interaction)
    try:
        if how == "helper":
            async with client.messages.stream(**kwargs) as stream:
                events = [event.model_dump() async for event in stream]
                return events, (await stream.get_final_message()).model_dump()
        if how == "stream":
            return [event.model_dump() async for event in await client.messages.create(**kwargs)]
        return (await client.messages.create(**kwargs)).model_dump()
    except anthropic.APIError as error:
        return _error(error)


async def replay(interactions, is_async: bool) -> list:
    with ReplayServer(interactions) as server:
        options = {"base_url": server.origin, "api_key": "test_anthropic_api_key", "max_retries": 0}
        if is_async:
            client = anthropic.AsyncAnthropic(**options)
            return [await call_async(client, interaction) for interaction in interactions]
        client = anthropic.Anthropic(**options)
        return [call_sync(client, interaction) for interaction in interactions]


def recorded_usage(interaction) -> dict:
    """The usage the recording reports: the body's, or a stream's message_start usage updated by message_delta's."""
    response = interaction.response
    if not response.is_stream:
        return response.json()["usage"]
    usage = {}
    for line in response.text.splitlines():
        if line.startswith("data:"):
            event = json.loads(line.removeprefix("data:"))
            found = (event.get("message") or {}).get("usage") or event.get("usage") or {}
            usage |= {key: value for key, value in found.items() if value is not None}
    return usage


def genai_prices_cost(model: str, usage: dict) -> tuple[dict, float]:
    """The conventions' tokens of an Anthropic usage, and what genai-prices charges for them."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    tokens = {
        "input_tokens": usage["input_tokens"] + cache_read + cache_write,
        "output_tokens": usage["output_tokens"],
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
    }
    priced = genai_prices.Usage(**{key: value for key, value in tokens.items() if value})
    return tokens, float(genai_prices.calc_price(priced, model, provider_id="anthropic").total_price)


def test_every_recording_is_here():
    require_cassettes()
    assert len(cassette_paths()) == EXPECTED_CASSETTES
    assert sum(len(load_cassette(path)) for path in cassette_paths()) == EXPECTED_CALLS


@pytest.mark.parametrize("path", cassette_params())
async def test_recorded_call_is_untouched_one_span_and_priced_as_genai_prices_does(
    path, tracer_provider, meter_provider, span_exporter, sink
):
    from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor

    require_cassettes()
    interactions = load_cassette(path)
    is_async = path.name.startswith("test_async")
    bare = await replay(interactions, is_async)
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        instrumented = await replay(interactions, is_async)
    finally:
        instrumentor.uninstrument()

    assert instrumented == bare
    spans = [span for span in span_exporter.get_finished_spans() if span.name.startswith("chat ")]
    assert len(spans) == len(sink.records) == len(interactions)
    for interaction, result, span, record in zip(interactions, bare, spans, sink.records, strict=True):
        if interaction.is_error:
            error_class, status, _ = result
            assert status == interaction.response.status
            assert (record.outcome, span.attributes["error.type"]) == ("error", error_class.__name__)
            assert record.cost_usd == 0.0  # an error status is not billed
            continue
        tokens, cost = genai_prices_cost(record.response_model, recorded_usage(interaction))
        assert span.attributes["gen_ai.usage.input_tokens"] == record.input_tokens == tokens["input_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == record.output_tokens == tokens["output_tokens"]
        assert record.cache_read_tokens == tokens["cache_read_tokens"]
        assert record.cache_write_tokens == tokens["cache_write_tokens"]
        assert not record.estimated
        assert record.cost_usd == pytest.approx(cost, rel=1e-9)
