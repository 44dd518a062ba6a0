"""The stub's images, audio and moderations endpoints, with bodies shaped like the real API's.

Deterministic, like the rest of the stub:

- images: GPT Image models report usage: input = the prompt's words plus ``IMAGE_INPUT_TOKENS`` per image sent
  (edits, variations), output = ``IMAGE_OUTPUT_TOKENS`` per image made; ``stream`` sends one partial image event per
  ``partial_images`` and one completed event (with that image's usage) per image. DALL·E models report no usage.
- speech: some bytes of audio; ``stream_format="sse"`` sends audio delta events and a ``speech.audio.done`` event
  whose usage is the input's words and ``SPEECH_OUTPUT_TOKENS``.
- transcriptions and translations: the audio's length is read from the WAV file sent. ``whisper-1`` reports
  ``usage.seconds`` (rounded up) and ``verbose_json`` its ``duration``; the GPT-4o transcribe models report tokens:
  ``AUDIO_TOKENS_PER_SECOND`` of audio input plus the prompt's words, the transcript's words as output (streamed as
  deltas and a ``transcript.text.done`` event when ``stream``).
- moderations: one result per input, nothing flagged.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import math
import wave
from typing import Any

from spendwatch.demo import _stub_responses as shapes
from spendwatch.demo._stub_responses import ReportedUsage

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "IMAGE_INPUT_TOKENS",
    "IMAGE_OUTPUT_TOKENS",
    "MEDIA_ENDPOINTS",
    "SPEECH_OUTPUT_TOKENS",
    "TRANSCRIPT",
    "parse_multipart",
]

IMAGE_INPUT_TOKENS = 65
IMAGE_OUTPUT_TOKENS = 272
SPEECH_OUTPUT_TOKENS = 50
AUDIO_TOKENS_PER_SECOND = 10
TRANSCRIPT = "Hello from the spendwatch stub transcript"
_SPEECH_AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(246)  # an MP3 header and silence, as far as anyone reads
_PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
_MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """A ``multipart/form-data`` body as a dict: text fields as str, files as bytes; repeated names (``image[]``)
    as lists."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        value: Any = payload if part.get_filename() is not None else payload.decode()
        if name.endswith("[]"):
            fields.setdefault(name[:-2], []).append(value)
        else:
            fields[name] = value
    return fields


def _words(text: Any) -> int:
    if isinstance(text, list):
        return sum(_words(item) for item in text)
    return len(text.split()) if isinstance(text, str) else 0


def _number(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _is_gpt_image(model: str) -> bool:
    return not model.startswith("dall-e")


# --- images ---------------------------------------------------------------------------------------------------------


def images(call: Any) -> Any:
    body, model = call.body, call.model
    n = _number(body.get("n"), 1)
    sent = body.get("image") or []
    sent_images = len(sent) if isinstance(sent, list) else 1
    data = [{"b64_json": _PIXEL_PNG} for _ in range(n)]
    reply: dict[str, Any] = {"created": shapes.now(), "data": data}
    if not _is_gpt_image(model):
        return call.reply(body=reply)
    input_tokens = _words(body.get("prompt")) + IMAGE_INPUT_TOKENS * sent_images
    usage = ReportedUsage(call.endpoint.replace("/", "."), model, input_tokens, n * IMAGE_OUTPUT_TOKENS)
    call.stub._record_usage(usage)
    if str(body.get("stream")).lower() != "true":
        reply["usage"] = _image_usage(usage.input_tokens, usage.output_tokens, IMAGE_INPUT_TOKENS * sent_images)
        return call.reply(body=reply)
    prefix = "image_edit" if call.endpoint == "images/edits" else "image_generation"
    events = []
    for index in range(n):
        for partial in range(_number(body.get("partial_images"), 0)):
            event = {"type": f"{prefix}.partial_image", "b64_json": _PIXEL_PNG, "partial_image_index": partial}
            events.append(shapes.sse(event, event=event["type"]))
        images_in = IMAGE_INPUT_TOKENS * sent_images if index == 0 else 0  # the input is billed once
        input_tokens = usage.input_tokens if index == 0 else 0
        done = {
            "type": f"{prefix}.completed",
            "b64_json": _PIXEL_PNG,
            "created_at": shapes.now(),
            "usage": _image_usage(input_tokens, IMAGE_OUTPUT_TOKENS, images_in),
        }
        events.append(shapes.sse(done, event=done["type"]))
    return call.reply(events=events)


def _image_usage(input_tokens: int, output_tokens: int, image_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": input_tokens - image_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


# --- audio ----------------------------------------------------------------------------------------------------------


def speech(call: Any) -> Any:
    if call.body.get("stream_format") != "sse":
        return call.reply(raw=_SPEECH_AUDIO, content_type="audio/mpeg")
    usage = ReportedUsage("audio.speech", call.model, _words(call.body.get("input")), SPEECH_OUTPUT_TOKENS)
    call.stub._record_usage(usage)
    delta = {"type": "speech.audio.delta", "audio": "SUQzBAAAAAAA"}
    done = {
        "type": "speech.audio.done",
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }
    return call.reply(events=[shapes.sse(delta), shapes.sse(delta), shapes.sse(done)])


def audio_seconds(file: Any) -> float:
    """The length of a WAV file sent (0 for anything else)."""
    try:
        with wave.open(io.BytesIO(file), "rb") as audio:
            return audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError, TypeError):
        return 0.0


def transcription(call: Any) -> Any:
    body, model = call.body, call.model
    seconds = audio_seconds(body.get("file"))
    response_format = body.get("response_format") or "json"
    if response_format in ("text", "srt", "vtt"):
        return call.reply(raw=TRANSCRIPT.encode(), content_type="text/plain")
    reply: dict[str, Any] = {"text": TRANSCRIPT}
    if model.startswith("whisper"):
        reply["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
        if response_format == "verbose_json":
            task = "translate" if call.endpoint == "audio/translations" else "transcribe"
            reply.update({"task": task, "language": "english", "duration": seconds, "segments": []})
            del reply["usage"]  # the verbose form states the duration itself
        return call.reply(body=reply)
    audio_tokens = round(seconds * AUDIO_TOKENS_PER_SECOND)
    text_tokens = _words(body.get("prompt"))
    usage = ReportedUsage("audio.transcriptions", model, audio_tokens + text_tokens, _words(TRANSCRIPT))
    call.stub._record_usage(usage)
    reply["usage"] = {
        "type": "tokens",
        "input_tokens": usage.input_tokens,
        "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": text_tokens},
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if str(body.get("stream")).lower() != "true":
        return call.reply(body=reply)
    deltas = [{"type": "transcript.text.delta", "delta": " " + word} for word in TRANSCRIPT.split()]
    done = {"type": "transcript.text.done", "text": TRANSCRIPT, "usage": reply["usage"]}
    return call.reply(events=[shapes.sse(event) for event in [*deltas, done]])


# --- moderations ----------------------------------------------------------------------------------------------------


def moderations(call: Any) -> Any:
    raw = call.body.get("input")
    inputs = raw if isinstance(raw, list) else [raw]
    result = {
        "flagged": False,
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0),
        "category_applied_input_types": {name: ["text"] for name in _MODERATION_CATEGORIES},
    }
    model = call.body.get("model") or "omni-moderation-latest"
    return call.reply(body={"id": shapes.new_id("modr-"), "model": model, "results": [result] * len(inputs)})


MEDIA_ENDPOINTS = {
    "images/generations": images,
    "images/edits": images,
    "images/variations": images,
    "audio/speech": speech,
    "audio/transcriptions": transcription,
    "audio/translations": transcription,
    "moderations": moderations,
}
