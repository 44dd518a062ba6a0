"""The benchmark's in-process mock transport answers the real SDK as the API would, so what ``make bench`` times is
the SDK's real work on realistic responses."""

from __future__ import annotations

import json

import pytest

from bench import transport


@pytest.fixture(scope="module")
def client():
    sync, _ = transport.make_clients()
    return sync


def test_embeddings_come_back_in_the_encoding_the_sdk_asked_for(client):
    # The SDK asks for base64 unless the caller picks a format, and decodes it; the API honours the request.
    raw = client.embeddings.with_raw_response.create(model=transport.EMBEDDING_MODEL, input="Say this is a test")
    assert isinstance(json.loads(raw.http_response.text)["data"][0]["embedding"], str)
    default = raw.parse()
    as_floats = client.embeddings.create(
        model=transport.EMBEDDING_MODEL, input="Say this is a test", encoding_format="float"
    )
    assert len(default.data[0].embedding) == 1536
    assert default.data[0].embedding == as_floats.data[0].embedding
    assert (default.model, default.usage.prompt_tokens) == (transport.EMBEDDING_MODEL, 8)


def test_every_timed_kind_reports_usage(client):
    chat = client.chat.completions.create(model=transport.CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert chat.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=transport.CHAT_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == transport.STREAM_CHUNKS
    assert chunks[-1].usage.prompt_tokens > 0
    response = client.responses.create(model=transport.CHAT_MODEL, input="Say this is a test")
    assert response.usage.input_tokens > 0
