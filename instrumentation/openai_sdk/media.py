"""Images, audio and moderations: what each call of these endpoints is billed for.

- Images (``generate``, ``edit``, ``create_variation``): GPT Image models report token usage (text and image input,
  image output); DALL·E models report none and are billed per image (``units["images"]``).
- Speech (``audio.speech.create``): ``tts-1``/``tts-1-hd`` are billed per input character (``units["characters"]``),
  read from the request; the token-billed models (``gpt-4o-mini-tts``) report usage only in an SSE body, else their
  input is estimated from the text and flagged.
- Transcriptions and translations: token usage (``gpt-4o-transcribe``) or audio seconds (``usage.seconds``,
  ``duration`` of ``verbose_json``); without either, the seconds of a WAV file read from its header, flagged as
  estimated.
- Moderations are free: counted as calls at $0 (genai-prices lists every moderation model at $0).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import wave
from typing import Any

from spendwatch.instrumentation.calls import Usage
from spendwatch.instrumentation.openai_sdk.streams import new_stream_state
from spendwatch.instrumentation.openai_sdk.usage import (
    count,
    estimate_tokens,
    header_cost,
    items,
    request_text_length,
    text,
    usage_from_raw,
    usage_from_request,
    usage_from_result,
)

__all__ = [
    "IMAGES",
    "MEDIA_KINDS",
    "MEDIA_TARGETS",
    "MODERATION",
    "SPEECH",
    "TRANSCRIPTION",
    "MediaStreamState",
    "raw_usage",
    "request_usage",
    "result_usage",
    "stream_state",
    "wav_seconds",
]

IMAGES = "images"
SPEECH = "speech"
TRANSCRIPTION = "transcription"
MODERATION = "moderation"
MEDIA_KINDS = frozenset({IMAGES, SPEECH, TRANSCRIPTION, MODERATION})

# GenAI semantic conventions' well-known operation for what generates content from multimodal input or output
# (images, speech, a transcript); a moderation generates nothing, and no well-known value fits it.
_GENERATE = "generate_content"
MODERATION_OPERATION = "moderation"
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"  # what the API runs when the request names no model

# (module, class, method, kind, gen_ai.operation.name, is_async), as patch.TARGETS.
MEDIA_TARGETS = tuple(
    (module, prefix + name, method, kind, operation, prefix == "Async")
    for module, name, methods, kind, operation in (
        ("openai.resources.images", "Images", ("generate", "edit", "create_variation"), IMAGES, _GENERATE),
        ("openai.resources.audio.speech", "Speech", ("create",), SPEECH, _GENERATE),
        ("openai.resources.audio.transcriptions", "Transcriptions", ("create",), TRANSCRIPTION, _GENERATE),
        ("openai.resources.audio.translations", "Translations", ("create",), TRANSCRIPTION, _GENERATE),
        ("openai.resources.moderations", "Moderations", ("create",), MODERATION, MODERATION_OPERATION),
    )
    for prefix in ("", "Async")
    for method in methods
)

# Output tokens of one GPT Image image by quality and size (OpenAI's image generation guide), for an estimate when
# the response never came; "auto" quality is taken as high, so an estimate does not undercount.
_IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}


def _billed_per_image(model: str) -> bool:
    return model.startswith("dall-e") or not model  # a request naming no model runs the API's default, dall-e-2


def _billed_per_character(model: str) -> bool:
    return model.startswith("tts-")


# --- from a response -----------------------------------------------------------------------------------------------


def result_usage(kind: str, result: Any, kwargs: dict) -> Usage:
    """The usage of a finished call of any kind (the text kinds are read by ``usage.usage_from_result``)."""
    read = _RESULT_USAGE.get(kind)
    return usage_from_result(kind, result, kwargs) if read is None else read(result, kwargs)


def raw_usage(kind: str, parsed: Any, kwargs: dict, headers: Any) -> Usage:
    """A response read with its HTTP headers (``usage.usage_from_raw`` for the text kinds)."""
    if kind not in MEDIA_KINDS:
        return usage_from_raw(kind, parsed, kwargs, headers)
    usage = result_usage(kind, parsed, kwargs)
    if usage.provider_cost_usd is None:
        usage.provider_cost_usd = header_cost(headers)
    return usage


def _reported_usage(result: Any) -> Any:
    """A response's ``usage``, read as attributes also when the SDK's model does not declare it (older releases keep
    undeclared fields as dicts)."""
    raw = getattr(result, "usage", None)
    return _Attributes(raw) if isinstance(raw, dict) else raw


def _images_usage(result: Any, kwargs: dict) -> Usage:
    model = _request_model(kwargs)
    raw = _reported_usage(result)
    if raw is not None or not _billed_per_image(model):
        usage = _image_tokens(raw)
        if usage is None:  # a GPT Image response without usage
            return _images_request_usage(kwargs, len(items(getattr(result, "data", None))) or None)
        return usage
    return Usage(units={"images": len(items(getattr(result, "data", None)))})


def _token_counts(raw: Any) -> Usage | None:
    """Input and output tokens of a usage object (None when either is missing), with the cached input."""
    input_tokens, output_tokens = count(getattr(raw, "input_tokens", None)), count(getattr(raw, "output_tokens", None))
    if input_tokens is None or output_tokens is None:
        return None
    cached = count(getattr(getattr(raw, "input_tokens_details", None), "cached_tokens", None)) or 0
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached)


def _image_tokens(raw: Any) -> Usage | None:
    """GPT Image usage: input (text and image tokens), output (image tokens, text tokens for newer models)."""
    usage = _token_counts(raw)
    if usage is None:
        return None
    usage.input_image_tokens = count(getattr(getattr(raw, "input_tokens_details", None), "image_tokens", None)) or 0
    output_images = count(getattr(getattr(raw, "output_tokens_details", None), "image_tokens", None))
    # The Images API answers with images: its output is image tokens unless the response says otherwise.
    usage.output_image_tokens = usage.output_tokens if output_images is None else output_images
    return usage


def _speech_usage(result: Any, kwargs: dict) -> Usage:
    if kwargs.get("stream_format") == "sse" and not _billed_per_character(_request_model(kwargs)):
        with contextlib.suppress(Exception):  # a body not read yet, or not the SSE it should be
            usage = _speech_sse_usage(result.response.content)
            if usage is not None:
                return usage
    return _speech_request_usage(kwargs)


def _speech_sse_usage(body: bytes) -> Usage | None:
    """The usage of the ``speech.audio.done`` event of an SSE body: text in, audio out."""
    for line in reversed(body.splitlines()):
        if line.startswith(b"data:") and b"speech.audio.done" in line:
            usage = _token_counts(_Attributes(json.loads(line[5:]).get("usage") or {}))
            if usage is not None:
                usage.output_audio_tokens = usage.output_tokens
            return usage
    return None


class _Attributes:
    """A dict read as attributes, as the SDK's models are."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update({key: _Attributes(v) if isinstance(v, dict) else v for key, v in values.items()})


