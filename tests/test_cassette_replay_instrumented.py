"""Every one of the 71 real OpenAI recordings, replayed through the instrumented SDK: the caller gets exactly what
it gets uninstrumented, each call's span and usage record carry every unit of its recorded usage (cache reads and
writes, audio and image tokens), and its cost is what genai-prices' ``calc_price`` makes of that usage."""

from __future__ import annotations

import openai
import pytest

from spendwatch.instrumentation.pricing import rounded_usd
from tests.cassettes import ReplayServer, call_async, call_sync, cassette_params, load_cassette, require_cassettes
from tests.charges import genai_cost, recorded_tokens

# Span attribute of each billed subset → genai-prices' usage key (checked on the span and the record alike).
SUBSET_ATTRIBUTES = {
    "gen_ai.usage.cache_read.input_tokens": "cache_read_tokens",
    "gen_ai.usage.cache_write.input_tokens": "cache_write_tokens",
    "gen_ai.usage.audio.input_tokens": "input_audio_tokens",
    "gen_ai.usage.audio.output_tokens": "output_audio_tokens",
    "gen_ai.usage.image.input_tokens": "input_image_tokens",
    "gen_ai.usage.image.output_tokens": "output_image_tokens",
}


def as_data(result):
    """What a caller can observe of a result, comparable across runs."""
    if isinstance(result, openai.APIError):
        return (type(result), getattr(result, "status_code", None), result.body)
    if isinstance(result, list):
        return [item.model_dump(warnings=False) for item in result]
    return result.model_dump(warnings=False)


async def replay(interactions, is_async: bool) -> list:
    with ReplayServer(interactions) as server:
        if is_async:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-replay", max_retries=0)
            return [await call_async(client, interaction) for interaction in interactions]
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-replay", max_retries=0)
        return [call_sync(client, interaction) for interaction in interactions]


@pytest.mark.parametrize("path", cassette_params())
async def test_recorded_call_is_untouched_and_priced_from_its_recorded_usage(
    path, instrument_openai, tracer_provider, meter_provider, span_exporter, sink
):
    require_cassettes()
    interactions = load_cassette(path)
    is_async = path.name.startswith("test_async")

    instrument_openai.uninstrument()
    bare = [as_data(result) for result in await replay(interactions, is_async)]
    instrument_openai.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrumented = [as_data(result) for result in await replay(interactions, is_async)]

    assert instrumented == bare
    spans = span_exporter.get_finished_spans()
    assert len(spans) == len(sink.records) == len(interactions)
    for interaction, span, record in zip(interactions, spans, sink.records, strict=True):
        check_span_against_recording(interaction, span, record)


def check_span_against_recording(interaction, span, record) -> None:
    if interaction.is_error:
        assert span.attributes["error.type"].endswith("Error")
        assert record.outcome == "error"
        return
    usage = interaction.recorded_usage()
    if usage is None:  # a stream recorded without include_usage: estimated, and flagged so
        assert span.attributes["spendwatch.cost.estimated"] is True
        assert record.estimated and record.output_tokens > 0
        return
    tokens = recorded_tokens(usage)
    attributes = span.attributes
    assert attributes["gen_ai.usage.input_tokens"] == record.input_tokens == tokens["input_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == record.output_tokens == tokens["output_tokens"]
    for attribute, key in SUBSET_ATTRIBUTES.items():
        assert attributes.get(attribute, 0) == getattr(record, key) == tokens[key], attribute
    reasoning = ((usage.get("output_tokens_details") or usage.get("completion_tokens_details")) or {}).get(
        "reasoning_tokens"
    )
    assert attributes.get("gen_ai.usage.reasoning.output_tokens", 0) == (reasoning or 0)
    assert attributes["spendwatch.cost.estimated"] is False
    assert attributes["gen_ai.provider.name"] == record.provider == "openai"  # the replay server: an unknown host
    assert attributes["server.address"] == "127.0.0.1"
    # An unknown host is priced as OpenAI when OpenAI lists the model (every model recorded here is OpenAI's).
    expected = genai_cost(record.response_model or "", "openai", **tokens)
    if expected is None:
        expected = genai_cost(record.request_model, "openai", **tokens)
    if expected is None:
        assert attributes["spendwatch.pricing"] == "unpriced"
        assert record.cost_usd is None
    else:
        assert record.cost_usd == pytest.approx(expected, rel=1e-9)
        assert attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)
