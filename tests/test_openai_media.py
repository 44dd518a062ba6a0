"""Images, audio and moderations through the real SDK over HTTP against the stub: what each call is billed for,
priced as genai-prices prices it (``calc_price``, the slow reference), sync, async, raw and streamed."""

from __future__ import annotations

import io
import warnings
import wave

import genai_prices
import openai
import pytest

from spendwatch.demo._stub_media import AUDIO_TOKENS_PER_SECOND, IMAGE_INPUT_TOKENS, IMAGE_OUTPUT_TOKENS, TRANSCRIPT
from spendwatch.demo.stub import StubServer
from spendwatch.instrumentation.openai_sdk.media import wav_seconds
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

PROMPT = "a red cat on a blue mat"  # 6 words: the stub's text tokens
SPOKEN = "Hello there, this is spoken."  # 28 characters
SECONDS = 2.5


def wav(seconds: float = SECONDS, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(bytes(int(seconds * rate) * 2))
    return buffer.getvalue()


def reference_cost(model: str, **usage: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genai-prices warns about keys a model has no price for
        return float(genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id="openai").total_price)


def only_record(sink):
    (record,) = sink.records
    return record


def assert_image_tokens(record, stub, model="gpt-image-1", images_sent=0):
    (usage,) = stub.usage_log
    assert (record.input_tokens, record.output_tokens) == (usage.input_tokens, usage.output_tokens)
    assert record.input_image_tokens == IMAGE_INPUT_TOKENS * images_sent
    assert record.output_image_tokens == usage.output_tokens  # the Images API answers in image tokens
    expected = reference_cost(
        model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        input_image_tokens=record.input_image_tokens,
        output_image_tokens=record.output_image_tokens,
    )
    assert record.estimated is False
    assert record.cost_usd == pytest.approx(expected, rel=1e-9) and expected > 0


# --- images --------------------------------------------------------------------------------------------------------


def test_a_generated_image_is_priced_from_its_image_tokens(client, stub, sink, span_exporter):
    client.images.generate(model="gpt-image-1", prompt=PROMPT, n=2)

    record = only_record(sink)
    assert (record.operation, record.request_model) == ("generate_content", "gpt-image-1")
    assert record.output_tokens == 2 * IMAGE_OUTPUT_TOKENS
    assert_image_tokens(record, stub)
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "generate_content gpt-image-1"


def test_an_edit_counts_the_images_sent_as_image_input(client, stub, sink):
    client.images.edit(model="gpt-image-1", prompt=PROMPT, image=[("a.png", b"one"), ("b.png", b"two")])

    assert_image_tokens(only_record(sink), stub, images_sent=2)


async def test_an_async_raw_edit_is_priced_alike(async_client, stub, sink):
    raw = await async_client.images.with_raw_response.edit(model="gpt-image-1", prompt=PROMPT, image=("a.png", b"x"))

    assert raw.parse().data
    assert_image_tokens(only_record(sink), stub, images_sent=1)


def test_a_streamed_image_is_priced_from_its_completed_event(client, stub, sink):
    events = [event.type for event in client.images.generate(model="gpt-image-1", prompt=PROMPT, stream=True)]

    assert events == ["image_generation.completed"]
    assert_image_tokens(only_record(sink), stub)


def test_dall_e_images_are_counted_per_image_and_unpriced(client, stub, sink, span_exporter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_variation is deprecated in openai 3.x
        client.images.create_variation(model="dall-e-2", image=("a.png", b"x"), n=3)

    record = only_record(sink)
    assert record.units == {"images": 3}
    assert (record.cost_usd, record.pricing) == (None, "unpriced")  # genai-prices has no DALL-E price: never $0
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["spendwatch.pricing"] == "unpriced"


# --- audio ---------------------------------------------------------------------------------------------------------


def test_tts_1_is_priced_per_character_of_its_input(client, stub, sink):
    client.audio.speech.create(model="tts-1", input=SPOKEN, voice="alloy")

    record = only_record(sink)
    assert record.units == {"characters": len(SPOKEN)}
    assert (record.input_tokens, record.estimated) == (0, False)
    assert record.cost_usd == pytest.approx(reference_cost("tts-1", input_characters=len(SPOKEN)), rel=1e-9)
    assert record.cost_usd > 0


def test_speech_streamed_to_a_file_is_priced_from_its_request(client, stub, sink, tmp_path):
    with client.audio.speech.with_streaming_response.create(model="tts-1-hd", input=SPOKEN, voice="alloy") as response:
        response.stream_to_file(tmp_path / "speech.mp3")

    record = only_record(sink)
    assert record.units == {"characters": len(SPOKEN)}
    assert record.cost_usd == pytest.approx(reference_cost("tts-1-hd", input_characters=len(SPOKEN)), rel=1e-9)


def test_token_billed_speech_reads_the_usage_of_its_sse_body(client, stub, sink):
    client.audio.speech.create(model="gpt-4o-mini-tts", input=SPOKEN, voice="alloy", stream_format="sse")

    record = only_record(sink)
    (usage,) = stub.usage_log
    assert (record.input_tokens, record.output_tokens, record.estimated) == (5, usage.output_tokens, False)
    assert record.output_audio_tokens == usage.output_tokens
    expected = reference_cost(
        "gpt-4o-mini-tts", input_tokens=5, output_tokens=usage.output_tokens, output_audio_tokens=usage.output_tokens
    )
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("response_format", ["json", "verbose_json"])
def test_whisper_is_priced_per_second_of_audio(client, stub, sink, response_format):
    client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav()), response_format=response_format)

    record = only_record(sink)
    seconds = 3 if response_format == "json" else SECONDS  # usage.seconds is rounded up; duration is not
    assert (record.units, record.estimated) == ({"audio_seconds": seconds}, False)
    assert record.cost_usd == pytest.approx(reference_cost("whisper-1", audio_seconds=seconds), rel=1e-9)


