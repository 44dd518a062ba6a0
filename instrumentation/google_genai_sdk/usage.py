"""Reading token usage out of ``google-genai`` responses, and bounding a request for the budget guard.

Gemini's ``usage_metadata`` follows the semantic conventions' totals once read this way: ``prompt_token_count``
includes the cached tokens, and Google bills ``tool_use_prompt_token_count`` (what built-in tools such as search
grounding feed back into the prompt) at the input rate, so both make ``input_tokens``. Thoughts are billed as
output, so ``output_tokens`` is candidates plus thoughts, and the thoughts are also the reasoning tokens. Everything
reads defensively: a field of the wrong type is treated as missing, and what is missing is estimated and flagged.
"""

from __future__ import annotations

from typing import Any

from spendwatch.instrumentation.calls import Usage
from spendwatch.instrumentation.openai_sdk.usage import count, estimate_tokens, items, text

__all__ = [
    "input_token_bound",
    "output_cap",
    "request_model",
    "request_text_length",
    "usage_from_embeddings",
    "usage_from_metadata",
    "usage_from_request",
    "with_output_cap",
]

# Vertex AI answers with enum numbers when asked to (``$alt=json;enum-encoding=int``): MediaModality's numbers.
_MODALITY_NUMBERS = {1: "TEXT", 2: "IMAGE", 3: "VIDEO", 4: "AUDIO", 5: "DOCUMENT"}
_TOKENS_PER_MEDIA_PART = 258  # what Gemini counts for one image (or tile, or second of video): the least a part costs
_TOKENS_PER_PART = 8  # framing per content and part: generous, as it feeds an upper bound


def request_model(model: Any) -> str:
    """The model id a request names: ``models/gemini-2.5-flash``, ``publishers/google/models/...`` or a full Vertex
    resource name all name ``gemini-2.5-flash``, which is how prices and responses name it."""
    name = text(model)
    if not name:
        return "unknown"
    return name.rsplit("/", 1)[-1] if "models/" in name or name.startswith("google/") else name


def _add_media(usage: Usage, details: Any, output: bool) -> None:
    """Add the audio and image tokens of a list of per-modality counts to ``usage``'s input (or output) subsets. The
    SDK's modality is a ``str`` enum, so it compares equal to its name (text, the usual one, is passed over first);
    Vertex AI's enum numbers are named."""
    if type(details) is not list:
        return
    for detail in details:
        modality = getattr(detail, "modality", None)
        if modality == "TEXT":
            continue
        if type(modality) is int:
            modality = _MODALITY_NUMBERS.get(modality)
        tokens = count(getattr(detail, "token_count", None)) or 0
        if modality == "AUDIO" and output:
            usage.output_audio_tokens += tokens
        elif modality == "AUDIO":
            usage.input_audio_tokens += tokens
        elif modality == "IMAGE" and output:
            usage.output_image_tokens += tokens
        elif modality == "IMAGE":
            usage.input_image_tokens += tokens


def usage_from_metadata(metadata: Any, response_model: str | None) -> Usage | None:
    """The usage a response's ``usage_metadata`` reports; None when it carries no token counts (a stream's chunks
    before the last, a response without usage)."""
    prompt = count(getattr(metadata, "prompt_token_count", None))
    candidates = count(getattr(metadata, "candidates_token_count", None))
    if prompt is None and candidates is None:
        return None
    thoughts = count(getattr(metadata, "thoughts_token_count", None)) or 0
    tool_prompt = count(getattr(metadata, "tool_use_prompt_token_count", None)) or 0
    usage = Usage(
        input_tokens=(prompt or 0) + tool_prompt,
        output_tokens=(candidates or 0) + thoughts,
        cache_read_tokens=count(getattr(metadata, "cached_content_token_count", None)) or 0,
        reasoning_tokens=thoughts,
        response_model=response_model,
        estimated=prompt is None,  # an output-only count: the prompt is counted, but not reported
    )
    _add_media(usage, getattr(metadata, "prompt_tokens_details", None), False)
    if tool_prompt:
        _add_media(usage, getattr(metadata, "tool_use_prompt_tokens_details", None), False)
    _add_media(usage, getattr(metadata, "candidates_tokens_details", None), True)
    return usage


