"""The audit trail on SQLite and PostgreSQL: an intact chain verifies, and every kind of tampering is named."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
from datetime import date
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger, LedgerEntry, LedgerSink
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import AUDIT_KEY_ENV, key_file_path, verify
from spendwatch.exporter.ledger.leases import renew_lease
from spendwatch.exporter.ledger.migrations import UNSEALED_LEASES_KEY
from spendwatch.exporter.ledger.schema import ASSUMED_PRICE
from spendwatch.exporter.settings import BudgetSpec
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
NOON_2026_11_27 = 1795780800.0
KEY = "0123456789abcdef0123456789abcdef-test-key"


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    """Key files for PostgreSQL ledgers go under the test's own state directory, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)


def usage(cost: float | None = 0.01, **fields) -> UsageRecord:
    values = {"provider": "openai", "operation": "chat", "request_model": "gpt-4o-mini", "input_tokens": 100}
    values |= {"output_tokens": 20, "cost_usd": cost, "pricing": "genai-prices 0.2.3", "start_time": NOON_2026_11_27}
    return UsageRecord(**{**values, **fields})


def fill(ledger: Ledger) -> None:
    """Records 1-4: calls test:0 .. test:3 (test:3 a guard refusal); 5: a budget-limit change; 6: an event."""
    ledger.ingest([LedgerEntry(f"test:{n}", usage(0.01 * (n + 1))) for n in range(3)])
    ledger.ingest([LedgerEntry("test:3", usage(None, outcome="blocked", pricing="unpriced"))])
    ledger.set_budget_limit("global", "day", 5.0, reason="quarter end")
    ledger.add_event("configuration_started", {"pid": 1})


def tamper(ledger: Ledger, query: str, parameters: tuple = ()) -> None:
    """Plain SQL, without the key."""
    with ledger.backend.transaction() as cursor:
        ledger.backend.execute(cursor, query, parameters)


def test_an_intact_chain_verifies_with_its_record_count(ledger):
    fill(ledger)

    verdict = verify(ledger)

    assert verdict.intact, verdict.problem
    assert verdict.records == 6
    assert verdict.kinds == {"call": 4, "event": 2, "reprice": 0}


def test_an_empty_ledger_verifies_with_no_records(ledger):
    assert (verify(ledger).intact, verify(ledger).records) == (True, 0)


def test_a_replayed_batch_adds_no_records(ledger):
    fill(ledger)
    ledger.ingest([LedgerEntry("test:1", usage(0.02)), LedgerEntry("test:9", usage(0.5))])

    assert (verify(ledger).intact, verify(ledger).records) == (True, 7)


