"""LightRAG on its own Anthropic and Gemini bindings, fully offline: every call carries its stage and document.

LightRAG (``lightrag-hku``) runs with its stock ``anthropic_complete`` (the real ``anthropic`` SDK, embeddings through
``openai_embed``) or ``gemini_model_complete`` and ``gemini_embed`` (the real ``google-genai`` SDK), talking HTTP to
spendwatch's Anthropic, Gemini and OpenAI stubs, which answer LightRAG's prompts in the formats it parses, so the
knowledge graph is real. Stages reach those SDKs' calls through the OpenTelemetry context (the LightRAG instrumentor
puts them there, each SDK's instrumentor reads them when it starts a call), as they reach the OpenAI binding's.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from functools import partial
from zoneinfo import ZoneInfo

import pytest

try:
    import lightrag  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI installs the test extra, which includes lightrag-hku: a missing one is a broken environment
    pytest.skip("lightrag-hku is not installed", allow_module_level=True)

from lightrag import LightRAG, QueryParam
from lightrag.utils import EmbeddingFunc, Tokenizer

from spendwatch.demo._lightrag import WhitespaceTokenizer
from spendwatch.demo._stub_responses import LIGHTRAG_ANSWER_PREFIX
from spendwatch.demo.anthropic_stub import AnthropicStub
from spendwatch.demo.gemini_stub import GeminiStubServer
from spendwatch.exporter.stage_report import stage_rows
from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor
from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor
from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor
from spendwatch.instrumentation.lightrag_hku.scopes import CACHE_HIT
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import FAKE_API_KEY

PRICES = PriceTable()
CLAUDE = "claude-haiku-4-5"
GEMINI = "gemini-2.0-flash"
GEMINI_EMBEDDING = "gemini-embedding-001"
MODES = ("local", "global", "hybrid", "mix", "naive")
DOCUMENTS = {
    "doc-acme": "Alice founded Acme in Berlin. Acme builds rockets with Bob as chief engineer.",
    "doc-globex": "Bob later joined Globex in Paris. Globex competes with Acme on rockets.",
}
QUESTION = "Who works with Acme on rockets?"
OPERATION = {CLAUDE: "chat", GEMINI: "generate_content"}  # the GenAI conventions' operation names
INDEXING_STAGES = {"extraction", "gleaning", "summary", "embedding"}
QUERY_STAGES = {"keywords", "answer", "embedding"}


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_stub():
    with AnthropicStub() as server:
        yield server


@pytest.fixture(scope="module")
def gemini_stub():
    with GeminiStubServer() as server:
        yield server


@pytest.fixture
def instrumented(instrument_openai, tracer_provider, meter_provider):
    instrumentors = [AnthropicInstrumentor(), GoogleGenAIInstrumentor(), LightRAGInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield
    for instrumentor in reversed(instrumentors):
        instrumentor.uninstrument()


@pytest.fixture
def ledger_sink(tmp_path):
    from spendwatch.exporter import Ledger
    from spendwatch.exporter.ledger import open_backend
    from spendwatch.exporter.sink import LedgerSink
    from spendwatch.instrumentation import register_sink, unregister_sink

    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    register_sink(sink)
    yield sink
    unregister_sink(sink)
    sink.close()
    ledger.close()


def rag_on(backend: str, working_dir, servers: dict) -> LightRAG:
    """A small, download-free LightRAG on LightRAG's own binding for ``backend``, talking to the stubs."""
    if backend == "anthropic":
        from lightrag.llm.anthropic import anthropic_complete
        from lightrag.llm.openai import openai_embed

        llm, model, origin = anthropic_complete, CLAUDE, servers["anthropic"].origin
        embed = partial(openai_embed.func, model="text-embedding-3-small", base_url=servers["openai"].base_url)
        dimensions, send_dimensions = 32, True
    else:
        from lightrag.llm.gemini import gemini_embed, gemini_model_complete

        llm, model, origin = gemini_model_complete, GEMINI, servers["gemini"].origin
        embed = partial(gemini_embed.func, model=GEMINI_EMBEDDING, base_url=origin, embedding_dim=3)
        dimensions, send_dimensions = 3, False  # the Gemini stub's vectors
    return LightRAG(
        working_dir=str(working_dir),
        workspace=f"bindings_{backend}_{os.urandom(6).hex()}",  # LightRAG shares state per workspace process-wide
        llm_model_func=llm,
        llm_model_name=model,
        llm_model_kwargs={"base_url": origin, "api_key": FAKE_API_KEY},
        embedding_func=EmbeddingFunc(
            embedding_dim=dimensions, func=partial(embed, api_key=FAKE_API_KEY), send_dimensions=send_dimensions
        ),
        tokenizer=Tokenizer("whitespace", WhitespaceTokenizer()),
        force_llm_summary_on_merge=2,  # summarise as soon as an entity has two descriptions
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": -1.0},  # the stubs' vectors mean nothing
    )


@pytest.fixture(params=["anthropic", "gemini"])
async def rag(request, tmp_path, stub, anthropic_stub, gemini_stub, instrumented):
    anthropic_stub.reset()
    servers = {"openai": stub, "anthropic": anthropic_stub, "gemini": gemini_stub}
    instance = rag_on(request.param, tmp_path / "rag", servers)
    await instance.initialize_storages()
    yield instance
    await instance.finalize_storages()


