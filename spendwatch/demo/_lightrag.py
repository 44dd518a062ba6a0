"""The LightRAG part of ``spendwatch demo``: what indexing and querying a real LightRAG cost, stage by stage.

When ``lightrag-hku`` is installed (``pip install 'spendwatch[lightrag]'``), :func:`run` builds a LightRAG in a
temporary directory with its stock OpenAI functions (``gpt_4o_mini_complete``, ``openai_embed``) pointed at the demo's
stub, which answers LightRAG's extraction and keyword prompts in the formats LightRAG parses (so the knowledge graph
is real). It indexes a few short documents under ``spendwatch.category("literature_review")``, queries in a few
modes, repeats one query (a free LLM-cache hit), and prints the spend from the ledger by stage and by document, and
what the cache saved. Run under ``opentelemetry-instrument``, the ``spendwatch_lightrag`` instrumentor is already
active. Without LightRAG it prints one line saying how to get it.

:class:`WhitespaceTokenizer` (one token per word, as the stub counts them) stands in for tiktoken, which would
download its encodings; the tests use it too.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
import uuid
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import spendwatch

__all__ = ["DOCUMENTS", "QUERIES", "SKIPPED", "WhitespaceTokenizer", "make_rag", "run"]

SKIPPED = "LightRAG workload skipped: pip install 'spendwatch[lightrag]' to see what indexing and queries cost"
CATEGORY = "literature_review"
LLM_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDING_DIM = 32
DOCUMENTS = {
    "paper-smith-2021": "Smith annotated Glucose in Plasma with an Orbitrap. Smith matched each spectrum against HMDB.",
    "paper-chen-2023": "Chen confirmed Glucose and Fructose with Orbitrap spectra. Chen cites Smith and MassBank.",
}
# (question, mode): the last repeats the first, so LightRAG answers it from its LLM cache.
QUERIES = (
    ("Which papers identify Glucose with an Orbitrap?", "hybrid"),
    ("Which databases did Smith use?", "local"),
    ("Which papers identify Glucose with an Orbitrap?", "naive"),
    ("Which papers identify Glucose with an Orbitrap?", "hybrid"),
)


class WhitespaceTokenizer:
    """One token per whitespace-separated word: LightRAG needs ``encode``/``decode``, and tiktoken would download."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []
        self._lock = threading.Lock()

    def encode(self, content: str) -> list[int]:
        with self._lock:
            return [self._id(word) for word in content.split()]

    def _id(self, word: str) -> int:
        if word not in self._ids:
            self._ids[word] = len(self._words)
            self._words.append(word)
        return self._ids[word]

    def decode(self, tokens: list[int]) -> str:
        return " ".join(self._words[token] for token in tokens)

    def __deepcopy__(self, memo: dict) -> WhitespaceTokenizer:  # LightRAG deep-copies its config
        return self


def make_rag(working_dir: str | Path, base_url: str, api_key: str) -> Any:
    """A LightRAG on the stock OpenAI functions, talking to ``base_url``, small and download-free."""
    from lightrag import LightRAG
    from lightrag.llm.openai import gpt_4o_mini_complete, openai_embed
    from lightrag.utils import EmbeddingFunc, Tokenizer

    embed = partial(openai_embed.func, model=EMBEDDING_MODEL, base_url=base_url, api_key=api_key)
    return LightRAG(
        working_dir=str(working_dir),
        # LightRAG keeps pipeline and storage state per workspace in process-wide shared storage.
        workspace=f"spendwatch_{uuid.uuid4().hex[:12]}",
        llm_model_func=gpt_4o_mini_complete,
        llm_model_name=LLM_MODEL,
        llm_model_kwargs={"base_url": base_url, "api_key": api_key},
        embedding_func=EmbeddingFunc(embedding_dim=EMBEDDING_DIM, func=embed, send_dimensions=True),
        tokenizer=Tokenizer("whitespace", WhitespaceTokenizer()),
        force_llm_summary_on_merge=2,  # summarise as soon as an entity has two descriptions (LightRAG warns)
        # The stub's vectors are hashes, not meanings: let every stored vector match so every mode retrieves.
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": -1.0},
    )


