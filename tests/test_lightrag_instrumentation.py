"""The LightRAG instrumentation on a real LightRAG, fully offline.

LightRAG (``lightrag-hku``) runs with its stock OpenAI functions (``gpt_4o_mini_complete``, ``openai_embed``) and
the real ``openai`` SDK, talking HTTP to spendwatch's stub (:mod:`spendwatch.demo.stub`), which answers LightRAG's
prompts in the formats it parses (entity extraction in its delimiter format, keywords as JSON), so the knowledge graph
is real and every query mode does its real work. The LightRAG is the demo's
(:func:`spendwatch.demo._lightrag.make_rag`): a whitespace tokenizer stands in for tiktoken, so nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from opentelemetry.trace import SpanKind

try:
    import lightrag  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI installs the test extra, which includes lightrag-hku: a missing one is a broken environment
    pytest.skip("lightrag-hku is not installed", allow_module_level=True)

from lightrag import LightRAG, QueryParam

import spendwatch
from spendwatch.demo import _lightrag as demo_lightrag
from spendwatch.demo._stub_responses import LIGHTRAG_ANSWER_PREFIX
from spendwatch.demo.stub import ReportedUsage, StubServer
from spendwatch.exporter.stage_report import stage_rows
from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor
from spendwatch.instrumentation.lightrag_hku.patch import llm_cache_stage
from spendwatch.instrumentation.lightrag_hku.scopes import CACHE_HIT
from spendwatch.instrumentation.pricing import PriceTable, load_overrides
from spendwatch.instrumentation.records import UsageRecord
from tests.conftest import FAKE_API_KEY

PRICES = PriceTable()
MODES = ("local", "global", "hybrid", "mix", "naive")
DOCUMENTS = {
    "doc-acme": "Alice founded Acme in Berlin. Acme builds rockets with Bob as chief engineer.",
    "doc-globex": "Bob later joined Globex in Paris. Globex competes with Acme on rockets.",
    "doc-initech": "Carol audits Acme and Globex from Initech. Initech is based in Berlin near Acme.",
}
QUESTION = "Who works with Acme on rockets?"


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture
def lightrag_stub(stub) -> StubServer:
    """The stub (reset), which answers LightRAG's prompts; its ``usage_log`` holds every priced call's usage."""
    return stub


@pytest.fixture
def instrument_lightrag(instrument_openai, tracer_provider):
    instrumentor = LightRAGInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    yield instrumentor
    instrumentor.uninstrument()


def make_rag(working_dir, stub: StubServer) -> LightRAG:
    return demo_lightrag.make_rag(working_dir, stub.base_url, FAKE_API_KEY)


@pytest.fixture
async def rag(tmp_path, lightrag_stub, instrument_lightrag):
    instance = make_rag(tmp_path / "rag", lightrag_stub)
    await instance.initialize_storages()
    yield instance
    await instance.finalize_storages()


async def insert_documents(rag: LightRAG) -> str:
    return await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))


# --- helpers --------------------------------------------------------------------------------------------------------


def lightrag_spans(span_exporter, name: str) -> list:
    return [span for span in span_exporter.get_finished_spans() if span.name == name]


def children_of(span_exporter, parent) -> list:
    """Every span below ``parent`` in its trace."""
    spans = [s for s in span_exporter.get_finished_spans() if s.context.trace_id == parent.context.trace_id]
    by_id = {s.context.span_id: s for s in spans}

    def under(span) -> bool:
        while span.parent is not None:
            if span.parent.span_id == parent.context.span_id:
                return True
            span = by_id.get(span.parent.span_id)
            if span is None:
                return False
        return False

    return [s for s in spans if under(s)]


def priced_cost(usage_log: list[ReportedUsage]) -> float:
    return sum(PRICES.lookup(u.model).cost(u.input_tokens, u.output_tokens, u.cached_tokens) for u in usage_log)


def stage_of(record) -> str | None:
    return record.attributes.get("spendwatch.lightrag.stage")


# --- spans ----------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("rag")
async def test_insert_is_one_internal_span_with_the_openai_calls_as_client_children(rag, span_exporter):
    track_id = await insert_documents(rag)

    (insert,) = lightrag_spans(span_exporter, "lightrag.insert")
    children = children_of(span_exporter, insert)
    assert insert.kind is SpanKind.INTERNAL
    assert insert.attributes["spendwatch.lightrag.operation"] == "insert"
    assert insert.attributes["spendwatch.lightrag.track_id"] == track_id
    assert sorted(insert.attributes["spendwatch.lightrag.doc_ids"]) == sorted(DOCUMENTS)
    assert {span.name for span in children} >= {"chat gpt-4o-mini", "embeddings text-embedding-3-small"}
    assert all(span.kind is SpanKind.CLIENT for span in children)


async def test_each_query_mode_is_one_span_with_its_mode_and_its_calls_below(rag, span_exporter, sink):
    await insert_documents(rag)
    span_exporter.clear()

    for mode in MODES:
        answer = await rag.aquery(f"{QUESTION} ({mode})", param=QueryParam(mode=mode))
        assert answer == f"{LIGHTRAG_ANSWER_PREFIX}, Acme is in the retrieved context.", mode  # what was retrieved

    queries = lightrag_spans(span_exporter, "lightrag.query")
    assert [span.attributes["spendwatch.lightrag.query_mode"] for span in queries] == list(MODES)
    for query in queries:
        children = children_of(span_exporter, query)
        stages = {span.attributes.get("spendwatch.lightrag.stage") for span in children}
        assert stages >= {"answer", "embedding"}, query.attributes["spendwatch.lightrag.query_mode"]
        assert {span.attributes["spendwatch.lightrag.query_mode"] for span in children} == {
            query.attributes["spendwatch.lightrag.query_mode"]
        }


def test_sync_insert_and_query_make_one_span_each_not_two(tmp_path, lightrag_stub, instrument_lightrag, span_exporter):
    rag = make_rag(tmp_path / "rag", lightrag_stub)
    asyncio.run(rag.initialize_storages())
    try:
        rag.insert(DOCUMENTS["doc-acme"], ids="doc-acme")
        rag.query(QUESTION, param=QueryParam(mode="hybrid"))
    finally:
        asyncio.run(rag.finalize_storages())

    assert len(lightrag_spans(span_exporter, "lightrag.insert")) == 1
    assert len(lightrag_spans(span_exporter, "lightrag.query")) == 1
    assert not lightrag_spans(span_exporter, "lightrag.process_documents")


async def test_operation_span_rolls_up_its_calls_cost_and_tokens(rag, span_exporter, sink, lightrag_stub):
    await insert_documents(rag)

    (insert,) = lightrag_spans(span_exporter, "lightrag.insert")
    calls = [record for record in sink.records if record.operation != CACHE_HIT]
    assert insert.attributes["spendwatch.lightrag.llm_calls"] == len(calls) == len(lightrag_stub.usage_log)
    assert insert.attributes["spendwatch.lightrag.cost_usd"] == pytest.approx(sum(r.cost_usd for r in calls))
    assert insert.attributes["spendwatch.lightrag.input_tokens"] == sum(r.input_tokens for r in calls)
    assert "gen_ai.usage.cost" not in insert.attributes  # a roll-up, so trace-summing backends do not count twice


# --- stages and documents -------------------------------------------------------------------------------------------


async def test_every_call_is_attributed_to_a_stage(rag, sink):
    await insert_documents(rag)
    for mode in MODES:
        await rag.aquery(QUESTION, param=QueryParam(mode=mode))

    stages = {stage_of(record) for record in sink.records}
    assert None not in stages
    assert stages >= {"extraction", "gleaning", "summary", "embedding", "keywords", "answer"}
    assert {r.operation for r in sink.records if stage_of(r) == "embedding"} == {"embeddings"}
    assert {r.operation for r in sink.records if stage_of(r) != "embedding"} <= {"chat", CACHE_HIT}


async def test_indexing_cost_is_attributed_to_each_document(rag, sink):
    await insert_documents(rag)

    by_document: dict[str, float] = {}
    for record in sink.records:
        doc_id = record.attributes.get("spendwatch.lightrag.doc_id")
        by_document[doc_id] = by_document.get(doc_id, 0.0) + (record.cost_usd or 0.0)
    assert set(by_document) <= {*DOCUMENTS, None}
    assert all(by_document[doc_id] > 0 for doc_id in DOCUMENTS)
    extraction_docs = {
        r.attributes.get("spendwatch.lightrag.doc_id") for r in sink.records if stage_of(r) == "extraction"
    }
    assert extraction_docs == set(DOCUMENTS)


# --- cache hits -----------------------------------------------------------------------------------------------------


async def test_a_repeated_query_is_a_free_cache_hit_that_records_what_it_avoided(
    rag, sink, lightrag_stub, span_exporter
):
    await insert_documents(rag)
    param = QueryParam(mode="hybrid")
    await rag.aquery(QUESTION, param=param)
    first = [r for r in sink.records if r.attributes.get("spendwatch.lightrag.operation") == "query"]
    chats_before = sum(1 for u in lightrag_stub.usage_log if u.endpoint == "chat.completions")

    await rag.aquery(QUESTION, param=QueryParam(mode="hybrid"))

    second = [r for r in sink.records if r.attributes.get("spendwatch.lightrag.operation") == "query"][len(first) :]
    hits = [r for r in second if r.operation == CACHE_HIT]
    assert sum(1 for u in lightrag_stub.usage_log if u.endpoint == "chat.completions") == chats_before
    assert {stage_of(hit) for hit in hits} == {"keywords", "answer"}
    for hit in hits:
        assert (hit.cost_usd, hit.pricing, hit.outcome, hit.provider) == (0.0, "cache", "success", "lightrag")
        assert (hit.input_tokens, hit.output_tokens) == (0, 0)
        assert hit.attributes["spendwatch.lightrag.avoided_estimated"] == "false"
        (original,) = [r for r in first if r.operation == "chat" and stage_of(r) == stage_of(hit)]
        assert float(hit.attributes["spendwatch.lightrag.avoided_usd"]) == pytest.approx(original.cost_usd)
    query_spans = lightrag_spans(span_exporter, "lightrag.query")
    assert query_spans[-1].attributes["spendwatch.lightrag.cache_hits"] == 2
    assert query_spans[-1].attributes["spendwatch.lightrag.avoided_usd"] == pytest.approx(
        sum(float(hit.attributes["spendwatch.lightrag.avoided_usd"]) for hit in hits)
    )


def test_a_cache_hit_on_an_entry_made_by_another_process_estimates_what_it_avoided(
    tmp_path, lightrag_stub, instrument_openai, tracer_provider, sink
):
    """A new process (a fresh instrumentor) never saw the call that filled LightRAG's cache: it prices the hit
    from the cached prompt and answer, at the extraction role's model, and says it is an estimate."""
    hits = cache_hits_in_a_second_process(tmp_path, lightrag_stub, tracer_provider, sink)

    assert {stage_of(hit) for hit in hits} >= {"extraction", "gleaning"}
    assert not [u for u in lightrag_stub.usage_log if u.endpoint == "chat.completions"]  # all from the cache
    for hit in hits:
        assert hit.cost_usd == 0.0 and hit.request_model == "gpt-4o-mini"
        assert hit.attributes["spendwatch.lightrag.avoided_estimated"] == "true"
        assert float(hit.attributes["spendwatch.lightrag.avoided_usd"]) > 0
        assert int(hit.attributes["spendwatch.lightrag.avoided_input_tokens"]) > 0


