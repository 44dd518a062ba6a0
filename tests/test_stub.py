"""The local OpenAI-compatible stub (spendwatch.demo.stub) speaks the real API's shapes to the plain ``openai`` SDK."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from spendwatch.demo._stub_responses import LIGHTRAG_ANSWER_PREFIX, lightrag_reply
from spendwatch.demo.stub import DEFAULT_REPLY_WORDS, MESSAGE_OVERHEAD, ReportedUsage, StubServer

KEY = "sk-stub-test-key"
SAY = [{"role": "user", "content": "Say this is a test"}]  # 5 words, 1 message
SAY_INPUT_TOKENS = 5 + MESSAGE_OVERHEAD
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture(scope="module")
def plain_stub():
    with StubServer() as server:
        yield server


@pytest.fixture
def stub(plain_stub):
    plain_stub.reset()
    return plain_stub


@pytest.fixture
def client(stub):
    with openai.OpenAI(base_url=stub.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def async_client(stub):
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def azure_client(stub):
    with openai.AzureOpenAI(azure_endpoint=stub.origin, api_version="2024-10-21", api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def tuned_stub():
    models = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
    with StubServer(cached_tokens=6, reasoning_tokens=7, response_models=models) as server:
        yield server


@pytest.fixture
def tuned_client(tuned_stub):
    tuned_stub.reset()
    with openai.OpenAI(base_url=tuned_stub.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def post_raw(stub: StubServer, path: str, body: dict) -> tuple[int, str]:
    """POST without the SDK, to see the exact bytes the stub sends."""
    request = urllib.request.Request(
        stub.origin + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


# --- chat completions --------------------------------------------------------------------------


def test_chat_completion_parses_and_reports_word_counted_usage(client, stub):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=SAY)
    assert isinstance(completion, ChatCompletion)
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint and completion.service_tier == "default"
    assert completion.usage.prompt_tokens == SAY_INPUT_TOKENS
    assert (
        completion.usage.completion_tokens == DEFAULT_REPLY_WORDS == len(completion.choices[0].message.content.split())
    )
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert stub.usage_log == [ReportedUsage("chat.completions", "gpt-4o-mini", SAY_INPUT_TOKENS, DEFAULT_REPLY_WORDS)]


def test_max_tokens_sets_the_reply_length(client):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=SAY, max_completion_tokens=3)
    assert completion.choices[0].message.content == "This is a"
    assert completion.usage.completion_tokens == 3


def test_n_choices_each_count_their_output_tokens(client):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=SAY, n=2, max_tokens=4)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 8


async def test_async_chat_completion_parses(async_client, stub):
    completion = await async_client.chat.completions.create(model="gpt-4o-mini", messages=SAY)
    assert completion.usage.total_tokens == stub.usage_log[0].total_tokens


def test_stream_sends_one_chunk_per_word_and_no_usage_key_without_include_usage(stub):
    status, text = post_raw(stub, "/v1/chat/completions", {"model": "gpt-4o", "messages": SAY, "stream": True})
    payloads = sse_payloads(text)
    assert status == 200 and payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) == 1 + DEFAULT_REPLY_WORDS + 1  # role, words, finish
    assert all("usage" not in chunk for chunk in chunks)
    assert stub.usage_log == []  # nothing was reported


def test_stream_with_include_usage_puts_usage_on_a_final_chunk_without_choices(stub):
    body = {"model": "gpt-4o", "messages": SAY, "stream": True, "stream_options": {"include_usage": True}}
    chunks = [json.loads(p) for p in sse_payloads(post_raw(stub, "/v1/chat/completions", body)[1])[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == SAY_INPUT_TOKENS


def test_stream_with_include_usage_parses_into_sdk_chunks(client, stub):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=SAY, stream=True, stream_options={"include_usage": True}, max_tokens=4
    )
    chunks = list(stream)
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "This is a test"
    assert chunks[-1].usage.completion_tokens == 4 == stub.usage_log[0].output_tokens


async def test_async_stream_parses(async_client, stub):
    stream = await async_client.chat.completions.create(
        model="gpt-4o-mini", messages=SAY, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage.total_tokens == stub.usage_log[0].total_tokens


def test_tools_get_a_tool_call_reply(client):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=SAY, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_current_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"location": "stub"}


def test_streamed_tool_call_reassembles(client):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=SAY, tools=[WEATHER_TOOL], stream=True)
    calls = [call for chunk in stream for call in (chunk.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_current_weather"
    assert "".join(call.function.arguments for call in calls) == '{"location": "stub"}'


# --- usage options -----------------------------------------------------------------------------


def test_cached_tokens_are_reported_within_the_input(tuned_client):
    usage = tuned_client.chat.completions.create(model="gpt-4o", messages=SAY).usage
    assert usage.prompt_tokens_details.cached_tokens == 6 <= usage.prompt_tokens


def test_cached_tokens_are_capped_by_the_input(tuned_client):
    usage = tuned_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]).usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens == 1 + MESSAGE_OVERHEAD


@pytest.mark.parametrize(("model", "reasoning"), [("o3-mini", 7), ("gpt-5-mini", 7), ("o1", 7), ("gpt-4o", 0)])
def test_reasoning_tokens_go_to_reasoning_models_inside_the_output(tuned_client, model, reasoning):
    usage = tuned_client.chat.completions.create(model=model, messages=SAY).usage
    assert usage.completion_tokens_details.reasoning_tokens == reasoning
    assert usage.completion_tokens == DEFAULT_REPLY_WORDS + reasoning


def test_response_model_gets_a_dated_suffix_only_when_mapped(tuned_client):
    assert tuned_client.chat.completions.create(model="gpt-4o-mini", messages=SAY).model == "gpt-4o-mini-2024-07-18"
    assert tuned_client.chat.completions.create(model="gpt-4o", messages=SAY).model == "gpt-4o"


# --- legacy completions, embeddings ------------------------------------------------------------


def test_legacy_completion_parses(client, stub):
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert isinstance(completion, Completion)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, DEFAULT_REPLY_WORDS)
    assert stub.usage_log[0].endpoint == "completions"


def test_legacy_completion_stream_parses(client):
    stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True, max_tokens=2)
    assert "".join(chunk.choices[0].text for chunk in stream) == "This is"


def test_embeddings_default_to_base64_which_the_sdk_decodes(client, stub):
    response = client.embeddings.create(model="text-embedding-3-small", input="Say this is a test")
    assert isinstance(response, CreateEmbeddingResponse)
    assert stub.requests[0]["body"]["encoding_format"] == "base64"
    assert len(response.data[0].embedding) == 1536
    assert response.usage.prompt_tokens == response.usage.total_tokens == 5


def test_embeddings_base64_and_float_carry_the_same_vector(client):
    as_float = client.embeddings.create(model="text-embedding-3-small", input="x y", encoding_format="float")
    as_base64 = client.embeddings.create(model="text-embedding-3-small", input="x y")
    assert isinstance(as_float.data[0].embedding[0], float)
    assert as_float.data[0].embedding == as_base64.data[0].embedding


def test_embeddings_honour_dimensions_and_batches(client, stub):
    response = client.embeddings.create(model="text-embedding-3-large", input=["a b", "c d e"], dimensions=8)
    assert [len(item.embedding) for item in response.data] == [8, 8]
    assert stub.usage_log[0].input_tokens == 5


# --- Responses API -----------------------------------------------------------------------------


def test_response_parses_with_input_and_output_usage(client, stub):
    response = client.responses.create(model="gpt-4o-mini", input="Say this is a test", instructions="Be brief.")
    assert isinstance(response, Response)
    assert response.output_text == "This is a test reply from the spendwatch stub server and it"
    assert response.usage.input_tokens == 5 + 2 + 2 * MESSAGE_OVERHEAD
    assert response.usage.output_tokens == DEFAULT_REPLY_WORDS
    assert stub.usage_log[0].endpoint == "responses"


def test_reasoning_response_has_a_reasoning_item_and_counts_reasoning_tokens(tuned_client):
    response = tuned_client.responses.create(model="gpt-5", input="Hi", max_output_tokens=2)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage.output_tokens_details.reasoning_tokens == 7
    assert response.usage.output_tokens == 2 + 7
    assert response.usage.input_tokens_details.cached_tokens == 1 + MESSAGE_OVERHEAD


def test_response_stream_sends_the_real_event_sequence(client, stub):
    events = list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True, max_output_tokens=2))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].response.usage is None
    assert events[-1].response.usage.total_tokens == stub.usage_log[0].total_tokens


async def test_async_response_stream_parses(async_client, stub):
    stream = await async_client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].response.usage.output_tokens == DEFAULT_REPLY_WORDS


# --- Azure -------------------------------------------------------------------------------------


def test_azure_chat_uses_the_deployment_as_the_model(azure_client, stub):
    completion = azure_client.chat.completions.create(model="my-gpt4o", messages=SAY)
    assert completion.model == "my-gpt4o"
    assert stub.requests[0]["path"] == "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
    assert stub.usage_log[0].model == "my-gpt4o"


def test_azure_embeddings_and_completions_are_served(azure_client):
    assert azure_client.embeddings.create(model="my-embedder", input="x").model == "my-embedder"
    assert azure_client.completions.create(model="my-instruct", prompt="x").usage.prompt_tokens == 1


def test_recorded_requests_drop_credentials(azure_client, client, stub):
    azure_client.chat.completions.create(model="my-gpt4o", messages=SAY)
    client.chat.completions.create(model="gpt-4o", messages=SAY)
    assert all(KEY not in json.dumps(request) for request in stub.requests)
    assert stub.requests[1]["body"] == {"model": "gpt-4o", "messages": SAY}


# --- misbehaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "error_class", "code"),
    [
        ("stub-error-500", openai.InternalServerError, None),
        ("stub-error-429", openai.RateLimitError, "rate_limit_exceeded"),
        ("stub-not-found", openai.NotFoundError, "model_not_found"),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "embeddings", "responses"])
def test_error_models_raise_the_matching_sdk_error(client, stub, model, error_class, code, endpoint):
    calls = {
        "chat": lambda: client.chat.completions.create(model=model, messages=SAY),
        "embeddings": lambda: client.embeddings.create(model=model, input="x"),
        "responses": lambda: client.responses.create(model=model, input="x"),
    }
    with pytest.raises(error_class) as raised:
        calls[endpoint]()
    assert raised.value.code == code
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    assert stub.usage_log == []


def test_error_responses_tell_the_sdk_not_to_retry(stub):
    with openai.OpenAI(base_url=stub.base_url, api_key=KEY) as retrying_client, pytest.raises(openai.RateLimitError):
        retrying_client.chat.completions.create(model="stub-error-429", messages=SAY)
    assert len(stub.requests) == 1


def test_no_usage_model_gets_a_valid_response_without_usage(client, stub):
    assert client.chat.completions.create(model="stub-no-usage", messages=SAY).usage is None
    assert client.responses.create(model="stub-no-usage", input="x").usage is None
    assert stub.usage_log == []


def test_malformed_usage_still_parses_with_the_wrong_types(client):
    usage = client.chat.completions.create(model="stub-malformed-usage", messages=SAY).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details) == ("many", None, 5)
    assert client.responses.create(model="stub-malformed-usage", input="x").usage.input_tokens == "many"


def test_cut_stream_breaks_mid_way_as_a_connection_error(client, stub):
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="stub-stream-cut", messages=SAY, stream=True, stream_options={"include_usage": True}
        ):
            received.append(chunk)
    assert 0 < len(received) < DEFAULT_REPLY_WORDS
    assert stub.usage_log == []


def test_cut_response_stream_never_completes(client):
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(client.responses.create(model="stub-stream-cut", input="x", stream=True))
    assert "response.completed" not in [event.type for event in received]


def test_unknown_path_is_a_real_shaped_404(stub):
    status, text = post_raw(stub, "/v1/nothing-here", {})
    assert status == 404
    assert json.loads(text)["error"]["message"] == "Invalid URL (POST /v1/nothing-here)"


# --- LightRAG's prompts --------------------------------------------------------------------------

LIGHTRAG_TEXT = "Smith annotated Glucose in Plasma. The Orbitrap confirmed Glucose."
LIGHTRAG_SYSTEM = "---Role---\nEntity row: `entity<|@|>entity_name<|@|>entity_type<|@|>entity_description`"
LIGHTRAG_EXTRACT = (
    "---Task---\nExtract entities and relationships from the `---Input Text---` section below.\n"
    "4. Output `<|DONE|>` as the final line after all relevant entities and relationships.\n\n"
    f"---Input Text---\n```\n{LIGHTRAG_TEXT}\n```\n\n---Output---\n"
)
LIGHTRAG_GLEAN = "---Task---\nBased on the last extraction task, identify any missed entities.\n---Output---\n"


def lightrag_chat(client, messages, **options) -> str:
    return client.chat.completions.create(model="gpt-4o-mini", messages=messages, **options).choices[0].message.content


def test_lightrag_extraction_gets_rows_in_the_delimiters_the_prompt_asks_for(client, stub):
    messages = [{"role": "system", "content": LIGHTRAG_SYSTEM}, {"role": "user", "content": LIGHTRAG_EXTRACT}]
    reply = lightrag_chat(client, messages)

    rows = reply.splitlines()
    assert rows[-1] == "<|DONE|>"
    entities = [row.split("<|@|>") for row in rows if row.startswith("entity")]
    assert [(name, kind) for _, name, kind, _ in entities] == [
        ("Smith", "Other"),
        ("Glucose", "Other"),
        ("Plasma", "Other"),
        ("Orbitrap", "Other"),
    ]
    assert entities[0][3] == "Smith appears in: Smith annotated Glucose in Plasma."
    relations = [row.split("<|@|>")[1:3] for row in rows if row.startswith("relation")]
    assert relations == [["Smith", "Glucose"], ["Glucose", "Plasma"], ["Plasma", "Orbitrap"]]
    assert stub.usage_log[-1].output_tokens == len(reply.split())  # one token per word, as for any reply


def test_lightrag_gleaning_adds_one_description_of_the_first_name_from_the_history(client):
    history = [{"role": "user", "content": LIGHTRAG_EXTRACT}, {"role": "assistant", "content": "entity rows"}]
    reply = lightrag_chat(client, [*history, {"role": "user", "content": LIGHTRAG_GLEAN}])
    assert reply.splitlines() == [
        "entity<|#|>Smith<|#|>Other<|#|>Smith again appears in: " + LIGHTRAG_TEXT.split(". ")[0] + ".",
        "<|DONE|>",
    ]


def test_lightrag_keywords_are_json_from_the_user_query(client):
    prompt = (
        "You are an expert keyword extractor.\n---Real Data---\nUser Query: Did Smith use HMDB spectra?\n\n---Output---"
    )
    reply = json.loads(
        lightrag_chat(client, [{"role": "user", "content": prompt}], response_format={"type": "json_object"})
    )
    assert reply == {"high_level_keywords": ["use", "spectra"], "low_level_keywords": ["Smith", "HMDB"]}


def test_lightrag_answer_names_what_the_context_holds_and_summaries_name_the_entity(client):
    system = "You are an expert AI assistant specializing in synthesizing information from a provided knowledge base."
    context = system + "\nentity Glucose, entity Orbitrap"
    question = {"role": "user", "content": "Which Orbitrap measured Glucose in Urine?"}
    answer = lightrag_chat(client, [{"role": "system", "content": context}, question])
    assert answer == f"{LIGHTRAG_ANSWER_PREFIX}, Orbitrap, Glucose are in the retrieved context."
    summary = "You are a Knowledge Graph Specialist, proficient in data curation and synthesis.\nEntity Name: Glucose\n"
    assert lightrag_chat(client, [{"role": "user", "content": summary}]).startswith("Glucose: ")


def test_a_streamed_lightrag_reply_is_the_same_text_and_max_tokens_still_caps_it(client):
    messages = [{"role": "system", "content": LIGHTRAG_SYSTEM}, {"role": "user", "content": LIGHTRAG_EXTRACT}]
    whole = lightrag_chat(client, messages)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == whole
    capped = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=3)
    assert capped.choices[0].message.content == " ".join(whole.split()[:3]) and capped.usage.completion_tokens == 3


def test_other_prompts_keep_the_default_reply(client):
    assert lightrag_reply([{"role": "user", "content": "Extract entities from: Smith met Chen."}]) is None
    assert lightrag_reply([]) is None
    assert (
        len(lightrag_chat(client, [{"role": "user", "content": "Extract entities: Smith"}]).split())
        == DEFAULT_REPLY_WORDS
    )


def test_the_markers_match_the_installed_lightrags_prompts():
    """The real templates, filled in as LightRAG fills them, get the reply LightRAG parses."""
    prompts = pytest.importorskip("lightrag.prompt").PROMPTS
    values = collections.defaultdict(
        lambda: "x",
        tuple_delimiter=prompts["DEFAULT_TUPLE_DELIMITER"],
        completion_delimiter=prompts["DEFAULT_COMPLETION_DELIMITER"],
        input_text=LIGHTRAG_TEXT,
        heading_context_block="",
        query="Which Orbitrap measured Glucose?",
        description_name="Glucose",
    )
    system = {"role": "system", "content": prompts["entity_extraction_system_prompt"].format_map(values)}
    extract = {"role": "user", "content": prompts["entity_extraction_user_prompt"].format_map(values)}
    glean = {"role": "user", "content": prompts["entity_continue_extraction_user_prompt"].format_map(values)}
    rows = lightrag_reply([system, extract])
    assert rows.startswith("entity<|#|>Smith<|#|>") and rows.endswith("\n<|COMPLETE|>")
    assert lightrag_reply([system, extract, {"role": "assistant", "content": rows}, glean]).startswith(
        "entity<|#|>Smith<|#|>Other<|#|>Smith again appears in:"
    )
    keywords = json.loads(
        lightrag_reply([{"role": "user", "content": prompts["keywords_extraction"].format_map(values)}])
    )
    assert keywords["low_level_keywords"] == ["Orbitrap", "Glucose"]
    summary = prompts["summarize_entity_descriptions"].format_map(values)
    assert lightrag_reply([{"role": "user", "content": summary}]).startswith("Glucose: ")
    for template in ("rag_response", "naive_rag_response"):
        answer = [
            {
                "role": "system",
                "content": prompts[template].format_map(
                    values | {"context_data": "Glucose", "content_data": "Glucose"}
                ),
            }
        ]
        answer.append({"role": "user", "content": "Which Orbitrap measured Glucose?"})
        assert lightrag_reply(answer) == f"{LIGHTRAG_ANSWER_PREFIX}, Glucose is in the retrieved context."


# --- the server itself -------------------------------------------------------------------------


def test_concurrent_calls_are_all_recorded(client, stub):
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: client.chat.completions.create(model="gpt-4o", messages=SAY), range(16)))
    assert len(stub.requests) == len(stub.usage_log) == 16


def test_reset_forgets_requests_and_usage(client, stub):
    client.chat.completions.create(model="gpt-4o", messages=SAY)
    stub.reset()
    assert (stub.requests, stub.usage_log) == ([], [])


def test_start_returns_the_v1_base_url_on_an_ephemeral_port():
    server = StubServer()
    try:
        base_url = server.start()
        assert base_url == server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.port != 0
    finally:
        server.stop()


def test_module_entry_point_prints_the_base_url():
    process = subprocess.Popen(
        [sys.executable, "-m", "spendwatch.demo.stub", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = process.stdout.readline().strip()
        with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as sdk:
            assert sdk.chat.completions.create(model="gpt-4o", messages=SAY).usage.prompt_tokens == SAY_INPUT_TOKENS
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
