"""The google-genai instrumentor: the real SDK over real HTTP against the Gemini stub, a process of its own."""

from __future__ import annotations

import base64
import json

import pytest
from google.genai import errors, types
from opentelemetry.instrumentation.utils import suppress_instrumentation

from spendwatch.demo.gemini_stub import IMAGE_TOKENS, THOUGHTS_TOKENS
from spendwatch.demo.processes import wait_until
from spendwatch.instrumentation.background import flush_all
from spendwatch.instrumentation.pricing import PriceTable
from tests.google_genai_fixtures import *  # noqa: F403
from tests.google_genai_fixtures import GEMINI_API_KEY, VERTEX_TOKEN

PRICES = PriceTable()
PROMPT = "Write one line about OpenTelemetry"  # 5 words: 5 prompt tokens at the stub
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAUAAAAFCAYAAACNbyblAAAAHElEQVQI12P4//8/w38GIAXDIBKE0DHxgljNBAAO9TXL0Y4OHwAAAABJRU5ErkJggg=="
)


def only(items):
    (item,) = items
    return item


def expected_cost(model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> float:
    return PRICES.lookup(model, provider="gcp.gemini").cost(input_tokens, output_tokens, cached)


def test_generate_content_gets_one_span_and_one_record_with_usage_and_cost(
    instrument_google_genai, gemini, span_exporter, sink
):
    response = gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)

    assert response.text.startswith("This is a test reply")
    span, record = only(span_exporter.get_finished_spans()), only(sink.records)
    assert span.name == "generate_content gemini-2.0-flash"
    assert span.attributes["gen_ai.provider.name"] == record.provider == "gcp.gemini"
    assert span.attributes["gen_ai.usage.input_tokens"] == record.input_tokens == 5
    assert span.attributes["gen_ai.usage.output_tokens"] == record.output_tokens == 12
    assert span.attributes["gen_ai.response.model"] == "gemini-2.0-flash"
    assert record.cost_usd == pytest.approx(expected_cost("gemini-2.0-flash", 5, 12))
    assert span.attributes["spendwatch.cost.estimated"] is False


def test_thoughts_are_output_and_reasoning_and_the_model_prefix_is_dropped(instrument_google_genai, gemini, sink):
    gemini.models.generate_content(model="models/gemini-2.5-flash", contents=PROMPT, config={"max_output_tokens": 4})

    record = only(sink.records)
    assert record.request_model == "gemini-2.5-flash"
    assert (record.output_tokens, record.reasoning_tokens) == (4 + THOUGHTS_TOKENS, THOUGHTS_TOKENS)
    assert record.cost_usd == pytest.approx(expected_cost("gemini-2.5-flash", 5, 4 + THOUGHTS_TOKENS))


def test_a_vertex_ai_client_is_provider_gcp_vertex_ai(instrument_google_genai, vertex, span_exporter, sink):
    vertex.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)

    assert only(span_exporter.get_finished_spans()).attributes["gen_ai.provider.name"] == "gcp.vertex_ai"
    assert only(sink.records).cost_usd == pytest.approx(expected_cost("gemini-2.0-flash", 5, 12))


def test_an_inline_image_is_counted_as_image_input(instrument_google_genai, gemini, sink):
    image = types.Part.from_bytes(data=PNG, mime_type="image/png")
    gemini.models.generate_content(model="gemini-2.0-flash", contents=[PROMPT, image])

    record = only(sink.records)
    assert (record.input_tokens, record.input_image_tokens) == (5 + IMAGE_TOKENS, IMAGE_TOKENS)


def test_a_stream_gives_the_same_chunks_and_its_last_usage(instrument_google_genai, gemini, gemini_stub, sink):
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT))
    instrument_google_genai.uninstrument()
    bare = list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT))

    dump = [chunk.model_dump(exclude={"sdk_http_response"}) for chunk in chunks]
    assert dump == [chunk.model_dump(exclude={"sdk_http_response"}) for chunk in bare]
    record = only(sink.records)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (5, 12, False)


async def test_the_async_twins_are_counted(instrument_google_genai, gemini, span_exporter, sink):
    await gemini.aio.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    stream = await gemini.aio.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT)
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == 12
    assert [(r.input_tokens, r.output_tokens) for r in sink.records] == [(5, 12), (5, 12)]
    assert len(span_exporter.get_finished_spans()) == 2