def test_the_configured_price_table_handed_over_after_instrumenting_prices_what_hits_avoided(
    tmp_path, lightrag_stub, instrument_openai, tracer_provider, sink
):
    # What spendwatch.configure() does when opentelemetry-instrument instrumented first: $1 a token here.
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."gpt-4o-mini"]\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n')
    prices = PriceTable(load_overrides(prices_file))

    hits = cache_hits_in_a_second_process(tmp_path, lightrag_stub, tracer_provider, sink, prices)

    assert hits
    for hit in hits:
        tokens = sum(int(hit.attributes[f"spendwatch.lightrag.avoided_{kind}_tokens"]) for kind in ("input", "output"))
        assert float(hit.attributes["spendwatch.lightrag.avoided_usd"]) == pytest.approx(tokens)


def cache_hits_in_a_second_process(
    tmp_path, stub, tracer_provider, sink, prices: PriceTable | None = None
) -> list[UsageRecord]:
    """Index the Acme document, then index it again in a "second process" that only has the first one's LLM cache;
    the cache hits that second run recorded."""
    asyncio.run(index_once(make_rag(tmp_path / "first", stub), tracer_provider))
    second = make_rag(tmp_path / "second", stub)
    cache_file = next((tmp_path / "first").rglob("kv_store_llm_response_cache.json"))
    (tmp_path / "second" / second.workspace).mkdir(parents=True, exist_ok=True)
    shutil.copy(cache_file, tmp_path / "second" / second.workspace / cache_file.name)
    sink.records.clear()
    stub.reset()

    asyncio.run(index_once(second, tracer_provider, prices))

    return [r for r in sink.records if r.operation == CACHE_HIT]