async def index_and_ask(rag: LightRAG) -> list[str]:
    await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
    answers = [await rag.aquery(QUESTION, param=QueryParam(mode=mode)) for mode in MODES]
    answers.append(await rag.aquery(QUESTION, param=QueryParam(mode="mix")))  # a repeat: LightRAG's cache answers
    return answers


def provider_of(rag: LightRAG) -> str:
    return "anthropic" if rag.llm_model_name == CLAUDE else "gcp.gemini"


def stage_of(record) -> str | None:
    return record.attributes.get("spendwatch.lightrag.stage")


# --- tests ----------------------------------------------------------------------------------------------------------


async def test_every_call_of_the_binding_carries_its_stage_and_indexing_calls_their_document(rag, sink):
    answers = await index_and_ask(rag)

    assert all(answer.startswith(LIGHTRAG_ANSWER_PREFIX) for answer in answers)  # the graph was real
    calls = [record for record in sink.records if record.operation != CACHE_HIT]
    llm_calls = [record for record in calls if record.operation != "embeddings"]
    assert {(record.provider, record.operation) for record in llm_calls} == {
        (provider_of(rag), OPERATION[rag.llm_model_name])
    }
    assert None not in {stage_of(record) for record in sink.records}
    assert {stage_of(record) for record in llm_calls} >= {"extraction", "gleaning", "summary", "keywords", "answer"}
    assert {stage_of(record) for record in calls if record.operation == "embeddings"} == {"embedding"}
    extraction = [record for record in llm_calls if stage_of(record) in ("extraction", "gleaning")]
    assert {record.attributes.get("spendwatch.lightrag.doc_id") for record in extraction} == set(DOCUMENTS)
    queried = [record for record in llm_calls if stage_of(record) in ("keywords", "answer")]
    assert {record.attributes.get("spendwatch.lightrag.query_mode") for record in queried} == set(MODES)
    hits = [record for record in sink.records if record.operation == CACHE_HIT]
    assert "answer" in {stage_of(hit) for hit in hits}  # the repeated question
    assert all(float(hit.attributes["spendwatch.lightrag.avoided_usd"]) > 0 for hit in hits)


async def test_operation_spans_roll_up_the_bindings_calls(rag, sink, span_exporter):
    await index_and_ask(rag)

    operations = {"lightrag.insert": "insert", "lightrag.query": "query"}
    spans = [span for span in span_exporter.get_finished_spans() if span.name in operations]
    assert len(spans) == 1 + len(MODES) + 1
    for span in spans:
        ids = _descendant_ids(span_exporter, span)
        calls = [r for r in sink.records if r.span_id in ids and r.operation != CACHE_HIT]
        assert calls, span.name
        assert span.attributes["spendwatch.lightrag.llm_calls"] == len(calls)
        assert span.attributes["spendwatch.lightrag.cost_usd"] == pytest.approx(sum(r.cost_usd for r in calls))
        assert span.attributes["spendwatch.lightrag.input_tokens"] == sum(r.input_tokens for r in calls)
        assert span.attributes["spendwatch.lightrag.output_tokens"] == sum(r.output_tokens for r in calls)


def _descendant_ids(span_exporter, parent) -> set[int]:
    spans = [s for s in span_exporter.get_finished_spans() if s.context.trace_id == parent.context.trace_id]
    found, frontier = set(), {parent.context.span_id}
    while frontier:
        frontier = {s.context.span_id for s in spans if s.parent is not None and s.parent.span_id in frontier}
        found |= frontier
    return found


async def test_the_ledger_holds_each_call_priced_at_its_providers_price_by_stage_and_document(
    rag, sink, ledger_sink, anthropic_stub
):
    await index_and_ask(rag)
    assert ledger_sink.flush()

    ledger, today = ledger_sink.ledger, datetime.now(UTC).date()
    spent = ledger.spend(today, date.fromordinal(today.toordinal() + 1))
    calls = [record for record in sink.records if record.operation != CACHE_HIT]
    assert all(record.cost_usd is not None and record.pricing != "unpriced" for record in calls)
    assert spent == pytest.approx(sum(record.cost_usd for record in calls), rel=1e-9)
    llm_calls = [record for record in calls if record.operation != "embeddings"]
    price = PRICES.lookup(rag.llm_model_name, provider=provider_of(rag))
    expected = sum(price.cost(r.input_tokens, r.output_tokens) for r in llm_calls)
    assert sum(r.cost_usd for r in llm_calls) == pytest.approx(expected, rel=1e-9)
    if provider_of(rag) == "anthropic":  # what the server reported, token for token
        reported = [(u.input_tokens, u.output_tokens) for u in anthropic_stub.usage_log]
        assert sorted((r.input_tokens, r.output_tokens) for r in llm_calls) == sorted(reported)
    by_stage = {row["stage"]: row for row in stage_rows(ledger, today, today, by="stage")}
    assert set(by_stage) >= INDEXING_STAGES | QUERY_STAGES
    assert sum(row["cost_usd"] for row in by_stage.values()) == pytest.approx(spent, rel=1e-9)
    assert sum(row["requests"] for row in by_stage.values()) == len(calls)
    assert by_stage["answer"]["cache_hits"] >= 1
    assert {row["document"] for row in stage_rows(ledger, today, today, by="document")} == set(DOCUMENTS)
