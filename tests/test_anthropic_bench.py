"""The Anthropic benchmark's canned answers are what the real SDK and spendwatch read as the API's: every counted
kind reports its usage and gets one spendwatch span, so ``bench.anthropic_sdk`` counts the full work of a call."""

from __future__ import annotations

from bench import anthropic_sdk
from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor


def test_the_stream_has_its_deltas_and_the_usage_of_the_message():
    events = list(anthropic_sdk.make_client().messages.create(**anthropic_sdk.REQUEST, stream=True))

    assert sum(event.type == "content_block_delta" for event in events) == anthropic_sdk.DELTAS
    assert events[-2].usage.output_tokens == anthropic_sdk.DELTAS


def test_every_kind_is_one_counted_call(tracer_provider, meter_provider, sink):
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        kinds = anthropic_sdk.call_kinds()
        for call in kinds.values():
            call()
    finally:
        instrumentor.uninstrument()

    assert len(sink.records) == len(kinds) == 3
    for record in sink.records:
        assert (record.input_tokens, record.output_tokens, record.estimated) == (13, anthropic_sdk.DELTAS, False)
