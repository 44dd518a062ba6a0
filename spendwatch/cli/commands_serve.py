"""``spendwatch serve``: a ``/metrics`` endpoint over a ledger, for deployments where many processes or hosts write
one ledger and a single server should expose it.

Wired into :func:`spendwatch.cli.build_parser` by ``add_commands(subcommands)``; follows that module's pattern
(``_run_serve(args) -> int``, imports inside the handler so ``spendwatch --help`` stays fast). Runs until SIGTERM or
SIGINT and then exits 0; bad configuration (including a port in use) is a :class:`ConfigError`, exit 2.
"""

from __future__ import annotations

import argparse
import signal
import threading

__all__ = ["add_commands"]

EXIT_OK = 0


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "serve",
        help="serve Prometheus metrics, the cost page and the JSON API over the spend ledger",
        description="Serve /metrics (spend, tokens, requests, durations and budgets), the HTML cost page at / and "
        "the read-only JSON API (/api/v1/overview, analytics, report, alerts; /api/v1/openapi.json describes it) "
        "over the ledger that SPENDWATCH_LEDGER names, and takes OTLP/HTTP traces on POST /v1/traces (GenAI spans "
        "priced into the ledger; bodies up to SPENDWATCH_INTAKE_MAX_BYTES), until SIGTERM or SIGINT. Basic auth and "
        "TLS follow SPENDWATCH_METRICS_BASIC_AUTH and SPENDWATCH_METRICS_TLS_CERTFILE/KEYFILE.",
    )
    command.add_argument(
        "--address", metavar="HOST:PORT", help="where to listen (default: SPENDWATCH_METRICS_ADDRESS, 127.0.0.1:9464)"
    )
    command.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.api import API_PREFIX, api_app
    from spendwatch.exporter.budgets import LedgerConfiguration, budget_statuses
    from spendwatch.exporter.collector import SpendCollector
    from spendwatch.exporter.intake import INTAKE_PATH, intake_app
    from spendwatch.exporter.intake.workers import IntakeWorkers, default_worker_count
    from spendwatch.exporter.page import page_app
    from spendwatch.exporter.server import serve_as_configured
    from spendwatch.exporter.sink import LedgerSink, journal_directory
    from spendwatch.instrumentation.errors import ConfigError

    settings = load_settings({"metrics_address": args.address})
    if settings.metrics_address is None:
        raise ConfigError("SPENDWATCH_METRICS_ADDRESS='off' leaves spendwatch serve nothing to do; give --address")
    ledger = open_ledger(settings)
    # The budgets (and time zone, thresholds, categories) the apps recorded in the ledger, unless set here; re-read
    # on each scrape, so an app started later with another budget shows without a restart.
    known = LedgerConfiguration(ledger, settings)
    registry = CollectorRegistry()
    prices_as_of = _pricing_data_timestamp()
    # OTLP intake: spans are journaled, and drained into the ledger behind the answer, as an instrumented app's calls
    # are (through serve's one Ledger, as an app's sink and guard share theirs).
    sink = LedgerSink(ledger, journal_directory(settings.ledger), memory_records=settings.journal_memory_records)
    SpendCollector(
        ledger,
        categories=known.settings().categories,
        budget_statuses=lambda: budget_statuses(ledger, known.settings()),
        guard_decisions=ledger.guard_decisions,
        # Every process's over this ledger: the apps keep theirs in it (exporter/shared_counts.py).
        ledger_errors=sink.all_ledger_errors,
        records_dropped=sink.all_records_dropped,
        pricing_data_timestamp=prices_as_of,
        registry=registry,
    )
    worker_count = default_worker_count() if settings.intake_workers is None else settings.intake_workers
    workers = IntakeWorkers(worker_count, settings) if worker_count else None
    intake = intake_app(sink, settings.price_table(), max_bytes=settings.intake_max_bytes, workers=workers)
    routes = {
        "/": page_app(ledger, known.settings, prices_as_of=prices_as_of),
        API_PREFIX: api_app(ledger, known.settings),
        INTAKE_PATH: intake,
    }
    server = serve_as_configured(registry, settings, routes=routes)
    print(f"serving {server.url}", flush=True)
    try:
        _wait_for_stop_signal()
    finally:
        server.stop()
        if workers is not None:
            workers.close()
        sink.close()
        ledger.close()
    return EXIT_OK


def _pricing_data_timestamp() -> float | None:
    from spendwatch.instrumentation.pricing import PriceTable

    try:
        return PriceTable().data_timestamp
    except (RuntimeError, OSError):  # genai-prices missing or unreadable: leave the gauge out, not the server
        return None


def _wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT (both mean a clean stop, exit 0), then restore the previous handlers."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