def _transcription_usage(result: Any, kwargs: dict) -> Usage:
    raw = _reported_usage(result)  # a translation's is not declared, in any release
    kind = text(getattr(raw, "type", None))
    if kind == "tokens":
        usage = _token_counts(raw)
        if usage is not None:
            details = getattr(raw, "input_token_details", None)
            usage.input_audio_tokens = count(getattr(details, "audio_tokens", None)) or 0
            return usage
    seconds = getattr(raw, "seconds", None) if kind == "duration" else getattr(result, "duration", None)
    if type(seconds) in (int, float) and seconds >= 0:
        return Usage(units={"audio_seconds": float(seconds)})
    return _transcription_request_usage(kwargs)


def _moderation_usage(result: Any, kwargs: dict) -> Usage:
    return _moderation(text(getattr(result, "model", None)) or _request_model(kwargs))


def _moderation(model: str) -> Usage:
    """Moderations are free: priced by the price table, where genai-prices lists every moderation model at $0. A
    request that names no model runs the API's default, which is then the model priced."""
    return Usage(response_model=model or DEFAULT_MODERATION_MODEL)


# --- from the request alone (its answer never read, or a failed attempt) -------------------------------------------


def request_usage(kind: str, kwargs: dict) -> Usage:
    """What a call of any kind may have been billed for, from its request alone; flagged as estimated unless the
    request says it all (a tts-1 call's characters)."""
    read = _REQUEST_USAGE.get(kind)
    return usage_from_request(kwargs) if read is None else read(kwargs)


