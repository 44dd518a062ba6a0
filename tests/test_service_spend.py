"""Spend per service: the ledger keeps each call's service and source, budgets can be scoped by service, reports group
by it, and a span's call is one ledger row however often it is handed in. Ends with a real app: the official OpenAI
instrumentation and SPENDWATCH_INGEST_SPANS=on in a child process, alone and beside spendwatch's own instrumentor."""

from __future__ import annotations

import itertools
import json
import marshal
import os
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from datetime import date
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import LedgerEntry, LedgerSink, load_settings, open_ledger
from spendwatch.exporter.budgets import budget_statuses
from spendwatch.exporter.codec import decode, encode
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.ledger import Ledger
from spendwatch.exporter.report import report_rows
from spendwatch.exporter.settings import BudgetSpec
from spendwatch.exporter.spans import entry_id_of
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord
from tests.conftest import FAKE_API_KEY

NOON = 1_767_268_800.0  # 2026-01-01 12:00 UTC
_ids = itertools.count()


def call(cost: float, service: str | None, **fields) -> LedgerEntry:
    record = UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=cost, pricing="test", start_time=NOON, **fields)
    record.service = service
    return LedgerEntry(f"test-{next(_ids)}", record)


def test_a_service_budget_counts_only_that_services_calls(tmp_path):
    overrides = {"ledger": str(tmp_path / "ledger.db"), "timezone": "UTC"}
    budgets = (BudgetSpec("global", "day", 100.0), BudgetSpec("checkout", "day", 10.0, service="checkout"))
    settings = replace(load_settings(overrides, environ={}), budgets=budgets)
    ledger = open_ledger(settings)
    ledger.ingest([call(1.5, "checkout"), call(2.0, "search"), call(0.25, "checkout"), call(4.0, None)])
    statuses = {status.name: status for status in budget_statuses(ledger, settings, now=NOON + 60)}
    assert statuses["checkout"].spent_usd == pytest.approx(1.75)
    assert statuses["global"].spent_usd == pytest.approx(7.75)
    assert statuses["checkout"].service == "checkout"
    ledger.close()


def test_report_by_service(ledger):
    ledger.ingest([call(1.5, "checkout"), call(2.0, "search"), call(0.25, "checkout"), call(4.0, None)])
    rows = report_rows(ledger, date(2026, 1, 1), date(2026, 1, 1), by="service")
    assert [(row["service"], row["cost_usd"], row["requests"]) for row in rows] == [
        (None, 4.0, 1),
        ("search", 2.0, 1),
        ("checkout", 1.75, 2),
    ]


