"""The 71 real OpenAI recordings replay through the plain, uninstrumented ``openai`` SDK (see tests/cassettes.py)."""

from __future__ import annotations

import gzip
import json

import openai
import pytest
import yaml

from tests import cassettes
from tests.cassettes import (
    ReplayServer,
    call_async,
    call_sync,
    cassette_params,
    expected_sent_body,
    load_cassette,
    require_cassettes,
    sdk_call,
)

EXPECTED_CASSETTES = 71


@pytest.fixture
def recorded(request):
    """The interactions of the cassette named by the test's ``path`` parameter."""
    require_cassettes()
    return load_cassette(request.param)


def reported_usage(result) -> dict | None:
    """The usage the SDK parsed out of a call's result, as the JSON it came from."""
    items = result if isinstance(result, list) else [result]
    for item in reversed(items):
        usage = getattr(getattr(item, "response", item), "usage", None)
        if usage is not None:
            return usage.to_dict()
    return None


def replay_sync(interactions):
    with ReplayServer(interactions) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        results = [call_sync(client, interaction) for interaction in interactions]
        client.close()
    return server, results


async def replay_async(interactions):
    with ReplayServer(interactions) as server:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
            results = [await call_async(client, interaction) for interaction in interactions]
    return server, results


def assert_outcomes_match_the_recording(interactions, results):
    for interaction, result in zip(interactions, results, strict=True):
        if interaction.is_error:
            assert isinstance(result, openai.APIStatusError), result
            assert result.status_code == interaction.response.status
        else:
            assert not isinstance(result, Exception), f"{interaction.cassette}: {result!r}"


def test_all_recordings_are_there():
    require_cassettes()
    assert len(cassettes.cassette_paths()) == EXPECTED_CASSETTES


@pytest.mark.parametrize("recorded", cassette_params(), indirect=True)
def test_cassette_replays_through_the_sync_sdk_raising_only_recorded_errors(recorded):
    server, results = replay_sync(recorded)
    assert_outcomes_match_the_recording(recorded, results)
    assert server.unused == []


@pytest.mark.parametrize("recorded", cassette_params(), indirect=True)
async def test_cassette_replays_through_the_async_sdk_raising_only_recorded_errors(recorded):
    server, results = await replay_async(recorded)
    assert_outcomes_match_the_recording(recorded, results)
    assert server.unused == []


@pytest.mark.parametrize("recorded", cassette_params(), indirect=True)
def test_sdk_sends_the_recorded_body_plus_its_own_defaults(recorded):
    server, _ = replay_sync(recorded)
    sent = [body for _, _, body in server.received]
    assert sent == [expected_sent_body(interaction) for interaction in recorded]


@pytest.mark.parametrize("recorded", cassette_params(), indirect=True)
def test_sdk_parses_exactly_the_recorded_usage(recorded):
    _, results = replay_sync(recorded)
    assert [reported_usage(result) for result in results] == [i.recorded_usage() for i in recorded]


def test_embeddings_without_encoding_format_gain_the_sdk_base64_default():
    require_cassettes()
    (interaction,) = load_cassette(cassettes.CASSETTE_DIR / "test_embeddings_with_content.yaml")
    assert "encoding_format" not in interaction.request.body
    assert expected_sent_body(interaction)["encoding_format"] == "base64"


def test_sdk_call_names_the_resource_and_passes_the_body_as_keywords():
    require_cassettes()
    (interaction,) = load_cassette(cassettes.CASSETTE_DIR / "test_chat_completion_extra_params.yaml")
    assert sdk_call(interaction) == ("chat.completions.create", interaction.request.body)


def test_cassette_with_two_interactions_replays_them_in_order():
    require_cassettes()
    interactions = load_cassette(cassettes.CASSETTE_DIR / "test_chat_completion_tool_calls_no_content.yaml")
    _, (first, second) = replay_sync(interactions)
    assert first.choices[0].finish_reason == "tool_calls"
    assert second.usage.prompt_tokens == interactions[1].recorded_usage()["prompt_tokens"]


def test_recorded_404_raises_the_sdk_not_found_error():
    require_cassettes()
    interactions = load_cassette(cassettes.CASSETTE_DIR / "test_chat_completion_404.yaml")
    _, (error,) = replay_sync(interactions)
    assert isinstance(error, openai.NotFoundError)
    assert error.code == "model_not_found"


def test_recorded_stream_is_returned_as_all_its_chunks():
    require_cassettes()
    interactions = load_cassette(cassettes.CASSETTE_DIR / "test_chat_completion_streaming.yaml")
    _, (chunks,) = replay_sync(interactions)
    assert len(chunks) == len(interactions[0].response.events())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '"This is a test."'


def test_replay_server_answers_501_once_the_recording_is_used_up():
    require_cassettes()
    (interaction,) = load_cassette(cassettes.CASSETTE_DIR / "test_chat_completion_with_content.yaml")
    with ReplayServer([interaction]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        call_sync(client, interaction)
        error = call_sync(client, interaction)
    assert isinstance(error, openai.InternalServerError)
    assert error.status_code == 501


def test_load_cassette_decodes_gzip_binary_bodies_and_bare_request_strings(tmp_path):
    body = {"object": "list", "data": [], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    interaction = {
        "request": {"method": "post", "uri": "https://example.invalid/v1/embeddings", "body": '{"input": "x"}'},
        "response": {
            "status": {"code": 200, "message": "OK"},
            "headers": {"Content-Encoding": ["gzip"], "Content-Type": "application/json"},
            "body": {"string": gzip.compress(json.dumps(body).encode())},
        },
    }
    path = tmp_path / "gzipped.yaml"
    path.write_text(yaml.safe_dump({"interactions": [interaction], "version": 1}))
    (loaded,) = load_cassette(path)
    assert (loaded.request.method, loaded.request.path, loaded.request.body) == (
        "POST",
        "/v1/embeddings",
        {"input": "x"},
    )
    assert loaded.response.json() == body
    assert "content-encoding" not in loaded.response.headers


@pytest.fixture
def cassettes_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(cassettes, "CASSETTE_DIR", tmp_path / "absent")


def test_missing_cassettes_skip_the_test_outside_ci(cassettes_missing, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="clone the shared/ folder"):
        require_cassettes()


def test_missing_cassettes_fail_the_test_in_ci(cassettes_missing, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_cassettes()
