"""The variants the benchmark compares: the bare SDK, each peer instrumentation, and spendwatch.

Every variant, bare included, gets the same OpenTelemetry SDK: a real ``TracerProvider`` whose
``SimpleSpanProcessor`` hands spans to an exporter that only counts them (so we measure instrumentation, not
export, and no background thread competes for the two cores), and a ``MeterProvider`` with an
``InMemoryMetricReader``; both are set as global before instrumenting. ``setup(name)`` returns the exporter
and the variant's package version, or raises :class:`Unavailable`.

OpenLIT is not a variant: it requires ``openai<3`` (installing it downgrades the SDK under test), pulls in boto3,
anthropic, grpcio and a dozen web-framework instrumentations, and fetches its price list from the internet in
``openlit.init()``.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

if TYPE_CHECKING:
    from spendwatch.exporter import LedgerSink

__all__ = [
    "BARE",
    "CONTROL",
    "DEFERRED",
    "FLOOR",
    "WORK_FLOOR",
    "PEERS",
    "SPENDWATCH",
    "VARIANTS",
    "CountingSpanExporter",
    "Unavailable",
    "chosen",
    "setup",
]


class Unavailable(Exception):
    """The variant cannot run here: not installed, fails to import, or refuses to instrument."""


class CountingSpanExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _instrument(module: str, distribution: str) -> Callable[[], str]:
    def setup() -> str:
        try:
            instrumentor = importlib.import_module(module).OpenAIInstrumentor()
        except Exception as exc:  # an ImportError, or a peer broken against this SDK version
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        instrumentor.instrument()
        if not instrumentor.is_instrumented_by_opentelemetry:
            raise Unavailable("instrument() declined (dependency conflict with the installed openai?)")
        return _version(distribution)

    return setup


def _with_env(setup: Callable[[], str], **env: str) -> Callable[[], str]:
    def setup_with_env() -> str:
        os.environ.update(env)
        return setup()

    return setup_with_env


def _spendwatch_with_ledger() -> str:
    """spendwatch as a user runs it: every call also journaled into a real SQLite ledger (drained by its thread)."""
    installed = _instrument("spendwatch.instrumentation.openai_sdk", "spendwatch")()
    from zoneinfo import ZoneInfo

    from spendwatch.exporter import Ledger, LedgerSink
    from spendwatch.exporter.ledger import open_backend
    from spendwatch.instrumentation import register_sink

    directory = tempfile.mkdtemp(prefix="spendwatch-bench-")
    ledger = Ledger(open_backend(f"{directory}/ledger.db"), ZoneInfo("UTC"))
    sink = LedgerSink(ledger, f"{directory}/ledger.db.journal")
    register_sink(sink)
    # A full run starts a worker per round: each would leave megabytes of ledger behind in the temporary directory.
    atexit.register(_remove_ledger, sink, directory)
    return installed


def _remove_ledger(sink: LedgerSink, directory: str) -> None:
    from spendwatch.instrumentation import unregister_sink

    unregister_sink(sink)  # as spendwatch's own detach does: no late call may reach a closed journal
    sink.close()
    sink.ledger.close()
    shutil.rmtree(directory, ignore_errors=True)


def _reference(module: str, distribution: str) -> Callable[[], str]:
    def setup() -> str:
        importlib.import_module(module).instrument()
        return _version(distribution)

    return setup


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


BARE = "bare"
CONTROL = "bare-again"  # an A/A control: a second bare process, so the table shows its own noise floor
SPENDWATCH = ("spendwatch", "spendwatch+ledger")
PEERS = ("openai-v2", "openllmetry", "openllmetry-nocontent")
FLOOR = "span-floor"  # a reference, not a peer: the OpenTelemetry SDK's own span work (bench/span_floor.py)
WORK_FLOOR = "work-floor"  # a reference too: span-floor plus the least work our job needs (bench/work_floor.py)
_OPENLLMETRY = _instrument("opentelemetry.instrumentation.openai", "opentelemetry-instrumentation-openai")
VARIANTS: dict[str, Callable[[], str]] = {
    BARE: lambda: _version("openai"),
    CONTROL: lambda: _version("openai"),
    "openai-v2": _instrument(
        "opentelemetry.instrumentation.openai_v2", "opentelemetry-instrumentation-openai-v2"
    ),  # the official contrib instrumentation
    "openllmetry": _OPENLLMETRY,  # records prompts and completions on spans by default
    "openllmetry-nocontent": _with_env(_OPENLLMETRY, TRACELOOP_TRACE_CONTENT="false"),  # like the others' default
    "spendwatch": _instrument("spendwatch.instrumentation.openai_sdk", "spendwatch"),
    "spendwatch+ledger": _spendwatch_with_ledger,  # plus the durable ledger behind it, as configure() attaches
    FLOOR: _reference("bench.span_floor", "opentelemetry-sdk"),
    WORK_FLOOR: _reference("bench.work_floor", "spendwatch"),
}


def _flush_spendwatch_deferred() -> int:
    from spendwatch.instrumentation.background import flush_all

    return flush_all()


# Work a variant does for a call after it returned, on a background thread: a callable that does it now and says for
# how many calls, so the worker can time it per call (the median call time cannot show it).
DEFERRED: dict[str, Callable[[], int]] = dict.fromkeys(SPENDWATCH, _flush_spendwatch_deferred)


def chosen(variants_option: str) -> list[str]:
    """The variants a ``--variants a,b`` option names, bare first (always); exits naming any unknown one."""
    names = [BARE, *[name for name in variants_option.split(",") if name and name != BARE]]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return names


def setup(name: str) -> tuple[CountingSpanExporter, str]:
    exporter = CountingSpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return exporter, VARIANTS[name]()