# --- requests ------------------------------------------------------------------------------------------------------


def _field(value: Any, name: str) -> Any:
    """A field of a request object, given as an SDK type or as the dict form the SDK also takes."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _parts(contents: Any) -> list:
    """Every part of a request's contents: a string, a part, a content, or a list of those."""
    if contents is None:
        return []
    if isinstance(contents, list | tuple):
        return [part for item in contents for part in _parts(item)]
    parts = _field(contents, "parts") if not isinstance(contents, str) else None
    return list(parts) if isinstance(parts, list | tuple) else [contents]


def _media_bytes(part: Any) -> int | None:
    """Bytes of an inline image, audio or video part (base64 in a dict, raw bytes in an SDK part); None if not one."""
    blob = _field(part, "inline_data") or _field(part, "inlineData")
    if blob is None:
        return None
    data = _field(blob, "data")
    if isinstance(data, str):
        return len(data) * 3 // 4
    return len(data) if isinstance(data, bytes | bytearray) else 0


def _part_bound(part: Any) -> int:
    """An upper bound on one part's tokens: UTF-8 bytes of its text (no tokenizer makes more tokens than bytes),
    the bytes of inline media (at least what an image costs), an image's worth for a file referenced by URI."""
    if isinstance(part, str):
        return len(part.encode("utf-8", "surrogatepass"))
    part_text = text(_field(part, "text"))
    if part_text is not None:
        return len(part_text.encode("utf-8", "surrogatepass"))
    media = _media_bytes(part)
    if media is not None:
        return max(media, _TOKENS_PER_MEDIA_PART)
    if _field(part, "file_data") is not None or _field(part, "fileData") is not None:
        return _TOKENS_PER_MEDIA_PART
    return len(repr(part))  # function calls and responses travel as JSON: their repr is at least as long


def input_token_bound(kwargs: dict) -> int:
    """An upper bound on a ``generate_content`` request's input tokens, for the budget guard to reserve against."""
    config = kwargs.get("config")
    parts = _parts(kwargs.get("contents")) + _parts(_field(config, "system_instruction"))
    total = sum(_part_bound(part) + _TOKENS_PER_PART for part in parts)
    tools = _field(config, "tools")
    if tools:
        total += len(repr(tools))  # tool schemas are sent as JSON: their repr is at least as long
    return total + _TOKENS_PER_PART


def output_cap(kwargs: dict) -> int | None:
    """The most output tokens a request can be billed for: ``max_output_tokens`` per candidate, when it is set."""
    config = kwargs.get("config")
    cap = count(_field(config, "max_output_tokens"))
    if cap is None:
        return None
    candidates = count(_field(config, "candidate_count"))
    return cap * max(candidates or 1, 1)


def with_output_cap(kwargs: dict, changes: dict) -> dict:
    """``kwargs`` with a guard's request changes (``{"max_output_tokens": n}``) made in the request's config."""
    config = kwargs.get("config")
    if config is None or isinstance(config, dict):
        config = {**(config or {}), **changes}
    else:
        config = config.model_copy(update=changes)
    return {**kwargs, "config": config}


def request_text_length(kwargs: dict) -> int:
    """Characters of text a request carries, for an estimate when the response reports no usage."""
    total = 0
    for part in _parts(kwargs.get("contents")) + _parts(_field(kwargs.get("config"), "system_instruction")):
        part_text = part if isinstance(part, str) else text(_field(part, "text"))
        total += len(part_text or "")
    return total


def usage_from_request(kwargs: dict) -> Usage:
    """A call counted from its request alone (its answer never read): the input estimated, no output."""
    return Usage(input_tokens=estimate_tokens(request_text_length(kwargs)), estimated=True)


def usage_from_embeddings(result: Any, kwargs: dict) -> Usage:
    """Vertex AI reports each embedding's token count; the Gemini API reports none, so its input is estimated."""
    total, reported = 0, False
    for embedding in items(getattr(result, "embeddings", None)):
        tokens = getattr(getattr(embedding, "statistics", None), "token_count", None)
        if type(tokens) in (int, float) and tokens >= 0:
            total, reported = total + int(tokens), True
    if reported:
        return Usage(input_tokens=total)
    return usage_from_request(kwargs)