async def index_once(rag: LightRAG, tracer_provider, configured_prices: PriceTable | None = None) -> None:
    """Index the Acme document under an instrumentor of its own (as a process of its own would)."""
    instrumentor = LightRAGInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    if configured_prices is not None:
        instrumentor.use_configured_prices(configured_prices)
    await rag.initialize_storages()
    try:
        await rag.ainsert(DOCUMENTS["doc-acme"], ids="doc-acme")
    finally:
        await rag.finalize_storages()
        instrumentor.uninstrument()


# --- attribution ----------------------------------------------------------------------------------------------------


async def test_the_category_reaches_calls_made_by_lightrag_workers_started_outside_it(rag, sink):
    # LightRAG's queue workers are long-lived tasks, started by the first call of each role: start them all here,
    # outside the category, so the calls below only get the category if it travels with each enqueued call.
    await rag.ainsert(DOCUMENTS["doc-acme"], ids="doc-acme")
    await rag.aquery(QUESTION, param=QueryParam(mode="mix"))
    outside = len(sink.records)

    with spendwatch.category("knowledge_base"):
        await rag.ainsert([DOCUMENTS["doc-globex"], DOCUMENTS["doc-initech"]], ids=["doc-globex", "doc-initech"])
        await rag.aquery("Where is Initech based?", param=QueryParam(mode="mix"))
        await rag.aquery(QUESTION, param=QueryParam(mode="mix"))  # answered from the cache

    inside = sink.records[outside:]
    assert {record.category for record in sink.records[:outside]} == {None}
    assert {record.category for record in inside} == {"knowledge_base"}
    assert {stage_of(record) for record in inside} >= {"extraction", "embedding", "keywords", "answer"}
    assert any(record.operation == CACHE_HIT for record in inside)


