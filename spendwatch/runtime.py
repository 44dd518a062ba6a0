"""Wiring: instrumentation → ledger sink → ledger → ``/metrics``, attached once per process.

``spendwatch.configure()`` and the ``opentelemetry-instrument`` hook both come here, so an app that does both is
still attached once. Nothing here runs on the call path.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spendwatch.exporter import LedgerSink, Settings, journal_directory, load_settings, open_ledger_later
from spendwatch.exporter.guard import BudgetGuard
from spendwatch.exporter.guard_rules import guard_config
from spendwatch.exporter.ledger import Ledger
from spendwatch.exporter.thresholds import ThresholdWatcher
from spendwatch.instrumentation import register_sink, unregister_sink
from spendwatch.instrumentation.admission import register_guard, unregister_guard
from spendwatch.instrumentation.background import flush_all
from spendwatch.instrumentation.pricing import PriceTable

__all__ = ["Runtime", "attach", "current", "detach"]

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_runtime: Runtime | None = None


@dataclass
class Runtime:
    """What one process attached: its settings, ledger, sink and (unless off) its share of the ``/metrics`` address:
    ``metrics.serving`` says whether this process serves it, ``metrics.holder`` who does instead, once known."""

    settings: Settings
    ledger: Ledger
    sink: LedgerSink
    prices: PriceTable
    metrics: Any = None
    registry: Any = None
    guard: Any = None
    thresholds: Any = None
    span_ingest: Any = None  # the SpanIngestProcessor of SPENDWATCH_INGEST_SPANS=on

    @property
    def metrics_server(self):
        """The ``/metrics`` server this process runs, or None (off, or another process serves the address)."""
        return self.metrics.server if self.metrics is not None else None

    def budget_statuses(self):
        from spendwatch.exporter.budgets import budget_statuses

        return budget_statuses(self.ledger, self.settings)


def current() -> Runtime | None:
    return _runtime


def attach(**settings: Any) -> Runtime:
    """Attach the exporter (and instrument what is installed) unless this process already did."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        resolved = load_settings(settings)
        prices = resolved.price_table()
        guard_rules = guard_config(resolved.raw.get("guard"), f"SPENDWATCH_CONFIG={resolved.config_path!r}")
        # The ledger connects on first use: an app starts whether or not its ledger can be reached or written now.
        ledger = open_ledger_later(resolved)
        sink = LedgerSink(ledger, journal_directory(resolved.ledger), memory_records=resolved.journal_memory_records)
        sink.service = _process_service()
        _record_startup(sink, resolved, prices)
        runtime = Runtime(resolved, ledger, sink, prices)
        runtime.thresholds = ThresholdWatcher(runtime.budget_statuses, record=_crossing_recorder(ledger))
        sink.after_drain.append(runtime.thresholds.check)
        if resolved.metrics_address is not None:
            _serve_metrics(runtime)
        register_sink(sink)
        if resolved.ingest_spans:
            runtime.span_ingest = _ingest_spans(sink, prices)
        if resolved.enforce == "block":
            count = sink.count_ledger_error  # the guard's ledger failures count with the sink's
            runtime.guard = BudgetGuard(ledger, resolved, prices, guard_rules, count_ledger_error=count)
            register_guard(runtime.guard)
        _instrument_installed(prices)
        atexit.register(detach)
        _runtime = runtime
        return runtime


def detach() -> None:
    """Drain what is journaled into the ledger and stop serving; the instrumentation stays as it is."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is None:
        return
    flush_all()  # the instrumentation's deferred work (dropped streams' calls) reaches the sink before it closes
    if runtime.guard is not None:
        unregister_guard(runtime.guard)
    unregister_sink(runtime.sink)
    if runtime.span_ingest is not None:
        runtime.span_ingest.active = False
    if runtime.metrics is not None:
        runtime.metrics.stop()
    runtime.sink.close()
    if runtime.guard is not None:
        runtime.guard.close()  # after the drain: the leases' costs are spend by now
    runtime.ledger.close()


def _process_service() -> str | None:
    """This process's service.name: from the tracer provider's resource, else from the environment the OpenTelemetry
    SDK reads (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) when no SDK provider is set yet."""
    from opentelemetry import trace

    from spendwatch.exporter.spans.records import service_name

    resource = getattr(trace.get_tracer_provider(), "resource", None)
    if resource is None:
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create()
    return service_name(resource.attributes)


def _ingest_spans(sink: LedgerSink, prices: PriceTable):
    """SPENDWATCH_INGEST_SPANS=on: price the GenAI spans other instrumentations make, on the app's tracer provider."""
    from opentelemetry import trace

    from spendwatch.exporter.spans.processor import SpanIngestProcessor

    provider = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        _logger.warning(
            "spendwatch: SPENDWATCH_INGEST_SPANS=on, but no OpenTelemetry SDK tracer provider is set yet; set it "
            "before spendwatch attaches for other instrumentations' GenAI spans to be priced"
        )
        return None
    processor = SpanIngestProcessor(sink, prices)
    provider.add_span_processor(processor)
    return processor


