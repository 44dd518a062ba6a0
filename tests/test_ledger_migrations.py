"""A ledger written by an earlier release opens with this one: its schema version is upgraded step by step, its audit
trail verifies, its totals equal a scan of its calls, and it keeps counting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench.baseline import checkout
from spendwatch.exporter.codec import decode
from spendwatch.exporter.ledger import SCHEMA_VERSION, Ledger, LedgerEntry, open_backend
from spendwatch.exporter.ledger.audit import verify
from spendwatch.exporter.ledger.migrations import UPGRADES, create_or_upgrade
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
# The last release before the ledger became the exporter/ledger/ package.
EARLIER_RELEASE = "cd9e6d0"
# Runs with that release's code: a few calls (one failed, one unpriced, one with attributes), a budget limit and a
# re-pricing, all as that release wrote them.
_WRITE_WITH_EARLIER_RELEASE = """
import sys
from datetime import date
from zoneinfo import ZoneInfo

from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger_backends import open_backend
from spendwatch.exporter.reprice import reprice
from spendwatch.instrumentation.pricing import Price
from spendwatch.instrumentation.records import UsageRecord

def record(model, cost, **fields):
    values = dict(provider="openai", operation="chat", request_model=model, response_model=model, input_tokens=1000,
                  output_tokens=200, cost_usd=cost, pricing="bundled" if cost is not None else "unpriced",
                  start_time=1764590400.0, duration_s=0.7)
    return UsageRecord(**(values | fields))

ledger = Ledger(open_backend(sys.argv[1]), ZoneInfo("UTC"))
ledger.ingest([
    LedgerEntry("old:1", record("gpt-4o-mini", 0.0003, category="search")),
    LedgerEntry("old:2", record("gpt-4o-mini", 0.0004, outcome="error", error_type="RateLimitError")),
    LedgerEntry("old:3", record("house-model", None, attributes={"spendwatch.lightrag.stage": "insert"})),
    LedgerEntry("old:4", record("gpt-4o", 0.02, start_time=1764676800.0, duration_s=42.0)),
])
ledger.set_budget_limit("global", "month", 25.0, reason="written by the earlier release")
overrides = {"house-model": Price("house-model", "override", input=1e-6, output=2e-6, cache_read=0.0)}
reprice(ledger, "house-model", date(2025, 12, 1), date(2025, 12, 31), overrides=overrides)
ledger.close()
"""


@pytest.fixture(scope="module")
def earlier_ledger(tmp_path_factory):
    """A SQLite ledger (and its audit key file) written by the earlier release's own code."""
    path = tmp_path_factory.mktemp("earlier") / "ledger.db"
    with checkout(EARLIER_RELEASE) as run_dir:
        # Started in run_dir, where `import spendwatch` finds the earlier release laid out as installed.
        script = textwrap.dedent(_WRITE_WITH_EARLIER_RELEASE)
        written = subprocess.run(
            [sys.executable, "-c", script, str(path)], cwd=run_dir, capture_output=True, text=True, timeout=300
        )
    assert written.returncode == 0, written.stderr
    return path


def _usage(entry_id: str, cost: float) -> LedgerEntry:
    record = UsageRecord(
        provider="openai",
        operation="chat",
        request_model="gpt-4o-mini",
        response_model="gpt-4o-mini",
        input_tokens=500,
        output_tokens=50,
        cost_usd=cost,
        pricing="bundled",
        start_time=1764763200.0,
        duration_s=0.3,
        category="search",
    )
    return LedgerEntry(entry_id, record)


def test_a_ledger_written_by_the_earlier_release_opens_verifies_and_keeps_counting(earlier_ledger):
    ledger = Ledger(open_backend(str(earlier_ledger)), UTC)
    try:
        before = verify(ledger)
        assert before.intact, before.problem  # the chain, the budget limit, and totals against a scan of calls
        assert before.kinds == {"call": 4, "event": 2, "reprice": 1}
        assert ledger.call_count() == 4
        assert ledger.budget_limits() == {("global", "month"): 25.0}
        spent = sum(row["cost_usd"] for row in ledger.totals())
        assert spent == pytest.approx(0.0003 + 0.0004 + 0.0014 + 0.02)
        # The hourly roll-ups the API reads were filled from the calls (audit verify compares them too).
        hourly = ledger.table_rows("hourly_totals")
        assert sum(row["cost_usd"] for row in hourly) == pytest.approx(spent)
        assert sum(row["success"] + row["error"] for row in hourly) == 4

        assert ledger.ingest([_usage("new:1", 0.001), _usage("new:2", 0.002)]) == 2

        after = verify(ledger)
        assert after.intact, after.problem
        assert after.kinds == {"call": 6, "event": 2, "reprice": 1}
        assert sum(row["cost_usd"] for row in ledger.totals()) == pytest.approx(spent + 0.003)
        search = [row for row in ledger.totals() if row["category"] == "search"]
        assert [row["success"] for row in search] == [3]
    finally:
        ledger.close()


