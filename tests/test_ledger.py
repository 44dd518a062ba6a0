"""The ledger on a real database: idempotent ingest, running totals equal to the rows, and clear start-up errors."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import date
from zoneinfo import ZoneInfo

import psycopg
import pytest

from spendwatch.exporter import Ledger, LedgerEntry, load_settings, open_ledger
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import AUDIT_LOCK, verify
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
NOON_2026_11_27 = 1795780800.0  # 2026-11-27T12:00:00Z


def usage(cost: float | None = 0.01, **fields) -> UsageRecord:
    values = {
        "provider": "openai",
        "operation": "chat",
        "request_model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 20,
        "cost_usd": cost,
        "pricing": "genai-prices 0.2.3" if cost is not None else "unpriced",
        "start_time": NOON_2026_11_27,
        "duration_s": 0.4,
    }
    return UsageRecord(**{**values, **fields})


def entries(*records: UsageRecord, prefix: str = "test") -> list[LedgerEntry]:
    return [LedgerEntry(f"{prefix}:{index}", record) for index, record in enumerate(records)]


def test_ingest_counts_each_entry_once_even_when_replayed(ledger):
    batch = entries(usage(0.01), usage(0.02))

    assert ledger.ingest(batch) == 2
    assert ledger.ingest(batch) == 0

    (total,) = ledger.totals()
    assert total["cost_usd"] == pytest.approx(0.03, abs=1e-12)
    assert total["success"] == 2
    assert ledger.call_count() == 2


def test_an_id_repeated_within_a_batch_and_across_batches_is_one_row_counted_once(ledger):
    # A retried OTLP export journaled twice reaches the ledger as the same id twice in one batch, or in the next one.
    first, second = usage(0.01), usage(0.5, request_model="gpt-4o")
    batch = [LedgerEntry("span:a", first), LedgerEntry("span:b", usage(0.02)), LedgerEntry("span:a", second)]

    assert ledger.ingest(batch) == 2
    assert ledger.ingest([LedgerEntry("span:b", usage(0.02)), LedgerEntry("span:c", usage(0.04))]) == 1

    rows = {row["id"]: row for row in ledger.table_rows("calls")}
    assert sorted(rows) == ["span:a", "span:b", "span:c"]
    assert rows["span:a"]["model"] == "gpt-4o-mini"  # the first of an id is the one kept
    (total,) = ledger.totals()
    assert (total["cost_usd"], total["success"]) == (pytest.approx(0.07, abs=1e-12), 3)
    verdict = verify(ledger)
    assert (verdict.intact, verdict.records) == (True, 3), verdict.problem


def test_totals_split_by_model_operation_and_category_and_count_tokens(ledger):
    ledger.ingest(
        entries(
            usage(0.01, category="metabolomics", cache_read_tokens=40, reasoning_tokens=5),
            usage(0.02, category="metabolomics"),
            usage(0.5, request_model="gpt-4o", operation="embeddings"),
        )
    )

    totals = {(row["model"], row["operation"], row["category"]): row for row in ledger.totals()}
    metabolomics = totals[("gpt-4o-mini", "chat", "metabolomics")]
    assert metabolomics["cost_usd"] == pytest.approx(0.03)
    assert (metabolomics["input_tokens"], metabolomics["output_tokens"]) == (200, 40)
    assert (metabolomics["cache_read_tokens"], metabolomics["reasoning_tokens"]) == (40, 5)
    assert totals[("gpt-4o", "embeddings", "")]["cost_usd"] == pytest.approx(0.5)


def test_unpriced_errors_and_estimates_are_counted_not_costed(ledger):
    ledger.ingest(
        entries(
            usage(None, request_model="my-private-model"),
            usage(0.0, outcome="error", error_type="InternalServerError", pricing="not billed"),
            usage(0.01, estimated=True),
        )
    )

    totals = {row["model"]: row for row in ledger.totals()}
    private = totals["my-private-model"]
    assert (private["unpriced"], private["cost_usd"]) == (1, 0)
    mini = totals["gpt-4o-mini"]
    assert (mini["error"], mini["success"], mini["estimated"]) == (1, 1, 1)


def test_spend_sums_a_range_of_local_days_with_scope(ledger):
    day = 86400.0
    ledger.ingest(
        entries(
            usage(1.0, start_time=NOON_2026_11_27 - day),
            usage(2.0, start_time=NOON_2026_11_27, category="a"),
            usage(4.0, start_time=NOON_2026_11_27, request_model="gpt-4o"),
        )
    )

    assert ledger.spend(date(2026, 11, 27), date(2026, 11, 28)) == pytest.approx(6.0)
    assert ledger.spend(date(2026, 11, 1), date(2026, 12, 1)) == pytest.approx(7.0)
    assert ledger.spend(date(2026, 11, 27), date(2026, 11, 28), category="a") == pytest.approx(2.0)
    assert ledger.spend(date(2026, 11, 27), date(2026, 11, 28), model="gpt-4o") == pytest.approx(4.0)


def test_a_call_counts_on_the_local_day_of_the_configured_time_zone(tmp_path):
    tokyo = Ledger(open_backend(str(tmp_path / "tokyo.db")), ZoneInfo("Asia/Tokyo"))
    late_evening_utc = 1795816800.0  # 2026-11-27T22:00:00Z is already the 28th in Tokyo

    tokyo.ingest(entries(usage(1.0, start_time=late_evening_utc)))

    assert tokyo.spend(date(2026, 11, 28), date(2026, 11, 29)) == pytest.approx(1.0)
    assert tokyo.spend(date(2026, 11, 27), date(2026, 11, 28)) == 0


def test_calls_either_side_of_local_midnight_count_on_their_own_days(tmp_path):
    # Kathmandu is UTC+5:45: its midnight is 18:15 UTC. The day of a call is looked up once per minute.
    kathmandu = Ledger(open_backend(str(tmp_path / "kathmandu.db")), ZoneInfo("Asia/Kathmandu"))
    midnight = 1795803300.0  # 2026-11-27T18:15:00Z, 2026-11-28T00:00 in Kathmandu
    first_batch = [usage(1.0, start_time=midnight - 0.25), usage(2.0, start_time=midnight)]
    kathmandu.ingest(entries(*first_batch, usage(4.0, start_time=midnight - 61)))
    kathmandu.ingest(entries(usage(8.0, start_time=midnight + 59.5), usage(16.0, start_time=midnight - 1), prefix="b"))

    assert kathmandu.spend(date(2026, 11, 27), date(2026, 11, 28)) == pytest.approx(21.0)
    assert kathmandu.spend(date(2026, 11, 28), date(2026, 11, 29)) == pytest.approx(10.0)


def test_duration_buckets_count_each_call_in_its_bucket(ledger):
    ledger.ingest(entries(usage(duration_s=0.05), usage(duration_s=0.3), usage(duration_s=500.0)))

    buckets = {row["le"]: row["count"] for row in ledger.duration_buckets()}
    assert buckets == {0.1: 1, 0.5: 1}
    (total,) = ledger.totals()
    assert total["duration_count"] == 3  # the call past the last bound shows in +Inf only


def test_budget_limit_changes_are_kept_with_an_event(ledger):
    ledger.set_budget_limit("global", "day", 75.0, reason="conference week")

    assert ledger.budget_limits() == {("global", "day"): 75.0}
    (event,) = ledger.events("budget_limit_changed")
    assert "conference week" in event["detail"]


def test_the_ledger_survives_reopening(tmp_path):
    path = str(tmp_path / "ledger.db")
    first = Ledger(open_backend(path), UTC)
    first.ingest(entries(usage(0.25)))
    first.close()

    reopened = Ledger(open_backend(path), UTC)
    assert reopened.spend(date(2026, 11, 27), date(2026, 11, 28)) == pytest.approx(0.25)


def test_default_ledger_is_created_under_xdg_state_home(tmp_path):
    settings = load_settings(environ={"XDG_STATE_HOME": str(tmp_path)})

    open_ledger(settings).close()

    assert (tmp_path / "spendwatch" / "ledger.db").is_file()


def test_a_file_that_is_not_a_database_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database at all, just some text" * 100)

    with pytest.raises(ConfigError) as raised:
        open_backend(str(path))

    assert f"SPENDWATCH_LEDGER={str(path)!r}" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_another_programs_database_is_refused(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER)")

    with pytest.raises(ConfigError, match="not a spendwatch ledger"):
        open_backend(str(path))


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        open_backend(str(tmp_path))


LOCK_WAITED_OUT = (sqlite3.OperationalError, psycopg.errors.LockNotAvailable)


@contextlib.contextmanager
def another_writer(location: str):
    """Another process's writer holding the ledger's write lock (SQLite) or the audit chain's head (PostgreSQL)."""
    if location.startswith("postgresql"):
        with psycopg.connect(location) as holder, holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            yield
    else:
        holder = sqlite3.connect(location, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()


def test_an_ingest_that_may_wait_only_briefly_gives_up_on_a_held_ledger_and_leaves_later_writes_patient(ledger):
    ledger.ingest([LedgerEntry("first", UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=0.5))])
    waiting = [LedgerEntry("waits", UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=0.25))]

    with another_writer(ledger.location), pytest.raises(LOCK_WAITED_OUT) as gave_up:
        ledger.ingest(waiting, wait_s=0.05)  # a default ingest would wait out the busy timeout (30 s) here

    assert "lock" in str(gave_up.value)  # SQLite's "database is locked", PostgreSQL's lock timeout
    assert ledger.ingest(waiting) == 1  # and then takes the batch, with the patience it had before
    if ledger.location.startswith("postgresql"):
        assert ledger.backend.select("SHOW lock_timeout") == [("0",)]
    else:
        assert ledger.backend.select("PRAGMA busy_timeout") == [(30_000,)]
    assert [call["id"] for call in ledger.table_rows("calls")] == ["first", "waits"]
