"""Bedrock through ``aioboto3``/``aiobotocore`` (LightRAG's ``lightrag.llm.bedrock`` binding), against the Bedrock stub.

aiobotocore clients call their own async ``AioBaseClient._make_api_call``, never botocore's, so the Bedrock
instrumentor patches that too (:mod:`spendwatch.instrumentation.bedrock_sdk.aio`). These tests need ``aioboto3``,
which is not in the test extra: every aioboto3 release pins an aiobotocore that pins an older botocore than the
boto3 the Bedrock tests use (aioboto3 15.5.0: botocore < 1.40.62). ``make test-aioboto3`` runs them in a
virtualenv of their own (``.venv-aioboto3``) with ``SPENDWATCH_TEST_AIOBOTO3=1``, which makes a missing aioboto3 an
error there instead of a skip.
"""

from __future__ import annotations

import json
import os
from functools import partial

import pytest

if os.environ.get("SPENDWATCH_TEST_AIOBOTO3") == "1":
    import aioboto3  # the step made to run these tests must never skip them
else:
    aioboto3 = pytest.importorskip("aioboto3", reason="aioboto3 pins an older botocore than the test extra's boto3")
pytest.importorskip("lightrag")

from lightrag import LightRAG, QueryParam  # noqa: E402
from lightrag.utils import EmbeddingFunc, Tokenizer  # noqa: E402

from spendwatch.demo._lightrag import WhitespaceTokenizer  # noqa: E402
from spendwatch.demo._stub_responses import LIGHTRAG_ANSWER_PREFIX  # noqa: E402
from spendwatch.demo.bedrock_stub import BedrockStub  # noqa: E402
from spendwatch.instrumentation.bedrock_sdk import BedrockInstrumentor  # noqa: E402
from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor  # noqa: E402
from spendwatch.instrumentation.lightrag_hku.scopes import CACHE_HIT  # noqa: E402
from spendwatch.instrumentation.pricing import PriceTable  # noqa: E402
from tests.conftest import FAKE_API_KEY  # noqa: E402

PRICES = PriceTable()
NOVA = "amazon.nova-micro-v1:0"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Say something short"}]}]
ANTHROPIC_BODY = json.dumps(
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}
)
DOCUMENTS = {
    "doc-acme": "Alice founded Acme in Berlin. Acme builds rockets with Bob as chief engineer.",
    "doc-globex": "Bob later joined Globex in Paris. Globex competes with Acme on rockets.",
}


@pytest.fixture(scope="module")
def bedrock_stub():
    with BedrockStub() as server:
        yield server


@pytest.fixture
def instrumented(tracer_provider, meter_provider, sink):
    instrumentors = [BedrockInstrumentor(), LightRAGInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield
    for instrumentor in reversed(instrumentors):
        instrumentor.uninstrument()


def client(bedrock_stub):
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return aioboto3.Session().client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_stub.origin, **credentials
    )


def priced(record) -> float:
    return PRICES.lookup(record.request_model, provider="aws.bedrock").cost(record.input_tokens, record.output_tokens)


@pytest.mark.usefixtures("instrumented")
async def test_each_aiobotocore_call_is_one_record_with_the_usage_bedrock_reported(bedrock_stub, sink):
    async with client(bedrock_stub) as bedrock:
        answer = await bedrock.converse(modelId=NOVA, messages=MESSAGES)
        streamed = await bedrock.converse_stream(modelId=NOVA, messages=MESSAGES)
        deltas = [e["contentBlockDelta"]["delta"]["text"] async for e in streamed["stream"] if "contentBlockDelta" in e]
        invoked = await bedrock.invoke_model(modelId=CLAUDE, body=ANTHROPIC_BODY)
        invoked_usage = (await invoked["body"].json())["usage"]
        chunks = await bedrock.invoke_model_with_response_stream(modelId=CLAUDE, body=ANTHROPIC_BODY)
        events = [event async for event in chunks["body"]]

    assert "".join(deltas).split() == answer["output"]["message"]["content"][0]["text"].split()
    assert events and all("chunk" in event for event in events)
    converse, converse_stream, invoke, invoke_stream = sink.records
    for record in (converse, converse_stream):
        usage = answer["usage"]
        assert (record.provider, record.request_model) == ("aws.bedrock", NOVA)
        assert (record.input_tokens, record.output_tokens) == (usage["inputTokens"], usage["outputTokens"])
    for record in (invoke, invoke_stream):
        assert (record.request_model, record.input_tokens) == (CLAUDE, invoked_usage["input_tokens"])
        assert record.output_tokens == invoked_usage["output_tokens"]
    assert all(not r.estimated and r.cost_usd == pytest.approx(priced(r), rel=1e-9) for r in sink.records)