def lightrag_version() -> str | None:
    """The installed lightrag-hku's version, or None when ``import lightrag`` fails."""
    try:
        import lightrag  # noqa: F401
    except ImportError:
        return None
    try:
        return importlib.metadata.version("lightrag-hku")
    except importlib.metadata.PackageNotFoundError:
        return getattr(lightrag, "__version__", "unknown")


def run(ledger: Any, flush: Any) -> None:
    """Index and query with LightRAG, then print what it cost from ``ledger`` (``flush()`` drains the sink)."""
    version = lightrag_version()
    if version is None:
        print(SKIPPED + "\n")
        return
    _quiet_lightrag()
    print(f"LightRAG workload: lightrag-hku {version} (installed)")
    today = datetime.now(ledger.tz).date()
    workdir = tempfile.mkdtemp(prefix="spendwatch-demo-lightrag-")
    try:
        base_url, api_key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
        asyncio.run(_workload(make_rag(workdir, base_url, api_key)))
    except Exception as error:  # noqa: BLE001 - e.g. SPENDWATCH_ENFORCE=block refusing calls: say so, go on
        print(f"  LightRAG workload stopped: {type(error).__name__}: {error}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    flush()
    print_costs(ledger, today)


async def _workload(rag: Any) -> None:
    from lightrag import QueryParam

    await rag.initialize_storages()
    try:
        with spendwatch.category(CATEGORY):
            await rag.ainsert(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
            graph = rag.chunk_entity_relation_graph
            nodes, edges = len(await graph.get_all_nodes()), len(await graph.get_all_edges())
            for question, mode in QUERIES:
                await rag.aquery(question, param=QueryParam(mode=mode))
    finally:
        await rag.finalize_storages()
    modes = ", ".join(dict.fromkeys(mode for _, mode in QUERIES))
    print(f"  indexed {len(DOCUMENTS)} documents ({nodes} entities, {edges} relations) in category {CATEGORY!r}")
    print(f"  asked {len(QUERIES)} questions ({modes}), the last one a repeat; today's LightRAG spend in the ledger:")


def print_costs(ledger: Any, today: date) -> None:
    """Today's LightRAG spend in ``ledger``: by stage (with cache hits), by document, and what the cache saved."""
    from spendwatch.exporter.stage_report import stage_rows

    stages = stage_rows(ledger, today, today, by="stage")
    documents = stage_rows(ledger, today, today, by="document")
    print(
        f"  {'stage':<12}{'calls':>6}{'tokens in':>11}{'out':>6}{'cost USD':>13}{'cache hits':>12}{'avoided USD':>13}"
    )
    for row in stages:
        tokens = f"{row['input_tokens']:>11}{row['output_tokens']:>6}"
        cache = f"{row['cache_hits']:>12}{row['avoided_usd']:>13.8f}"
        print(f"  {row['stage']:<12}{row['requests']:>6}{tokens}{row['cost_usd']:>13.8f}{cache}")
    total = sum(row["cost_usd"] for row in stages)
    print(f"  {'total':<12}{sum(row['requests'] for row in stages):>6}{'':>17}{total:>13.8f}")
    print("  indexing by document: " + ", ".join(f"{row['document']} ${row['cost_usd']:.8f}" for row in documents))
    hits, avoided = sum(row["cache_hits"] for row in stages), sum(row["avoided_usd"] for row in stages)
    print(f"  LightRAG's LLM cache: {hits} hits, ${avoided:.8f} not spent (a repeated question costs nothing)\n")


def _quiet_lightrag() -> None:
    """Keep the demo's output short: LightRAG logs each step at INFO (and warns about the demo's small settings), and
    its default vector store (``nano_vectordb``) calls ``logging.basicConfig(level=INFO)`` on import, which would
    print every HTTP request; import it now and undo that."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import lightrag.kg.nano_vector_db_impl  # noqa: F401
    except ImportError:  # another LightRAG layout: it just logs more
        pass
    finally:
        for handler in [handler for handler in root.handlers if handler not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    logging.getLogger("lightrag").setLevel(logging.ERROR)
