"""How a call billed for more than text tokens shows up: span attributes (DESIGN.md), the usage record, the cost
(checked against ``genai_prices.calc_price``), the provider's own cost, and a failed call that cannot have been
billed. Through the real CallRecorder, OpenTelemetry SDK and a real usage sink."""

from __future__ import annotations

import genai_prices
import pytest

from spendwatch.instrumentation.calls import CallRecorder, Usage
from spendwatch.instrumentation.pricing import PriceTable


@pytest.fixture
def recorder(tracer_provider, meter_provider, sink):
    return CallRecorder(tracer_provider.get_tracer("test"), meter_provider.get_meter("test"), PriceTable())


def finish(recorder, usage: Usage, model: str = "gpt-5.6-sol", provider: str = "openai", price_provider=None):
    call = recorder.start("chat", provider, model, price_provider=price_provider)
    call.succeed(usage)


def reference(model: str, provider: str = "openai", service_tier: str | None = None, **usage) -> float:
    context = {"service_tier": service_tier} if service_tier else None
    return float(
        genai_prices.calc_price(
            genai_prices.Usage(**usage), model, provider_id=provider, price_context=context
        ).total_price
    )


def test_cache_writes_audio_image_and_units_are_on_the_span_and_record(recorder, span_exporter, sink):
    usage = Usage(
        input_tokens=9_000,
        output_tokens=700,
        cache_read_tokens=1_000,
        cache_write_tokens=6_000,
        units={"web_search_calls": 2, "file_search_calls": 1},
        response_model="gpt-5.6-sol",
    )
    finish(recorder, usage)
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == record.cache_write_tokens == 6_000
    assert span.attributes["spendwatch.usage.web_search_calls"] == 2
    assert span.attributes["spendwatch.usage.file_search_calls"] == 1
    assert record.units == {"web_search_calls": 2, "file_search_calls": 1}
    expected = reference(
        "gpt-5.6-sol",
        input_tokens=9_000,
        output_tokens=700,
        cache_read_tokens=1_000,
        cache_write_tokens=6_000,
        web_searches=2,
        storage_searches=1,
    )
    assert record.cost_usd == pytest.approx(expected, rel=1e-12)
    assert span.attributes["gen_ai.usage.cost"] == pytest.approx(expected, abs=1e-9)
    assert span.attributes["gen_ai.usage.cost.source"] == "local"


def test_audio_and_image_tokens_are_priced_at_their_own_rates(recorder, span_exporter, sink):
    finish(
        recorder,
        Usage(input_tokens=1_000, output_tokens=800, input_audio_tokens=700, output_audio_tokens=600),
        model="gpt-audio",
    )
    finish(
        recorder,
        Usage(input_tokens=3_000, output_tokens=4_160, input_image_tokens=2_500, output_image_tokens=4_160),
        model="gpt-image-1.5",
    )
    audio_span, image_span = span_exporter.get_finished_spans()
    audio, image = sink.records
    assert audio_span.attributes["gen_ai.usage.audio.input_tokens"] == audio.input_audio_tokens == 700
    assert audio_span.attributes["gen_ai.usage.audio.output_tokens"] == audio.output_audio_tokens == 600
    assert image_span.attributes["gen_ai.usage.image.input_tokens"] == image.input_image_tokens == 2_500
    assert image_span.attributes["gen_ai.usage.image.output_tokens"] == image.output_image_tokens == 4_160
    assert audio.cost_usd == pytest.approx(
        reference("gpt-audio", input_tokens=1_000, output_tokens=800, input_audio_tokens=700, output_audio_tokens=600),
        rel=1e-12,
    )
    assert image.cost_usd == pytest.approx(
        reference(
            "gpt-image-1.5",
            input_tokens=3_000,
            output_tokens=4_160,
            input_image_tokens=2_500,
            output_image_tokens=4_160,
        ),
        rel=1e-12,
    )


def test_a_call_is_priced_at_its_service_tier_and_keeps_it(recorder, span_exporter, sink):
    finish(recorder, Usage(input_tokens=9_000, output_tokens=300, cache_write_tokens=4_000, service_tier="priority"))
    (record,) = sink.records
    assert record.service_tier == "priority"
    expected = reference(
        "gpt-5.6-sol", service_tier="priority", input_tokens=9_000, output_tokens=300, cache_write_tokens=4_000
    )
    assert record.cost_usd == pytest.approx(expected, rel=1e-12)


def test_a_batch_call_gets_the_batch_discount(recorder, sink):
    finish(recorder, Usage(input_tokens=10_000, output_tokens=1_000, service_tier="batch"), model="gpt-4o-mini")
    (record,) = sink.records
    assert record.service_tier == "batch"
    assert record.cost_usd == pytest.approx(PriceTable().lookup("gpt-4o-mini", batch=True).cost(10_000, 1_000))
    assert record.cost_usd < PriceTable().lookup("gpt-4o-mini").cost(10_000, 1_000)


def test_the_providers_own_cost_wins(recorder, span_exporter, sink):
    finish(
        recorder,
        Usage(input_tokens=100, output_tokens=10, provider_cost_usd=0.0123),
        model="deepseek/deepseek-chat",
        provider="openrouter",
    )
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.cost_usd, record.pricing) == (0.0123, "provider")
    assert span.attributes["gen_ai.usage.cost.source"] == "provider"
    assert span.attributes["spendwatch.pricing"] == "provider"
    assert span.attributes["gen_ai.usage.cost"] == 0.0123


def test_an_openai_compatible_host_is_priced_by_the_one_provider_listing_the_model(recorder, sink):
    finish(recorder, Usage(input_tokens=3_000, output_tokens=500), "deepseek-chat", "openai", "openai-compatible")
    (record,) = sink.records
    assert record.cost_usd == pytest.approx(
        reference("deepseek-chat", provider="deepseek", input_tokens=3_000, output_tokens=500), rel=1e-12
    )


@pytest.mark.parametrize(
    ("usage", "input_tokens", "output_tokens"),
    [
        pytest.param(Usage(input_tokens=100, output_tokens=5, cache_read_tokens=60, cache_write_tokens=60), 120, 5),
        pytest.param(Usage(input_tokens=100, output_tokens=5, input_audio_tokens=80, input_image_tokens=40), 120, 5),
        pytest.param(Usage(input_tokens=10, output_tokens=50, output_audio_tokens=30, output_image_tokens=30), 10, 60),
        pytest.param(
            Usage(input_tokens=500, output_tokens=5, cache_write_tokens=10, units={"cache_write_1h_tokens": 90}), 500, 5
        ),
    ],
)
def test_a_whole_below_its_parts_is_raised_and_flagged(
    recorder, span_exporter, sink, usage, input_tokens, output_tokens
):
    finish(recorder, usage, model="claude-sonnet-4-5", provider="anthropic")
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
    assert record.estimated is True and span.attributes["spendwatch.cost.estimated"] is True
    assert record.cache_write_tokens >= record.units.get("cache_write_1h_tokens", 0)
    assert record.cost_usd > 0


def test_a_failed_call_that_cannot_have_been_billed_says_so_on_its_span(recorder, span_exporter, sink):
    call = recorder.start("chat", "openai", "gpt-4o-mini")
    call.fail(ConnectionRefusedError("refused"))
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    assert (record.cost_usd, record.pricing) == (0.0, "not billed")
    assert span.attributes["spendwatch.pricing"] == "not billed"
