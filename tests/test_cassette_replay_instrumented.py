"""Every one of the 71 real OpenAI recordings, replayed through the instrumented SDK: the caller gets exactly what
it gets uninstrumented, and each call's span and usage record carry the tokens and cost its recorded usage implies."""

from __future__ import annotations

import openai
import pytest

from spendwatch.instrumentation.pricing import PriceTable, rounded_usd
from tests.cassettes import ReplayServer, call_async, call_sync, cassette_params, load_cassette, require_cassettes

PRICES = PriceTable()


def as_data(result):
    """What a caller can observe of a result, comparable across runs."""
    if isinstance(result, openai.APIError):
        return (type(result), getattr(result, "status_code", None), result.body)
    if isinstance(result, list):
        return [item.model_dump(warnings=False) for item in result]
    return result.model_dump(warnings=False)


def tokens_from(usage: dict) -> tuple[int, int, int, int]:
    """(input, output, cache_read, reasoning) from a chat/embeddings or a Responses usage object."""
    if "input_tokens" in usage:
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
        return usage["input_tokens"], usage["output_tokens"], cached, reasoning
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return usage["prompt_tokens"], usage.get("completion_tokens") or 0, cached, reasoning


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
    input_tokens, output_tokens, cached, reasoning = tokens_from(usage)
    assert span.attributes["gen_ai.usage.input_tokens"] == input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == output_tokens
    assert span.attributes.get("gen_ai.usage.cache_read.input_tokens", 0) == cached
    assert span.attributes.get("gen_ai.usage.reasoning.output_tokens", 0) == reasoning
    assert span.attributes["spendwatch.cost.estimated"] is False
    price = PRICES.lookup(record.response_model or "") or PRICES.lookup(record.request_model)
    if price is None:
        assert span.attributes["spendwatch.pricing"] == "unpriced"
        assert record.cost_usd is None
    else:
        assert record.cost_usd == pytest.approx(price.cost(input_tokens, output_tokens, cached), rel=1e-12)
        assert span.attributes["gen_ai.usage.cost"] == rounded_usd(record.cost_usd)