def test_a_budget_scoped_by_service_in_the_config_file(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text('[budgets.checkout]\nservice = "checkout"\ndaily_usd = 5\n')
    (spec,) = load_settings({"config": str(config), "ledger": str(tmp_path / "l.db")}, environ={}).budgets
    assert (spec.name, spec.service, spec.limit_usd) == ("checkout", "checkout", 5.0)
    assert spec.covers(None, "gpt-4o", "checkout") and not spec.covers(None, "gpt-4o", "search")


@pytest.mark.parametrize("value", ["yes", "1", "enabled"])
def test_a_bad_ingest_spans_value_fails_at_start_up_naming_it(tmp_path, value):
    with pytest.raises(ConfigError, match=f"SPENDWATCH_INGEST_SPANS='{value}'"):
        load_settings({"ledger": str(tmp_path / "l.db")}, environ={"SPENDWATCH_INGEST_SPANS": value})


def test_a_span_recorded_twice_is_one_row_with_its_source_and_service(ledger, tmp_path):
    sink = LedgerSink(ledger, tmp_path / "journal")
    sink.service = "this-process"
    span = UsageRecord("openai", "chat", "gpt-4o", cost_usd=0.5, pricing="test", start_time=NOON, trace_id=7, span_id=9)
    span.source, span.service = "span", "checkout"
    sink.record(span)
    sink.record(replace(span))  # the same span again (a retried export, a second Collector)
    sink.record(UsageRecord("openai", "chat", "gpt-4o", cost_usd=0.25, pricing="test", start_time=NOON))
    assert sink.flush()
    rows = {row["id"]: row for row in ledger.table_rows("calls")}
    assert len(rows) == 2
    assert (rows[entry_id_of(7, 9)]["source"], rows[entry_id_of(7, 9)]["service"]) == ("span", "checkout")
    (instrumented,) = [row for key, row in rows.items() if key != entry_id_of(7, 9)]
    assert (instrumented["source"], instrumented["service"]) == (None, "this-process")
    assert sum(row["cost_usd"] for row in ledger.totals()) == pytest.approx(0.75)
    sink.close()


APP = textwrap.dedent(
    """
    import sys
    import openai
    from opentelemetry import trace
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    import spendwatch

    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "checkout"})))
    OpenAIInstrumentor().instrument()
    spendwatch.configure()
    client = openai.OpenAI(api_key=sys.argv[2], base_url=sys.argv[1], max_retries=0)
    with spendwatch.category("support"):
        for model in ("gpt-4o-mini", "gpt-4o"):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    """
)


@pytest.mark.parametrize("spendwatch_instrumentor", [False, True], ids=["official-only", "with-spendwatch"])
def test_an_app_with_ingest_spans_on_counts_each_call_once(tmp_path, stub, spendwatch_instrumentor):
    location = str(tmp_path / "ledger.db")
    environ = os.environ | {
        "SPENDWATCH_LEDGER": location,
        "SPENDWATCH_INGEST_SPANS": "on",
        "SPENDWATCH_METRICS_ADDRESS": "off",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "" if spendwatch_instrumentor else "spendwatch_openai",
    }
    config = tmp_path / "spendwatch.toml"
    config.write_text(
        '[budgets.checkout]\nservice = "checkout"\ndaily_usd = 5\n[budgets.search]\nservice = "search"\ndaily_usd = 5\n'
    )
    script = tmp_path / "app.py"
    script.write_text(APP)
    app_environ = environ | {"SPENDWATCH_CONFIG": str(config)}
    subprocess.run([sys.executable, str(script), stub.base_url, FAKE_API_KEY], env=app_environ, check=True, timeout=120)
    # `spendwatch status` with the ledger alone reads the budgets, service scope included, from the app's start-up.
    status = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "status", "--json"],
        env=environ,
        check=True,
        capture_output=True,
        text=True,
    )
    spent = {
        budget["name"]: (budget["service"], budget["spent_usd"]) for budget in json.loads(status.stdout)["budgets"]
    }
    assert spent["search"] == ("search", 0) and spent["checkout"][0] == "checkout" and spent["checkout"][1] > 0
    ledger = Ledger(open_backend(location), ZoneInfo("UTC"))
    rows = ledger.table_rows("calls")
    assert sorted(row["model"] for row in rows) == ["gpt-4o", "gpt-4o-mini"]
    expected_source = None if spendwatch_instrumentor else "span"
    assert {(row["source"], row["service"], row["category"]) for row in rows} == {
        (expected_source, "checkout", "support")
    }
    assert all(row["cost_usd"] > 0 for row in rows)
    ledger.close()


def test_journal_records_keep_source_and_service_and_a_version_2_record_reads_as_an_instrumented_call():
    record = UsageRecord("openai", "chat", "gpt-4o", input_tokens=3, source="otlp", service="checkout")
    assert decode(encode(record)) == record
    older = UsageRecord("openai", "chat", "gpt-4o", input_tokens=3)
    names = [field.name for field in fields(UsageRecord) if field.name not in ("source", "service", "mark")]
    decoded = decode(marshal.dumps((2, *(getattr(older, name) for name in names))))  # as the previous release wrote
    assert decoded == older and (decoded.source, decoded.service) == ("sdk", None)