# --- the ledger -----------------------------------------------------------------------------------------------------


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


async def test_ledger_total_equals_the_servers_priced_calls_and_reports_by_stage(rag, ledger_sink, lightrag_stub):
    await insert_documents(rag)
    for mode in MODES:
        await rag.aquery(QUESTION, param=QueryParam(mode=mode))
    await rag.aquery(QUESTION, param=QueryParam(mode="mix"))  # a cache hit: free
    assert ledger_sink.flush()

    ledger = ledger_sink.ledger
    today = datetime.now(UTC).date()
    spent = ledger.spend(today, date.fromordinal(today.toordinal() + 1))
    assert spent == pytest.approx(priced_cost(lightrag_stub.usage_log), rel=1e-9)
    by_stage = {row["stage"]: row for row in stage_rows(ledger, today, today, by="stage")}
    assert sum(row["cost_usd"] for row in by_stage.values()) == pytest.approx(spent, rel=1e-9)
    assert sum(row["requests"] for row in by_stage.values()) == len(lightrag_stub.usage_log)
    assert by_stage["answer"]["cache_hits"] == 1 and by_stage["answer"]["avoided_usd"] > 0
    by_document = {row["document"]: row for row in stage_rows(ledger, today, today, by="document")}
    assert set(by_document) == set(DOCUMENTS)
    by_mode = {row["mode"]: row for row in stage_rows(ledger, today, today, by="mode")}
    assert set(by_mode) == set(MODES)