def test_opening_an_older_ledger_runs_the_steps_it_lacks_once_and_in_order(tmp_path):
    backend = open_backend(str(tmp_path / "ledger.db"))  # at SCHEMA_VERSION
    ran = []

    def add_note_column(backend, cursor):
        ran.append("note")
        backend.execute(cursor, "ALTER TABLE leases ADD COLUMN note TEXT")

    def add_host_column(backend, cursor):
        ran.append("host")
        backend.execute(cursor, "ALTER TABLE leases ADD COLUMN host TEXT")

    steps = (*UPGRADES, add_note_column, add_host_column)
    try:
        create_or_upgrade(backend, "the test ledger", steps)
        create_or_upgrade(backend, "the test ledger", steps)  # another process opening it later: nothing to do
        version = backend.select("SELECT value FROM spendwatch_meta WHERE key = 'schema_version'")
        columns = [row[1] for row in backend.select("PRAGMA table_info(leases)")]
    finally:
        backend.close()
    assert ran == ["note", "host"]
    assert version == [(str(int(SCHEMA_VERSION) + 2),)]
    assert columns[-2:] == ["note", "host"]


def test_a_ledger_written_by_a_later_release_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "ledger.db"
    backend = open_backend(str(path))
    with backend.transaction() as cursor:
        backend.execute(cursor, "UPDATE spendwatch_meta SET value = '99' WHERE key = 'schema_version'")
    backend.close()
    with pytest.raises(ConfigError, match=f"has ledger schema 99, this is {SCHEMA_VERSION}"):
        open_backend(str(path))


def test_calls_with_every_billed_unit_count_in_an_upgraded_ledger_and_old_rows_stay_sealed(earlier_ledger, tmp_path):
    copy = tmp_path / "ledger.db"  # the module's ledger stays as the earlier release wrote it
    for suffix in ("", ".key"):
        Path(f"{copy}{suffix}").write_bytes(Path(f"{earlier_ledger}{suffix}").read_bytes())
    Path(f"{copy}.key").chmod(0o600)
    ledger = Ledger(open_backend(str(copy)), UTC)
    try:
        entry = _usage("new:units", 0.004)
        record = entry.record
        record.input_tokens, record.output_tokens = 2000, 400
        record.cache_write_tokens, record.input_audio_tokens, record.output_audio_tokens = 1000, 300, 200
        record.input_image_tokens, record.output_image_tokens = 100, 50
        record.units, record.service_tier = {"web_search_calls": 2}, "priority"
        ledger.ingest([entry])
        assert verify(ledger).intact
        row = next(r for r in ledger.table_rows("calls") if r["id"] == "new:units")
        assert (row["cache_write_tokens"], row["units"], row["service_tier"]) == (
            1000,
            '{"web_search_calls": 2}',
            "priority",
        )
        totals = [t for t in ledger.totals() if t["category"] == "search"]
        assert sum(t["cache_write_tokens"] for t in totals) == 1000
        assert sum(t["output_image_tokens"] for t in totals) == 50

        # A unit written into a row chained before the upgrade is caught: the MAC covers it once it is not default.
        with ledger.backend.transaction() as cursor:
            ledger.backend.execute(cursor, "UPDATE calls SET cache_write_tokens = 5 WHERE id = 'old:1'")
        verdict = verify(ledger)
        assert not verdict.intact and "'old:1'" in verdict.problem
    finally:
        ledger.close()


def test_a_journal_written_by_the_earlier_release_is_read_by_this_one(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from spendwatch.exporter.codec import encode
        from spendwatch.instrumentation.records import UsageRecord
        record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=7, cost_usd=0.5, start_time=1.0)
        open(sys.argv[1], "wb").write(encode(record))
        """
    )
    payload = tmp_path / "record.bin"
    with checkout(EARLIER_RELEASE) as run_dir:
        written = subprocess.run([sys.executable, "-c", script, str(payload)], cwd=run_dir, capture_output=True)
    assert written.returncode == 0, written.stderr

    record = decode(payload.read_bytes())

    assert (record.request_model, record.input_tokens, record.cost_usd) == ("gpt-4o-mini", 7, 0.5)
    assert (record.cache_write_tokens, record.units, record.service_tier) == (0, {}, None)