def test_a_plain_text_transcript_is_priced_from_the_wav_files_length_as_an_estimate(client, stub, sink, tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(wav())
    with path.open("rb") as file:
        transcript = client.audio.transcriptions.create(model="whisper-1", file=file, response_format="text")
        assert file.tell() == path.stat().st_size  # where the SDK left it

    assert transcript.strip() == TRANSCRIPT
    record = only_record(sink)
    assert (record.units, record.estimated) == ({"audio_seconds": SECONDS}, True)
    assert record.cost_usd == pytest.approx(reference_cost("whisper-1", audio_seconds=SECONDS), rel=1e-9)


async def test_a_translation_is_priced_like_a_transcription(async_client, stub, sink):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # translations are deprecated in openai 3.x
        await async_client.audio.translations.create(model="whisper-1", file=("a.wav", wav()))

    assert only_record(sink).units == {"audio_seconds": 3}


@pytest.mark.parametrize("stream", [False, True])
def test_gpt_4o_transcribe_is_priced_from_its_audio_tokens(client, stub, sink, stream):
    result = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav()), stream=stream)
    if stream:
        assert [event.type for event in result][-1] == "transcript.text.done"

    record = only_record(sink)
    (usage,) = stub.usage_log
    audio_tokens = round(SECONDS * AUDIO_TOKENS_PER_SECOND)
    assert (record.input_tokens, record.output_tokens) == (usage.input_tokens, usage.output_tokens)
    assert record.input_audio_tokens == audio_tokens
    expected = reference_cost(
        "gpt-4o-transcribe",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        input_audio_tokens=audio_tokens,
    )
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)


def test_the_length_of_a_wav_file_is_read_from_what_the_sdk_takes():
    data = wav(1.5)
    assert wav_seconds(data) == wav_seconds(("a.wav", data)) == wav_seconds(io.BytesIO(data)) == 1.5
    assert wav_seconds(b"ID3 not a wave file") is None


# --- moderations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_moderation_is_counted_at_no_cost(client, async_client, stub, sink, span_exporter, is_async):
    if is_async:
        await async_client.moderations.create(input=["first", "second"])
    else:
        client.moderations.create(input="first")

    record = only_record(sink)
    assert (record.operation, record.response_model, record.outcome) == (
        "moderation",
        "omni-moderation-latest",
        "success",
    )
    assert record.cost_usd == 0.0 and record.pricing.startswith("genai-prices")  # it lists moderations as free
    assert reference_cost("omni-moderation-latest", input_tokens=10) == 0.0
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["gen_ai.usage.cost"] == 0.0


# --- failures ------------------------------------------------------------------------------------------------------


def test_an_image_call_that_timed_out_is_estimated_from_its_request(sink):
    with StubServer(reply_delay_s=1.0) as slow:
        client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=slow.base_url, max_retries=0, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            client.images.generate(model="gpt-image-1", prompt=PROMPT, quality="low", size="1024x1024", n=2)

    record = only_record(sink)
    assert (record.outcome, record.estimated) == ("error", True)
    assert record.output_tokens == record.output_image_tokens == 2 * 272  # 272 tokens a low-quality square image
    assert record.cost_usd > 0


def test_a_refused_speech_call_is_not_billed(sink, span_exporter):
    with StubServer() as gone:
        base_url = gone.base_url
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=base_url, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.audio.speech.create(model="tts-1", input=SPOKEN, voice="alloy")

    record = only_record(sink)
    assert (record.cost_usd, record.pricing) == (0.0, "not billed")
