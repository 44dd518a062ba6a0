"""Alert history in the ledger: threshold crossings (recorded once, whichever process sees them first), guard
refusals and degradations (one event per budget and action per ingested batch), ledger outages (recorded when the
ledger is back), read back newest first by the API's alerts; and the hourly totals the API reads, kept by ingest and
re-pricing and filled from the calls when an older ledger is upgraded."""

from __future__ import annotations

import itertools
import socket
import sqlite3
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import LedgerEntry, LedgerSink, load_settings
from spendwatch.exporter.api import alerts, analytics
from spendwatch.exporter.budgets import budget_statuses
from spendwatch.exporter.ledger import Ledger, open_backend
from spendwatch.exporter.ledger.audit import verify
from spendwatch.exporter.ledger.dialects import SQLiteBackend
from spendwatch.exporter.ledger.history import record_threshold_crossing
from spendwatch.exporter.ledger.hourly import hourly_totals
from spendwatch.exporter.ledger.reprice import reprice
from spendwatch.exporter.thresholds import ThresholdWatcher
from spendwatch.instrumentation.pricing import Price
from spendwatch.instrumentation.records import UsageRecord
from tests.api_history import generated_history, ingest_all

UTC_ZONE = ZoneInfo("UTC")


def call(entry_id: str, at: float, cost: float | None = 0.5, **fields) -> LedgerEntry:
    provider, operation = fields.pop("provider", "openai"), fields.pop("operation", "chat")
    record = UsageRecord(provider, operation, fields.pop("model", "gpt-4o-mini"), **fields)
    record.cost_usd, record.start_time = cost, at
    return LedgerEntry(entry_id, record)


def kinds(ledger, since: float = 0.0) -> list[str]:
    return [alert["kind"] for alert in alerts(ledger, range_s=int(time.time() - since) + 60)["alerts"]]


# --- threshold crossings -------------------------------------------------------------------------------------------


def test_a_crossing_seen_by_two_processes_is_recorded_once_per_level(ledger):
    settings = load_settings({"ledger": ledger.location, "daily_budget_usd": 1}, environ={})
    watchers = [
        ThresholdWatcher(
            lambda: budget_statuses(ledger, settings),
            record=lambda status, level: record_threshold_crossing(ledger, status, level, at=time.time()),
            clock=itertools.count(step=10).__next__,  # each check later than the last by more than the interval
        )
        for _ in range(2)
    ]
    ledger.ingest([call("a", time.time(), 0.8)])
    for watcher in watchers:
        watcher.check()
    ledger.ingest([call("b", time.time(), 0.15)])
    for watcher in watchers:
        watcher.check()

    crossings = [a for a in alerts(ledger, range_s=3600)["alerts"] if a["kind"] == "threshold_crossed"]
    assert [(c["budget"], c["period"], c["level"]) for c in crossings] == [
        ("global", "day", "critical"),
        ("global", "day", "warning"),
    ]
    assert crossings[1]["spent_usd"] == pytest.approx(0.8) and crossings[1]["threshold_ratio"] == 0.75


