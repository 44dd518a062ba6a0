"""Shared fixtures: a real OpenTelemetry SDK pipeline, the local OpenAI-compatible stub, and instrumented clients."""

from __future__ import annotations

import os

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from spendwatch.demo.stub import StubServer
from spendwatch.instrumentation import UsageRecord, register_sink, unregister_sink
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from tests.disks import *  # noqa: F403 - small_disk, a tmpfs a test fills or makes read-only
from tests.servers import *  # noqa: F403 - the real PostgreSQL / Prometheus / Alertmanager fixtures

FAKE_API_KEY = "sk-spendwatch-test-key-3f9c1a7e"

# The test extra installs the official openai-v2 instrumentation (a producer of other instrumentations' spans for the
# span-ingestion tests). A user would have one OpenAI instrumentation: opentelemetry-instrument in the tests' child
# processes loads only spendwatch's, unless a test says otherwise.
OTHER_OPENAI_INSTRUMENTATION = "openai"
os.environ.setdefault("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", OTHER_OPENAI_INSTRUMENTATION)


class CollectingSink:
    """A real usage sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)


@pytest.fixture
def span_exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return provider


@pytest.fixture
def metric_reader():
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader):
    return MeterProvider(metric_readers=[metric_reader])


@pytest.fixture
def sink():
    collecting = CollectingSink()
    register_sink(collecting)
    yield collecting
    unregister_sink(collecting)


@pytest.fixture
def instrument_openai(tracer_provider, meter_provider, sink):
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture(scope="session")
def stub_server():
    with StubServer() as server:
        yield server


@pytest.fixture
def stub(stub_server):
    stub_server.reset()
    return stub_server


@pytest.fixture
def client(stub):
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)


@pytest.fixture
def async_client(stub):
    return openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, tmp_path) -> str:
    """Where an empty ledger lives: a SQLite file, or a fresh database on the real PostgreSQL server."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "ledger.db")


@pytest.fixture
def ledger(ledger_location):
    """An empty ledger in UTC, on each backend."""
    from zoneinfo import ZoneInfo

    from spendwatch.exporter import Ledger
    from spendwatch.exporter.ledger import open_backend

    opened = Ledger(open_backend(ledger_location), ZoneInfo("UTC"))
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def _no_runtime_directory_of_the_session(monkeypatch):
    """A journal's fallback chain starts at $XDG_RUNTIME_DIR when it is set (a desktop session sets it, CI does
    not): tests that want one set their own, so where a journal goes does not depend on who runs the tests."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


@pytest.fixture(autouse=True)
def _nothing_stays_attached():
    """Whatever a test attached (spendwatch.configure) or instrumented is undone before the next test."""
    yield
    from spendwatch import runtime
    from spendwatch.instrumentation.anthropic_sdk import AnthropicInstrumentor
    from spendwatch.instrumentation.bedrock_sdk import BedrockInstrumentor
    from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor
    from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor

    runtime.detach()
    instrumentors = (OpenAIInstrumentor(), LightRAGInstrumentor(), AnthropicInstrumentor(), GoogleGenAIInstrumentor())
    for instrumentor in (*instrumentors, BedrockInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