def _images_request_usage(kwargs: dict, images: int | None = None) -> Usage:
    n = kwargs.get("n")
    images = images or (n if type(n) is int and n > 0 else 1)
    model = _request_model(kwargs)
    if _billed_per_image(model):
        return Usage(units={"images": images}, estimated=True)
    sizes = _IMAGE_TOKENS.get(kwargs.get("quality"), _IMAGE_TOKENS["high"])
    per_image = sizes.get(kwargs.get("size"), max(sizes.values()))
    output = images * per_image
    return Usage(
        input_tokens=estimate_tokens(request_text_length(kwargs)),
        output_tokens=output,
        output_image_tokens=output,
        estimated=True,
    )


def _speech_request_usage(kwargs: dict) -> Usage:
    characters = len(text(kwargs.get("input")) or "")
    if _billed_per_character(_request_model(kwargs)):
        return Usage(units={"characters": characters})
    return Usage(input_tokens=estimate_tokens(characters), estimated=True)


def _transcription_request_usage(kwargs: dict) -> Usage:
    seconds = wav_seconds(kwargs.get("file"))
    if seconds is None:
        return Usage(estimated=True)
    return Usage(units={"audio_seconds": seconds}, estimated=True)


def _request_model(kwargs: dict) -> str:
    return text(kwargs.get("model")) or ""


_RESULT_USAGE = {
    IMAGES: _images_usage,
    SPEECH: _speech_usage,
    TRANSCRIPTION: _transcription_usage,
    MODERATION: _moderation_usage,
}
_REQUEST_USAGE = {
    IMAGES: _images_request_usage,
    SPEECH: _speech_request_usage,
    TRANSCRIPTION: _transcription_request_usage,
    MODERATION: lambda kwargs: _moderation(_request_model(kwargs)),
}


def wav_seconds(file: Any) -> float | None:
    """The length of a WAV file given as the SDK takes files (bytes, a path, an open file, a ``(name, content)``
    tuple), read from its header; None for any other format or anything unreadable. An open file's position is
    left where it was."""
    if isinstance(file, tuple) and len(file) >= 2:
        file = file[1]
    with contextlib.suppress(Exception):
        if isinstance(file, bytes | bytearray):
            return _header_seconds(io.BytesIO(file))
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as opened:
                return _header_seconds(opened)
        if hasattr(file, "seek") and hasattr(file, "tell"):
            position = file.tell()
            try:
                file.seek(0)
                return _header_seconds(file)
            finally:
                file.seek(position)
    return None


def _header_seconds(stream: Any) -> float:
    with wave.open(stream, "rb") as audio:
        return audio.getnframes() / audio.getframerate()


# --- streams -------------------------------------------------------------------------------------------------------

# The events that end a streamed image or transcript, carrying the usage.
_IMAGE_DONE_EVENTS = frozenset({"image_generation.completed", "image_edit.completed"})
_TRANSCRIPT_DONE_EVENT = "transcript.text.done"


class MediaStreamState:
    """A streamed image (partial images, then one completed event per image) or transcript (deltas, then a done
    event): the usage comes with the completed events. Same interface as ``streams.ChatStreamState``."""

    __slots__ = ("kind", "kwargs", "usage", "images")
    failure = None

    def __init__(self, kind: str, kwargs: dict) -> None:
        self.kind = kind
        self.kwargs = kwargs
        self.usage: Usage | None = None
        self.images = 0

    def observe(self, event: Any) -> None:
        kind = text(getattr(event, "type", None))
        if kind in _IMAGE_DONE_EVENTS:
            self.images += 1
            self._add(_image_tokens(getattr(event, "usage", None)))
        elif kind == _TRANSCRIPT_DONE_EVENT:
            self._add(_transcription_usage(event, self.kwargs))

    def _add(self, usage: Usage | None) -> None:
        if usage is None:
            return
        if self.usage is None:
            self.usage = usage
            return
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "input_image_tokens", "output_image_tokens"):
            setattr(self.usage, name, getattr(self.usage, name) + getattr(usage, name))

    def to_usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        if self.kind == IMAGES:
            return _images_request_usage(self.kwargs, self.images or None)
        return request_usage(self.kind, self.kwargs)


def stream_state(kind: str, kwargs: dict) -> Any:
    """The state that reads a stream of ``kind`` (``streams.new_stream_state`` for the text kinds)."""
    return MediaStreamState(kind, kwargs) if kind in MEDIA_KINDS else new_stream_state(kind, kwargs)