def test_a_stream_left_early_is_counted_from_what_it_showed(instrument_google_genai, gemini, sink):
    stream = gemini.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT)
    next(stream)
    stream.close()
    flush_all()  # the call of a closed stream is ended by the background thread, which may be ending it right now
    wait_until(lambda: sink.records, 60, "the closed stream's call to end")

    record = only(sink.records)
    assert record.estimated and record.input_tokens > 0 and record.output_tokens > 0


def test_a_stream_cut_short_fails_with_its_estimated_usage(instrument_google_genai, gemini, sink):
    with pytest.raises(Exception) as raised:
        list(gemini.models.generate_content_stream(model="stub-stream-cut", contents=PROMPT))

    record = only(sink.records)
    assert record.outcome == "error" and record.error_type == type(raised.value).__qualname__
    assert record.estimated and record.output_tokens > 0


def test_an_api_error_reaches_the_caller_unchanged_and_is_not_billed(
    instrument_google_genai, gemini, span_exporter, sink
):
    with pytest.raises(errors.ServerError) as raised:
        gemini.models.generate_content(model="stub-error-500", contents=PROMPT)

    assert raised.value.code == 500
    span, record = only(span_exporter.get_finished_spans()), only(sink.records)
    assert span.attributes["error.type"] == "ServerError"
    assert (record.outcome, record.cost_usd, record.pricing) == ("error", 0.0, "not billed")


def test_embeddings_count_vertex_tokens_and_estimate_the_gemini_apis(instrument_google_genai, gemini, vertex, sink):
    vertex.models.embed_content(model="text-embedding-005", contents=["one two three", "four"])
    gemini.models.embed_content(model="text-embedding-004", contents=["one two three", "four"])

    vertex_record, gemini_record = sink.records
    assert (vertex_record.operation, vertex_record.input_tokens, vertex_record.estimated) == ("embeddings", 4, False)
    assert gemini_record.estimated and gemini_record.input_tokens > 0


def test_count_tokens_is_free_and_not_recorded(instrument_google_genai, gemini, span_exporter, sink):
    counted = gemini.models.count_tokens(model="gemini-2.0-flash", contents=PROMPT)

    assert counted.total_tokens == 5
    assert span_exporter.get_finished_spans() == () and sink.records == []


def test_automatic_function_calling_counts_every_request_it_sends(instrument_google_genai, gemini, sink):
    answered = []

    def current_time() -> str:
        """The time now."""
        answered.append(True)
        return "noon"

    response = gemini.models.generate_content(
        model="gemini-2.0-flash", contents=PROMPT, config={"tools": [current_time]}
    )

    assert answered and response.text.startswith("This is a test reply")
    assert [record.operation for record in sink.records] == ["generate_content", "generate_content"]


def test_a_chat_counts_each_message_with_its_history(instrument_google_genai, gemini, sink):
    chat = gemini.chats.create(model="gemini-2.0-flash")
    chat.send_message(PROMPT)
    chat.send_message("And another")

    assert [record.input_tokens for record in sink.records] == [5, 5 + 12 + 2]


def test_content_is_recorded_only_when_the_user_opts_in(
    tracer_provider, meter_provider, sink, gemini, span_exporter, monkeypatch
):
    from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor

    instrumentor = GoogleGenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    instrumentor.uninstrument()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    instrumentor.uninstrument()

    plain, captured = span_exporter.get_finished_spans()
    assert not any(PROMPT in str(value) for value in plain.attributes.values())
    assert PROMPT in json.loads(captured.attributes["gen_ai.input.messages"])
    assert "This is a test reply" in captured.attributes["gen_ai.output.messages"]


def test_no_key_or_token_is_ever_recorded(instrument_google_genai, gemini, vertex, span_exporter, sink):
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    vertex.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)

    recorded = repr([span.to_json() for span in span_exporter.get_finished_spans()]) + repr(sink.records)
    assert GEMINI_API_KEY not in recorded and VERTEX_TOKEN not in recorded


def test_suppressed_instrumentation_records_nothing(instrument_google_genai, gemini, span_exporter, sink):
    with suppress_instrumentation():
        gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
        list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT))

    assert span_exporter.get_finished_spans() == () and sink.records == []


def test_instrument_uninstrument_instrument_gives_one_span_per_call(
    instrument_google_genai, tracer_provider, meter_provider, gemini, span_exporter
):
    instrument_google_genai.uninstrument()
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    assert span_exporter.get_finished_spans() == ()

    instrument_google_genai.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    assert len(span_exporter.get_finished_spans()) == 1
