"""LightRAG on its own Ollama binding, fully offline: a self-hosted model's calls, counted and attributed.

LightRAG runs with its stock ``ollama_model_complete`` and ``ollama_embed`` (the real ``ollama`` client) against
spendwatch's Ollama stub (:mod:`spendwatch.demo.ollama_stub`), which answers LightRAG's prompts in the formats it
parses. The LightRAG instrumentor records the ``ollama.AsyncClient`` calls (patched when ``lightrag.llm.ollama`` is
imported): provider ``ollama``, tokens from Ollama's ``prompt_eval_count``/``eval_count``, unpriced unless a price
override names the model.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from functools import partial
from zoneinfo import ZoneInfo

import pytest

try:
    import lightrag  # noqa: F401
    import ollama
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI installs the test extra, which includes lightrag-hku and ollama
    pytest.skip("lightrag-hku or ollama is not installed", allow_module_level=True)

from lightrag import LightRAG, QueryParam
from lightrag.utils import EmbeddingFunc, Tokenizer

from spendwatch.demo._lightrag import WhitespaceTokenizer
from spendwatch.demo._stub_responses import LIGHTRAG_ANSWER_PREFIX
from spendwatch.demo.ollama_stub import OllamaStub
from spendwatch.exporter.stage_report import stage_rows
from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor
from spendwatch.instrumentation.lightrag_hku.scopes import CACHE_HIT
from spendwatch.instrumentation.pricing import PriceTable, load_overrides

MODEL = "llama3.2"
EMBEDDING_MODEL = "bge-m3"
DIMENSIONS = 32
MODES = ("local", "global", "hybrid", "mix", "naive")
DOCUMENTS = {
    "doc-acme": "Alice founded Acme in Berlin. Acme builds rockets with Bob as chief engineer.",
    "doc-globex": "Bob later joined Globex in Paris. Globex competes with Acme on rockets.",
}
QUESTION = "Who works with Acme on rockets?"
MESSAGES = [{"role": "user", "content": "Say something short"}]


@pytest.fixture(scope="module")
def ollama_stub():
    with OllamaStub() as server:
        yield server


@pytest.fixture
def instrumented(tracer_provider, meter_provider, sink, ollama_stub):
    ollama_stub.reset()
    instrumentor = LightRAGInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    import lightrag.llm.ollama  # noqa: F401 - the import that patches the ollama client

    yield instrumentor
    instrumentor.uninstrument()


def make_rag(working_dir, origin: str) -> LightRAG:
    from lightrag.llm.ollama import ollama_embed, ollama_model_complete

    embed = partial(ollama_embed.func, embed_model=EMBEDDING_MODEL, host=origin, embedding_dim=DIMENSIONS)
    return LightRAG(
        working_dir=str(working_dir),
        workspace=f"bindings_ollama_{os.urandom(6).hex()}",  # LightRAG shares state per workspace process-wide
        llm_model_func=ollama_model_complete,
        llm_model_name=MODEL,
        llm_model_kwargs={"host": origin},
        embedding_func=EmbeddingFunc(embedding_dim=DIMENSIONS, func=embed),
        tokenizer=Tokenizer("whitespace", WhitespaceTokenizer()),
        force_llm_summary_on_merge=2,
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": -1.0},
    )


@pytest.fixture
async def rag(tmp_path, ollama_stub, instrumented):
    instance = make_rag(tmp_path / "rag", ollama_stub.origin)
    await instance.initialize_storages()
    yield instance
    await instance.finalize_storages()


async def index_and_ask(rag: LightRAG) -> list[str]:
    await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
    return [await rag.aquery(QUESTION, param=QueryParam(mode=mode)) for mode in MODES]


def stage_of(record) -> str | None:
    return record.attributes.get("spendwatch.lightrag.stage")


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


# --- LightRAG on Ollama ---------------------------------------------------------------------------------------------


async def test_each_ollama_call_is_counted_unpriced_with_its_stage_and_document(rag, sink, ollama_stub):
    answers = await index_and_ask(rag)

    assert all(answer.startswith(LIGHTRAG_ANSWER_PREFIX) for answer in answers)  # the graph was real
    calls = [record for record in sink.records if record.operation != CACHE_HIT]
    assert {record.provider for record in calls} == {"ollama"}
    assert sorted((r.request_model, r.input_tokens, r.output_tokens) for r in calls) == sorted(ollama_stub.usage_log)
    assert all(record.cost_usd is None and record.pricing == "unpriced" for record in calls)  # self-hosted: not $0
    assert None not in {stage_of(record) for record in sink.records}
    chats = [record for record in calls if record.operation == "chat"]
    assert {stage_of(record) for record in chats} >= {"extraction", "gleaning", "summary", "keywords", "answer"}
    assert {stage_of(record) for record in calls if record.operation == "embeddings"} == {"embedding"}
    extraction = [record for record in chats if stage_of(record) in ("extraction", "gleaning")]
    assert {record.attributes.get("spendwatch.lightrag.doc_id") for record in extraction} == set(DOCUMENTS)


async def test_the_insert_span_rolls_up_the_ollama_calls_tokens(rag, sink, span_exporter):
    await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))

    (insert,) = [span for span in span_exporter.get_finished_spans() if span.name == "lightrag.insert"]
    calls = [record for record in sink.records if record.operation != CACHE_HIT]
    assert insert.attributes["spendwatch.lightrag.llm_calls"] == len(calls)
    assert insert.attributes["spendwatch.lightrag.input_tokens"] == sum(r.input_tokens for r in calls)
    assert insert.attributes["spendwatch.lightrag.output_tokens"] == sum(r.output_tokens for r in calls)
    spans = {span.context.span_id: span for span in span_exporter.get_finished_spans()}
    for record in calls:
        span = spans[record.span_id]
        assert span.name == f"{record.operation} {record.request_model}"
        assert span.attributes["gen_ai.provider.name"] == "ollama"
        assert span.attributes["gen_ai.usage.input_tokens"] == record.input_tokens


async def test_a_price_override_prices_the_ollama_model_and_the_ledger_holds_it_by_stage(
    tmp_path, ollama_stub, instrumented, sink, ledger_sink
):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(
        f'[models."{MODEL}"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
        f'[models."{EMBEDDING_MODEL}"]\ninput_per_mtok = 0.5\noutput_per_mtok = 0\n'
    )
    instrumented.use_configured_prices(PriceTable(load_overrides(prices_file)))
    rag = make_rag(tmp_path / "rag", ollama_stub.origin)
    await rag.initialize_storages()
    try:
        await index_and_ask(rag)
    finally:
        await rag.finalize_storages()
    assert ledger_sink.flush()

    rates = {MODEL: (1.0e-6, 2.0e-6), EMBEDDING_MODEL: (0.5e-6, 0.0)}
    expected = sum(
        rates[m][0] * tokens_in + rates[m][1] * tokens_out for m, tokens_in, tokens_out in ollama_stub.usage_log
    )
    ledger, today = ledger_sink.ledger, datetime.now(UTC).date()
    assert ledger.spend(today, date.fromordinal(today.toordinal() + 1)) == pytest.approx(expected, rel=1e-9)
    by_stage = {row["stage"]: row for row in stage_rows(ledger, today, today, by="stage")}
    assert sum(row["cost_usd"] for row in by_stage.values()) == pytest.approx(expected, rel=1e-9)
    assert {row["document"] for row in stage_rows(ledger, today, today, by="document")} == set(DOCUMENTS)


# --- the ollama client's own calls ----------------------------------------------------------------------------------


async def test_a_streamed_chat_passes_every_chunk_and_is_one_call_with_the_last_chunks_counts(
    instrumented, ollama_stub, sink
):
    client = ollama.AsyncClient(host=ollama_stub.origin)
    chunks = [chunk async for chunk in await client.chat(model=MODEL, messages=MESSAGES, stream=True)]

    assert "".join(chunk.message.content for chunk in chunks) == (
        "This is a test reply from the spendwatch Ollama stub and it"
    )
    assert chunks[-1].done and not any(chunk.done for chunk in chunks[:-1])
    ((model, tokens_in, tokens_out),) = ollama_stub.usage_log
    (record,) = sink.records
    assert (record.operation, record.request_model, record.outcome) == ("chat", model, "success")
    assert (record.input_tokens, record.output_tokens) == (tokens_in, tokens_out)


async def test_a_stream_closed_early_is_one_call_and_a_server_error_is_a_failed_call_raised_unchanged(
    instrumented, ollama_stub, sink
):
    client = ollama.AsyncClient(host=ollama_stub.origin)
    stream = await client.chat(model=MODEL, messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.aclose()
    with pytest.raises(ollama.ResponseError) as raised:
        await client.chat(model="stub-error-500", messages=MESSAGES)

    assert raised.value.status_code == 500 and "model runner crashed" in str(raised.value)
    closed, failed = sink.records
    assert (closed.outcome, closed.request_model, closed.estimated) == ("success", MODEL, True)  # no counts seen
    assert (failed.outcome, failed.error_type) == ("error", "ResponseError")


async def test_uninstrument_leaves_the_ollama_client_unrecorded(instrumented, ollama_stub, sink):
    instrumented.uninstrument()
    client = ollama.AsyncClient(host=ollama_stub.origin)

    response = await client.chat(model=MODEL, messages=MESSAGES)

    assert response.eval_count == 12 and not sink.records
    assert not hasattr(ollama.AsyncClient.chat, "__wrapped__")