def _crossing_recorder(ledger):
    """Keeps each threshold crossing in the ledger's alert history (the first process to see it records it)."""
    import time

    from spendwatch.exporter.ledger.history import record_threshold_crossing

    return lambda status, level: record_threshold_crossing(ledger, status, level, at=time.time())


def _record_startup(sink: LedgerSink, settings: Settings, prices: PriceTable) -> None:
    """Chain this configuration into the audit trail, so what a process ran under is on record. The sink writes it
    once the ledger takes writes: a ledger that is down at start-up delays the record, it does not stop the app."""
    import hashlib
    import socket

    detail = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "config": settings.config_path,
        "enforce": settings.enforce,
        "timezone": settings.timezone.key,
        "thresholds": list(settings.thresholds),
        "categories": sorted(settings.categories),
        "budgets": [[b.name, b.period, b.limit_usd, b.category, b.model, b.service] for b in settings.budgets],
        "prices_file": settings.prices_file,
        "prices_data": prices.data_version,
    }
    try:
        if settings.prices_file:
            with open(settings.prices_file, "rb") as file:
                detail["prices_file_sha256"] = hashlib.sha256(file.read()).hexdigest()
    except OSError as error:  # the price file was read a moment ago; its hash is a nicety, not a reason to stop
        _logger.warning("spendwatch: cannot hash the price file %s (%s)", settings.prices_file, error)
    sink.when_reachable(lambda: sink.ledger.add_event("configuration_started", detail))


def _serve_metrics(runtime: Runtime) -> None:
    from prometheus_client import CollectorRegistry

    from spendwatch.exporter.collector import SpendCollector
    from spendwatch.exporter.metrics_endpoint import MetricsEndpoint

    settings = runtime.settings
    runtime.registry = CollectorRegistry()
    SpendCollector(
        runtime.ledger,
        categories=settings.categories,
        budget_statuses=runtime.budget_statuses,
        ledger_errors=runtime.sink.all_ledger_errors,  # every process's over this ledger, as serve shows
        records_dropped=runtime.sink.all_records_dropped,
        guard_decisions=runtime.ledger.guard_decisions,
        pricing_data_timestamp=runtime.prices.data_timestamp,
        before_collect=runtime.sink.flush,
        registry=runtime.registry,
    )
    # Serves if the address is free, else leaves it to whoever holds it (another worker over the same ledger).
    runtime.metrics = MetricsEndpoint(runtime.registry, settings)


DISABLED_ENV = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def instrumentation_disabled(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user turned instrumentor ``name`` off the OpenTelemetry way (by name, or all of them with ``*``)."""
    disabled = {entry.strip() for entry in environ.get(DISABLED_ENV, "").split(",")}
    return name in disabled or "*" in disabled


# (name in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, library it instruments, module, instrumentor class)
_INSTRUMENTORS = (
    ("spendwatch_openai", "openai", "spendwatch.instrumentation.openai_sdk", "OpenAIInstrumentor"),
    ("spendwatch_lightrag", "lightrag", "spendwatch.instrumentation.lightrag_hku", "LightRAGInstrumentor"),
    ("spendwatch_anthropic", "anthropic", "spendwatch.instrumentation.anthropic_sdk", "AnthropicInstrumentor"),
    ("spendwatch_bedrock", "botocore", "spendwatch.instrumentation.bedrock_sdk", "BedrockInstrumentor"),
    (
        "spendwatch_google_genai",
        "google.genai",
        "spendwatch.instrumentation.google_genai_sdk",
        "GoogleGenAIInstrumentor",
    ),
)


def _installed(library: str) -> bool:
    try:
        return importlib.util.find_spec(library) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is not installed (google.genai without google)
        return False


def _instrument_installed(prices: PriceTable) -> None:
    """Instrument each supported library that is installed, except those the user disabled the OpenTelemetry way.
    One that opentelemetry-instrument instrumented already, before spendwatch's settings were read, is handed the
    configured price table, so a config file's ``prices_file`` prices its calls too."""
    for name, library, module, class_name in _INSTRUMENTORS:
        if instrumentation_disabled(name) or not _installed(library):
            continue
        instrumentor = getattr(importlib.import_module(module), class_name)()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.use_configured_prices(prices)
        else:
            instrumentor.instrument(price_table=prices)