@pytest.mark.parametrize(
    ("cache_type", "history", "stage"),
    [
        ("extract", None, "extraction"),
        ("extract", [], "extraction"),
        ("extract", [{"role": "user", "content": "chunk"}, {"role": "assistant", "content": "rows"}], "gleaning"),
        ("summary", None, "summary"),
        ("parse_extract", None, "parse_extract"),
    ],
)
def test_llm_cache_stage_names_the_extraction_passes_and_keeps_other_cache_types(cache_type, history, stage):
    assert llm_cache_stage(cache_type, history) == stage


def test_stage_rows_count_cache_hits_apart_and_unpriced_calls_as_unpriced(tmp_path):
    from spendwatch.exporter import Ledger
    from spendwatch.exporter.ledger import LedgerEntry, open_backend

    def call(operation, cost, **attributes):
        attributes = {f"spendwatch.lightrag.{key}": value for key, value in attributes.items()}
        return UsageRecord(
            "openai",
            operation,
            "gpt-4o-mini",
            input_tokens=10,
            output_tokens=2,
            cost_usd=cost,
            start_time=time.time(),
            attributes=attributes,
        )

    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    records = [
        call("chat", 0.5, stage="extraction", doc_id="a"),
        call("chat", 0.25, stage="extraction", doc_id="b"),
        call("chat", None, stage="summary", doc_id="a"),
        call(CACHE_HIT, 0.0, stage="extraction", doc_id="a", avoided_usd="0.5"),
        call("chat", 1.0),  # not LightRAG's: no stage
    ]
    ledger.ingest([LedgerEntry(f"e{index}", record) for index, record in enumerate(records)])
    today = datetime.now(UTC).date()

    assert stage_rows(ledger, today, today, by="stage") == [
        {
            "stage": "extraction",
            "cost_usd": 0.75,
            "input_tokens": 20,
            "output_tokens": 4,
            "cache_read_tokens": 0,
            "requests": 2,
            "unpriced": 0,
            "cache_hits": 1,
            "avoided_usd": 0.5,
        },
        {
            "stage": "summary",
            "cost_usd": 0.0,
            "input_tokens": 10,
            "output_tokens": 2,
            "cache_read_tokens": 0,
            "requests": 1,
            "unpriced": 1,
            "cache_hits": 0,
            "avoided_usd": 0.0,
        },
    ]
    assert [row["document"] for row in stage_rows(ledger, today, today, by="document")] == ["a", "b"]
    with pytest.raises(ValueError, match="stage, document, mode"):
        stage_rows(ledger, today, today, by="model")
    ledger.close()


# --- uninstrument ---------------------------------------------------------------------------------------------------


async def test_uninstrument_restores_lightrag(
    tmp_path, lightrag_stub, instrument_openai, tracer_provider, span_exporter
):
    import lightrag.operate
    import lightrag.utils

    originals = (lightrag.utils.handle_cache, lightrag.operate.use_llm_func_with_cache, LightRAG.ainsert)
    instrumentor = LightRAGInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    assert lightrag.utils.handle_cache is not originals[0]
    instrumentor.uninstrument()

    assert (lightrag.utils.handle_cache, lightrag.operate.use_llm_func_with_cache, LightRAG.ainsert) == originals
    rag = make_rag(tmp_path / "rag", lightrag_stub)
    await rag.initialize_storages()
    try:
        await rag.ainsert(DOCUMENTS["doc-acme"], ids="doc-acme")
    finally:
        await rag.finalize_storages()
    assert not [span for span in span_exporter.get_finished_spans() if span.name.startswith("lightrag.")]