@pytest.mark.usefixtures("instrumented")
async def test_an_invoke_body_read_for_its_usage_reads_the_same_for_the_caller(bedrock_stub, sink):
    async with client(bedrock_stub) as bedrock:
        first = await (await bedrock.invoke_model(modelId=CLAUDE, body=ANTHROPIC_BODY))["body"].read()
        second = await (await bedrock.invoke_model(modelId=CLAUDE, body=ANTHROPIC_BODY))["body"].text()

    assert json.loads(first) == json.loads(second) and json.loads(first)["content"]
    assert len(sink.records) == 2


@pytest.mark.usefixtures("instrumented")
async def test_a_refused_aiobotocore_call_is_a_failed_record_and_the_error_reaches_the_caller(bedrock_stub, sink):
    from botocore.exceptions import ClientError

    async with client(bedrock_stub) as bedrock:
        with pytest.raises(ClientError) as raised:
            await bedrock.converse(modelId="does-not-exist", messages=MESSAGES)

    assert raised.value.response["Error"]["Code"] == "ValidationException"
    (record,) = sink.records
    assert (record.outcome, record.error_type, record.cost_usd) == ("error", "ValidationException", 0.0)


async def test_lightrag_on_its_bedrock_binding_attributes_each_call_to_its_stage(
    tmp_path, bedrock_stub, stub, instrumented, instrument_openai, sink, monkeypatch
):
    from lightrag.llm.bedrock import bedrock_complete
    from lightrag.llm.openai import openai_embed

    embed = partial(openai_embed.func, model="text-embedding-3-small", base_url=stub.base_url, api_key=FAKE_API_KEY)
    rag = LightRAG(
        working_dir=str(tmp_path / "rag"),
        workspace=f"bindings_bedrock_{os.urandom(6).hex()}",
        llm_model_func=bedrock_complete,
        llm_model_name=NOVA,
        llm_model_kwargs={"endpoint_url": bedrock_stub.origin, "aws_region": "us-east-1"},
        embedding_func=EmbeddingFunc(embedding_dim=32, func=embed, send_dimensions=True),
        tokenizer=Tokenizer("whitespace", WhitespaceTokenizer()),
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": -1.0},
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    await rag.initialize_storages()
    try:
        await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
        question = "Who works with Acme on rockets?"
        answers = [await rag.aquery(question, param=QueryParam(mode=mode)) for mode in ("local", "naive")]
    finally:
        await rag.finalize_storages()

    bedrock = [r for r in sink.records if r.provider == "aws.bedrock" and r.operation != CACHE_HIT]
    assert bedrock and {r.request_model for r in bedrock} == {NOVA}
    assert None not in {r.attributes.get("spendwatch.lightrag.stage") for r in sink.records}
    extraction = [r for r in bedrock if r.attributes["spendwatch.lightrag.stage"] == "extraction"]
    assert {r.attributes.get("spendwatch.lightrag.doc_id") for r in extraction} == set(DOCUMENTS)
    assert {r.attributes["spendwatch.lightrag.stage"] for r in bedrock} >= {
        "extraction",
        "gleaning",
        "keywords",
        "answer",
    }
    assert all(answer.startswith(LIGHTRAG_ANSWER_PREFIX) for answer in answers)  # the stub's replies built a graph