# how -> (plain SQL statements, the first bad record, what the problem names)
TAMPERING = {
    "a changed cost": (["UPDATE calls SET cost_usd = 0.0001 WHERE id = 'test:1'"], 2, "record 2 (call 'test:1')"),
    "a refusal turned into a success": (["UPDATE calls SET outcome = 'success' WHERE id = 'test:3'"], 4, "'test:3'"),
    "a deleted call row": (["DELETE FROM calls WHERE id = 'test:1'"], 2, "its calls row was deleted"),
    "a deleted record": (["DELETE FROM audit WHERE seq = 2"], 2, "record 2 was deleted"),
    "a changed budget-limit event": (
        ["UPDATE events SET detail = REPLACE(detail, '5.0', '500.0') WHERE kind = 'budget_limit_changed'"],
        5,
        "record 5 (event 1)",
    ),
    "a forged MAC": (["UPDATE audit SET mac = 'f00d' WHERE seq = 3"], 3, "record 3"),
    "swapped records": (
        ["UPDATE audit SET seq = -seq WHERE seq IN (3, 4)", "UPDATE audit SET seq = 7 + seq WHERE seq < 0"],
        3,
        "record 3 (call 'test:3')",
    ),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_tampering_is_named_at_the_first_bad_record(ledger, how):
    queries, first_bad, named = TAMPERING[how]
    fill(ledger)
    for query in queries:
        tamper(ledger, query)

    verdict = verify(ledger)

    assert not verdict.intact
    assert verdict.bad_seq == first_bad, verdict.problem
    assert named in verdict.problem


def test_a_call_row_inserted_without_the_key_is_named(ledger):
    fill(ledger)
    tamper(
        ledger,
        "INSERT INTO calls SELECT 'forged:1', ts, day, provider, operation, model, response_model, category,"
        " input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, cost_usd, pricing, estimated, outcome,"
        " error_type, duration_s, trace_id, span_id, attributes, cache_write_tokens, input_audio_tokens,"
        " output_audio_tokens, input_image_tokens, output_image_tokens, units, service_tier, source, service FROM calls"
        " WHERE id = 'test:0'",
    )

    verdict = verify(ledger)

    assert not verdict.intact
    assert "'forged:1'" in verdict.problem and "inserted without the key" in verdict.problem


def test_a_forged_record_appended_without_the_key_is_named(ledger):
    fill(ledger)
    tamper(ledger, "INSERT INTO audit (seq, kind, call_id, row_id, mac) VALUES (7, 'event', NULL, 1, 'beef')")

    verdict = verify(ledger)

    assert (verdict.intact, verdict.bad_seq) == (False, 7)


def test_deleting_the_newest_records_is_caught_by_the_sealed_head(ledger):
    fill(ledger)
    tamper(ledger, "DELETE FROM audit WHERE seq >= 5")
    tamper(ledger, "DELETE FROM events")

    verdict = verify(ledger)

    assert (verdict.intact, verdict.bad_seq) == (False, 5)
    assert "records 5 to 6 were deleted" in verdict.problem


def test_a_budget_limit_changed_without_an_event_is_named(ledger):
    fill(ledger)
    tamper(ledger, "UPDATE budget_limits SET limit_usd = 1000 WHERE name = 'global'")

    verdict = verify(ledger)

    assert not verdict.intact
    assert "budget 'global'" in verdict.problem


def test_running_totals_lowered_to_dodge_a_budget_are_named(ledger):
    fill(ledger)
    tamper(ledger, "UPDATE daily_totals SET cost_usd = 0")

    verdict = verify(ledger)

    assert not verdict.intact
    assert "daily_totals" in verdict.problem


def _append(location: str, journal: str, worker: int, count: int) -> None:
    sink = LedgerSink(Ledger(open_backend(location), UTC), journal, drain_interval=0.005)
    for index in range(count):
        sink.record(usage(0.001, category=f"worker-{worker}", duration_s=index / 1000))
        if index % 50 == 0:
            sink.ledger.add_event("tick", {"worker": worker, "index": index})
    sink.close()


@pytest.mark.slow
def test_four_processes_appending_at_once_leave_one_intact_complete_chain(ledger, ledger_location, tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append, args=(ledger_location, str(tmp_path / f"journal-{n}"), n, 300))
        for n in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    verdict = verify(ledger)

    assert verdict.intact, verdict.problem
    assert verdict.kinds == {"call": 4 * 300, "event": 4 * 6, "reprice": 0}


def _cli_verify(location: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPENDWATCH_LEDGER": location, AUDIT_KEY_ENV: KEY}
    argv = [sys.executable, "-m", "spendwatch.cli", "audit", "verify"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_exits_0_when_intact_and_1_naming_the_tampered_record(ledger_location, monkeypatch):
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    ledger = Ledger(open_backend(ledger_location), UTC)
    fill(ledger)

    intact = _cli_verify(ledger_location)
    tamper(ledger, "UPDATE calls SET cost_usd = 0 WHERE id = 'test:2'")
    broken = _cli_verify(ledger_location)
    ledger.close()

    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit trail intact: 6 records (4 calls, 2 events, 0 repricings)")
    assert broken.returncode == 1, broken.stderr
    assert broken.stdout.startswith("audit trail broken: record 3 (call 'test:2') does not match its MAC")


def test_the_key_file_is_created_private_on_first_use_and_reused(tmp_path):
    location = str(tmp_path / "ledger.db")
    first = Ledger(open_backend(location), UTC)
    first.ingest([LedgerEntry("test:0", usage())])
    first.close()

    path = key_file_path(location)
    assert path == tmp_path / "ledger.db.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = Ledger(open_backend(location), UTC)
    assert verify(reopened).intact


def test_a_postgresql_ledgers_key_file_is_under_the_state_directory(tmp_path):
    path = key_file_path("postgresql://spend@db/ledger", {"XDG_STATE_HOME": str(tmp_path)})
    assert path == tmp_path / "spendwatch" / "audit.key"


def test_a_short_audit_key_is_refused_at_start_up_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(AUDIT_KEY_ENV, "hunter2")
    with pytest.raises(ConfigError, match=f"{AUDIT_KEY_ENV}=<hidden> must be at least 32 characters"):
        Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)


def test_a_key_file_other_users_can_read_is_refused(tmp_path):
    location = str(tmp_path / "ledger.db")
    Ledger(open_backend(location), UTC).close()
    key_file_path(location).chmod(0o644)
    with pytest.raises(ConfigError, match="open to other users"):
        Ledger(open_backend(location), UTC)


def test_another_key_than_the_ledgers_own_is_refused(ledger_location, monkeypatch):
    Ledger(open_backend(ledger_location), UTC).close()
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    with pytest.raises(ConfigError, match=f"not the key the ledger .* was started with; set {AUDIT_KEY_ENV}"):
        Ledger(open_backend(ledger_location), UTC)


def test_each_configured_start_up_is_chained(tmp_path, monkeypatch):
    import spendwatch
    from spendwatch import runtime
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    location = str(tmp_path / "ledger.db")
    try:
        spendwatch.configure(ledger=location, metrics_address="off", daily_budget_usd=5)
    finally:
        runtime.detach()
        OpenAIInstrumentor().uninstrument()

    ledger = Ledger(open_backend(location), UTC)
    (started,) = ledger.events("configuration_started")
    assert '["global", "day", 5.0, null, null, null]' in started["detail"]
    assert verify(ledger).intact


# --- the running totals' request counters and the leases (issue 20) ------------------------------------------------


def fill_with_every_counter(ledger: Ledger) -> None:
    """fill(), plus a failed call, an estimated one and one charged at the guard's assumed upper-bound price (which
    counts as unpriced)."""
    fill(ledger)
    ledger.ingest(
        [
            LedgerEntry("test:4", usage(0.0, outcome="error", error_type="RateLimitError", duration_s=0.5)),
            LedgerEntry("test:5", usage(0.002, estimated=True, duration_s=2.5)),
            LedgerEntry(
                "test:6", usage(0.03, pricing=f"{ASSUMED_PRICE}gpt-4o (bundled; [guard] unpriced = upper-bound)")
            ),
        ]
    )


COUNTER_TAMPERING = [
    "UPDATE totals SET success = success + 100",
    "UPDATE daily_totals SET error = error + 1",
    "UPDATE hourly_totals SET blocked = 0",
    "UPDATE totals SET unpriced = unpriced - 1",
    "UPDATE daily_totals SET estimated = 0",
    "UPDATE hourly_totals SET duration_sum = duration_sum + 60",
    "UPDATE totals SET duration_count = duration_count * 2",
]


def test_the_request_counters_of_intact_totals_verify(ledger):
    fill_with_every_counter(ledger)

    verdict = verify(ledger)

    assert verdict.intact, verdict.problem
    assert verdict.kinds["call"] == 7


@pytest.mark.parametrize("query", COUNTER_TAMPERING)
def test_a_request_counter_altered_in_the_running_totals_is_named(ledger, query):
    fill_with_every_counter(ledger)
    tamper(ledger, query)

    verdict = verify(ledger)

    assert not verdict.intact
    table, column = query.split()[1], query.split()[3]
    assert verdict.problem.startswith(f"{table} for ")
    assert f"({column} " in verdict.problem


BUDGET = BudgetSpec("global", "day", 1.0)
PERIOD = (date(2026, 11, 27), date(2026, 11, 28))


def lease(ledger: Ledger, lease_id: str, amount: float) -> None:
    renew_lease(ledger, lease_id, BUDGET, 1.0, PERIOD, need_usd=amount, want_usd=amount, ttl_s=300)


def test_leases_renewed_and_drawn_on_by_ingested_calls_verify(ledger):
    lease(ledger, "process-a:global:day", 0.2)
    lease(ledger, "process-b:global:day", 0.3)
    lease(ledger, "process-a:global:day", 0.1)  # renewed
    ledger.ingest([LedgerEntry("leased:0", usage(0.05, leases=("process-a:global:day",)))])  # drawn on

    verdict = verify(ledger)

    assert verdict.intact, verdict.problem
    amounts = dict(ledger.backend.select("SELECT lease_id, outstanding_usd FROM leases"))
    assert amounts == {"process-a:global:day": pytest.approx(0.25), "process-b:global:day": pytest.approx(0.3)}


LEASE_TAMPERING = {
    # A forged lease with a negative amount hands out budget nobody has; a large one starves every process.
    "forged": (
        "INSERT INTO leases (lease_id, budget, period, period_start, outstanding_usd, expires_at, mac)"
        " VALUES ('forged:global:day', 'global', 'day', '2026-11-27', -5.0, 9999999999.0, NULL)"
    ),
    "forged with a copied MAC": (
        "INSERT INTO leases (lease_id, budget, period, period_start, outstanding_usd, expires_at, mac)"
        " SELECT 'forged:global:day', budget, period, period_start, -5.0, expires_at, mac FROM leases"
    ),
    "amount lowered": "UPDATE leases SET outstanding_usd = 0",
    "life extended": "UPDATE leases SET expires_at = expires_at + 86400",
    "MAC removed": "UPDATE leases SET mac = NULL",
}


@pytest.mark.parametrize("how", LEASE_TAMPERING)
def test_a_forged_or_altered_lease_is_named(ledger, how):
    fill(ledger)
    lease(ledger, "process-a:global:day", 0.2)
    tamper(ledger, LEASE_TAMPERING[how])

    verdict = verify(ledger)

    assert not verdict.intact
    assert "does not match its MAC: it was forged or altered" in verdict.problem
    assert verdict.problem.startswith("lease ")


def test_a_lease_an_earlier_release_left_unsealed_verifies_only_until_the_upgrades_recorded_expiry(ledger):
    """The schema-4 upgrade cannot MAC the leases it finds (no key at hand): it records their latest expiry."""
    lease(ledger, "process-a:global:day", 0.2)
    ((expiry,),) = ledger.backend.select("SELECT expires_at FROM leases")
    with ledger.backend.transaction() as cursor:
        # As the upgrade leaves a lease written before it, and what it records about such leases.
        ledger.backend.execute(cursor, "UPDATE leases SET mac = NULL")
        ledger.backend.set_meta(cursor, UNSEALED_LEASES_KEY, repr(float(expiry)))

    assert verify(ledger).intact
    tamper(ledger, "UPDATE leases SET expires_at = expires_at + 1")  # one living longer is not from before the upgrade
    assert "does not match its MAC" in verify(ledger).problem


def test_a_record_is_maced_exactly_as_the_chain_format_documents_it():
    """The documented formula, computed here with hmac and json alone: a faster encoder must give the same bytes, or
    every chain written before it would stop verifying."""
    import hashlib
    import hmac
    import json

    from spendwatch.exporter.ledger.audit import AuditKey

    content = ["span:01:02", 1795780800.0000002, None, 0.7000000000000001, 523, 'modèle "x"\n', float("inf"), ""]
    previous = "ab" * 32
    text = f"spendwatch-audit-v1|7|call|{previous}|" + json.dumps(content, separators=(",", ":"))
    expected = hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert AuditKey(KEY.encode(), "test").mac(7, "call", previous, content) == expected
