"""Which ``google-genai`` methods are wrapped, and why two of them are the SDK's private ones.

``Models.generate_content`` may send several requests for one call: automatic function calling sends one per round
of tool calls, and automatic continuation one per continuation token. Each request is billed, so spendwatch wraps
the method that sends exactly one (``_generate_content``, ``_generate_content_stream``): one span and one ledger row
per billed request, whichever public method (``generate_content``, ``generate_content_stream``, ``chats``) sent it.
These private names are the only ones here; ``tests/test_google_genai_targets.py`` fails loudly should the SDK
rename them. Embeddings send one request per public call, so ``embed_content`` itself is wrapped. ``count_tokens`` is
free and left alone, as for Anthropic: a row for it would swell ``llm_requests_total``, which users read as model calls.
"""

from __future__ import annotations

__all__ = ["EMBEDDINGS", "GENERATE", "TARGETS"]

GENERATE = "generate_content"  # the GenAI conventions' operation name for multimodal content generation
EMBEDDINGS = "embeddings"

SYNC, ASYNC, STREAM, ASYNC_STREAM = "sync", "async", "stream", "async_stream"

# (class in google.genai.models, method, gen_ai.operation.name, wrapper kind)
TARGETS = (
    ("Models", "_generate_content", GENERATE, SYNC),
    ("Models", "_generate_content_stream", GENERATE, STREAM),
    ("Models", "embed_content", EMBEDDINGS, SYNC),
    ("AsyncModels", "_generate_content", GENERATE, ASYNC),
    ("AsyncModels", "_generate_content_stream", GENERATE, ASYNC_STREAM),
    ("AsyncModels", "embed_content", EMBEDDINGS, ASYNC),
)