def test_a_crossing_is_recorded_without_any_on_threshold_callback(tmp_path):
    import spendwatch
    from spendwatch import runtime

    path = str(tmp_path / "ledger.db")
    spendwatch.configure(ledger=path, daily_budget_usd=1, metrics_address="off")
    with spendwatch.track("llm_call", model="gpt-4o-mini", provider="openai") as op:
        op.set_tokens(input=10, output=10)
        op.set_cost(2.0)
    runtime.current().sink.flush()
    deadline = time.monotonic() + 30
    ledger = Ledger(open_backend(path), UTC_ZONE)
    while len(ledger.events("threshold_crossed")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    levels = [alert["level"] for alert in alerts(ledger, range_s=3600)["alerts"]]
    ledger.close()
    assert sorted(levels) == ["critical", "exceeded", "warning"]


# --- guard refusals and degradations -------------------------------------------------------------------------------


def test_refusals_and_degradations_are_one_event_per_budget_and_action_per_batch(ledger):
    now = time.time()
    batch = [
        call(f"blocked-{n}", now - 30 + n, None, outcome="blocked", guard_actions=(("global", "block"),))
        for n in range(3)
    ]
    batch.append(call("throttled", now - 20, None, outcome="blocked", guard_actions=(("search", "throttle"),)))
    batch += [call(f"degraded-{n}", now - 10 + n, guard_actions=(("global", "degrade"),)) for n in range(2)]
    batch.append(call("allowed", now - 5, guard_actions=(("global", "allow"),)))
    ledger.ingest(batch)
    ledger.ingest(batch)  # a replayed batch inserts nothing, and records nothing again

    shown = alerts(ledger, range_s=3600, now=now)["alerts"]
    by_action = {(a["kind"], a["budget"], a["action"]): a for a in shown}
    assert set(by_action) == {
        ("guard_refused", "global", "block"),
        ("guard_refused", "search", "throttle"),
        ("guard_degraded", "global", "degrade"),
    }
    block = by_action["guard_refused", "global", "block"]
    assert block["calls"] == 3 and block["model"] == "gpt-4o-mini"
    assert (block["first_at"], block["last_at"], block["at"]) == (_utc(now - 30), _utc(now - 28), _utc(now - 28))
    assert [a["at"] for a in shown] == sorted((a["at"] for a in shown), reverse=True)


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_alerts_of_a_range_leave_older_ones_out(ledger):
    now = time.time()
    old = call("old", now - 3 * 86400, None, outcome="blocked", guard_actions=(("global", "block"),))
    new = call("new", now - 600, None, outcome="blocked", guard_actions=(("global", "block"),))
    ledger.ingest([old])
    ledger.ingest([new])
    assert [a["first_at"] for a in alerts(ledger, range_s=86400, now=now)["alerts"]] == [_utc(now - 600)]
    assert len(alerts(ledger, range_s=7 * 86400, now=now)["alerts"]) == 2


# --- ledger outages ------------------------------------------------------------------------------------------------


def test_a_ledger_outage_is_recorded_with_its_start_end_and_errors_once_the_ledger_is_back(tmp_path):
    path = str(tmp_path / "ledger.db")
    Ledger(open_backend(path), UTC_ZONE).close()
    ledger = Ledger(SQLiteBackend(path, busy_timeout_s=0.05), UTC_ZONE)
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every write fails for now
    began = time.time()
    sink.record(call("during", began).record)
    assert sink.flush() is False and sink.flush() is False
    blocker.execute("ROLLBACK")
    assert sink.flush() is True
    ended = time.time()

    (outage,) = alerts(ledger, range_s=3600)["alerts"]
    sink.close()
    assert outage["kind"] == "ledger_unavailable" and outage["errors"] == 2
    assert _utc(began - 1) <= outage["since"] <= outage["until"] <= _utc(ended + 1)
    assert "locked" in outage["error"] and outage["host"] == socket.gethostname()


# --- hourly totals -------------------------------------------------------------------------------------------------


def test_hourly_totals_add_up_each_hours_calls(ledger):
    entries = generated_history(time.time(), 3)
    ingest_all(ledger, entries, batch=100)
    first = int(entries[0].record.start_time // 3600) * 3600
    rows = hourly_totals(ledger, first, first + 4 * 86400)
    for hour in {row["hour"] for row in rows}:
        calls = [e.record for e in entries if hour <= e.record.start_time < hour + 3600]
        in_hour = [row for row in rows if row["hour"] == hour]
        assert sum(row["cost_usd"] for row in in_hour) == pytest.approx(sum(r.cost_usd or 0 for r in calls))
        assert sum(row["success"] + row["error"] + row["blocked"] for row in in_hour) == len(calls)
    assert sum(row["input_tokens"] for row in rows) == sum(e.record.input_tokens for e in entries)


def test_repricing_moves_the_hourly_totals_with_the_daily_ones(ledger):
    now = time.time()
    ledger.ingest([call(f"c{n}", now - 7200 * n, None, model="custom-model", input_tokens=1000) for n in range(3)])
    overrides = {"custom-model": Price("custom-model", "file corrected.toml", input=2e-6, output=0.0, cache_read=0.0)}
    today = datetime.fromtimestamp(now, UTC).date()
    reprice(ledger, "custom-model", today.replace(day=1) if today.day > 1 else today, today, overrides=overrides)
    hourly = sum(row["cost_usd"] for row in hourly_totals(ledger, 0, int(now) + 3600))
    daily = sum(
        row["cost_usd"] for row in ledger.daily_totals(datetime(1970, 1, 2).date(), today.replace(year=today.year + 1))
    )
    assert hourly == pytest.approx(daily) and hourly > 0


# --- LightRAG stages -----------------------------------------------------------------------------------------------


def test_analytics_by_stage_adds_up_each_stages_calls_per_day_and_hour_leaving_cache_hits_out(ledger):
    now = datetime(2025, 3, 10, 12, 30, tzinfo=UTC).timestamp()
    settings = load_settings({"ledger": ledger.location}, environ={})
    stage = "spendwatch.lightrag.stage"
    ledger.ingest(
        [
            call("extract-1", now - 86400, 0.25, attributes={stage: "extract"}, input_tokens=100),
            call("extract-2", now - 600, 0.5, attributes={stage: "extract"}, input_tokens=200),
            call("query-1", now - 60, 0.125, attributes={stage: "query"}),
            call("cached", now - 30, None, operation="cache_hit", attributes={stage: "query"}),
            call("plain", now - 30, 1.0),
        ]
    )
    by_day = analytics(ledger, settings, range_s=2 * 86400, granularity="day", by="stage", now=now)
    by_hour = analytics(ledger, settings, range_s=3600, granularity="hour", by="stage", now=now)

    assert [[(g["stage"], g["cost_usd"], g["calls"]) for g in b["groups"]] for b in by_day["buckets"]] == [
        [("extract", 0.25, 1)],
        [("extract", 0.5, 1), ("query", 0.125, 1)],
    ]
    assert [(g["stage"], g["tokens"]["input_tokens"]) for g in by_day["totals"]] == [("extract", 300), ("query", 0)]
    assert [(g["stage"], g["cost_usd"]) for g in by_hour["totals"]] == [("extract", 0.5), ("query", 0.125)]


def test_hourly_totals_that_do_not_add_up_to_the_calls_are_named_by_audit_verify(ledger):
    ingest_all(ledger, generated_history(time.time(), 2))
    assert verify(ledger).intact
    with ledger.transaction() as cursor:
        ledger.backend.execute(cursor, "UPDATE hourly_totals SET cost_usd = 0")

    verdict = verify(ledger)
    assert not verdict.intact and "hourly_totals" in verdict.problem
