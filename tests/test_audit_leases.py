"""A lease's life is in the audit chain: a lease deleted, inserted or put back without it is named by ``audit verify``,
while every legitimate ending (its TTL, its owner's journal in, by hand, its process's exit) verifies, and renewals
append nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from datetime import date
from zoneinfo import ZoneInfo

import pytest

from bench.baseline import checkout
from spendwatch.exporter import Ledger, LedgerEntry
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import AUDIT_KEY_ENV, verify
from spendwatch.exporter.ledger.lease_rows import LEASE_COLUMNS, write_lease
from spendwatch.exporter.ledger.leases import release_by_hand, release_lease, renew_lease
from spendwatch.exporter.ledger.migrations import VERSION_KEY
from spendwatch.exporter.recovery import release_settled_leases
from spendwatch.exporter.settings import BudgetSpec
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
BUDGET = BudgetSpec("global", "day", 1.0)
PERIOD = (date(2026, 11, 27), date(2026, 11, 28))
# A process of this host that is not running: its journal counts as in the ledger (none is left in the directory).
DEAD_OWNER = f"{socket.gethostname()}:999999999:1"


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)


def lease(ledger: Ledger, lease_id: str, amount: float = 0.1, *, ttl_s: float = 300, owner: str | None = None):
    return renew_lease(
        ledger, lease_id, BUDGET, 1.0, PERIOD, need_usd=amount, want_usd=amount, ttl_s=ttl_s, owner=owner
    )


def tamper(ledger: Ledger, query: str, parameters: tuple = ()) -> None:
    with ledger.backend.transaction() as cursor:
        ledger.backend.execute(cursor, query, parameters)


def lease_ids(ledger: Ledger) -> set[str]:
    return {row[0] for row in ledger.backend.select("SELECT lease_id FROM leases")}


def call(entry_id: str, lease_id: str) -> LedgerEntry:
    record = UsageRecord(
        provider="openai",
        operation="chat",
        request_model="gpt-4o-mini",
        input_tokens=100,
        output_tokens=20,
        cost_usd=0.01,
        pricing="bundled",
        start_time=1795780800.0,
        leases=(lease_id,),
    )
    return LedgerEntry(entry_id, record)


def test_a_deleted_lease_is_named(ledger):
    lease(ledger, "process-a:global:day", owner=DEAD_OWNER)
    lease(ledger, "process-b:global:day")
    tamper(ledger, "DELETE FROM leases WHERE lease_id = 'process-a:global:day'")

    verdict = verify(ledger)

    assert not verdict.intact
    assert "lease 'process-a:global:day'" in verdict.problem and "was deleted" in verdict.problem
    assert verdict.bad_seq == 1  # the record that opened it


def test_opening_appends_one_record_and_renewals_and_draws_none(ledger):
    lease(ledger, "process-a:global:day")
    for _ in range(5):
        lease(ledger, "process-a:global:day", 0.01)
    ledger.ingest([call("leased:0", "process-a:global:day")])

    verdict = verify(ledger)

    assert verdict.intact, verdict.problem
    assert verdict.kinds == {"call": 1, "event": 0, "reprice": 0, "lease_open": 1}


def test_an_unowned_lease_ending_at_its_ttl_verifies(ledger):
    lease(ledger, "process-a:global:day", ttl_s=-1)  # past its TTL at once
    lease(ledger, "process-b:global:day")  # a renewal ends the unowned leases past their TTL

    verdict = verify(ledger)

    assert lease_ids(ledger) == {"process-b:global:day"}
    assert verdict.intact, verdict.problem
    assert verdict.kinds["lease_close"] == 1


def test_a_dead_owners_lease_released_once_its_journal_is_in_verifies(ledger, tmp_path):
    lease(ledger, "process-a:global:day", owner=DEAD_OWNER)
    lease(ledger, "process-b:global:day")

    assert release_settled_leases(ledger, [tmp_path], own_journal_in=True) == 1

    verdict = verify(ledger)
    assert lease_ids(ledger) == {"process-b:global:day"}
    assert verdict.intact, verdict.problem
    assert verdict.kinds["lease_close"] == 1


def test_a_lease_released_by_hand_or_at_exit_verifies(ledger):
    lease(ledger, "process-a:global:day", ttl_s=-1, owner=DEAD_OWNER)
    lease(ledger, "process-b:global:day")

    released, event_id = release_by_hand(ledger, ["process-a:global:day"], by="ops", reason="host gone")
    release_lease(ledger, "process-b:global:day")  # the guard at its process's exit

    verdict = verify(ledger)
    assert [held.lease_id for held in released] == ["process-a:global:day"] and event_id
    assert lease_ids(ledger) == set()
    assert verdict.intact, verdict.problem
    assert verdict.kinds["lease_close"] == 2


def test_a_lease_row_the_chain_never_opened_is_named_even_with_a_valid_mac(ledger):
    lease(ledger, "process-a:global:day")
    row = ("inserted:global:day", "global", "day", "2026-11-27", 0.5, 9999999999.0, None)
    with ledger.backend.transaction() as cursor:  # with the key, but not through the chain
        write_lease(ledger.backend, cursor, ledger.audit_key, row)

    verdict = verify(ledger)

    assert not verdict.intact
    assert "lease 'inserted:global:day'" in verdict.problem and "never opened" in verdict.problem


def test_a_closed_lease_put_back_is_named(ledger):
    lease(ledger, "process-a:global:day")
    columns = ", ".join((*LEASE_COLUMNS, "mac"))
    ((*saved,),) = ledger.backend.select(f"SELECT {columns} FROM leases")
    release_lease(ledger, "process-a:global:day")
    marks = ", ".join("?" * len(saved))
    tamper(ledger, f"INSERT INTO leases ({columns}) VALUES ({marks})", tuple(saved))  # its own MAC, replayed

    verdict = verify(ledger)

    assert not verdict.intact
    assert "lease 'process-a:global:day'" in verdict.problem and "or was closed" in verdict.problem


def test_a_schema_6_ledgers_leases_verify_after_the_upgrade_and_end_as_before(tmp_path):
    """Leases written before their life was chained (schema 6: MACed rows, no chain record) are listed by the
    upgrade: they verify, their renewals and endings too, while a lease inserted later is still caught."""
    location = str(tmp_path / "ledger.db")
    ledger = Ledger(open_backend(location), UTC)
    rows = [
        ("before:a", "global", "day", "2026-11-27", 0.2, 9999999999.0, DEAD_OWNER),
        ("before:b", "global", "day", "2026-11-27", 0.1, 9999999999.0, None),
    ]
    with ledger.backend.transaction() as cursor:  # as schema 6 wrote them: the row and its MAC, nothing chained
        for row in rows:
            write_lease(ledger.backend, cursor, ledger.audit_key, row)
        ledger.backend.execute(cursor, "DELETE FROM spendwatch_meta WHERE key = 'leases_unchained'")
        ledger.backend.set_meta(cursor, VERSION_KEY, "6")
    ledger.close()

    upgraded = Ledger(open_backend(location), UTC)
    try:
        assert verify(upgraded).intact, verify(upgraded).problem
        lease(upgraded, "before:b", 0.05)  # renewed in place by this release
        assert release_settled_leases(upgraded, [tmp_path], own_journal_in=True) == 1  # before:a's owner is dead
        verdict = verify(upgraded)
        assert verdict.intact, verdict.problem
        with upgraded.backend.transaction() as cursor:  # with the key, not one the upgrade found, never opened
            row = ("after:c", "global", "day", "2026-11-27", 0.1, 9999999999.0, None)
            write_lease(upgraded.backend, cursor, upgraded.audit_key, row)
        assert "lease 'after:c'" in verify(upgraded).problem
    finally:
        upgraded.close()


# Leases as the last release before the ledger package wrote them: no MAC, no owner, no chain record.
_LEASES_WITH_EARLIER_RELEASE = """
import sys
from datetime import date
from zoneinfo import ZoneInfo

from spendwatch.exporter.leases import renew_lease
from spendwatch.exporter.ledger import Ledger
from spendwatch.exporter.ledger_backends import open_backend
from spendwatch.exporter.settings import BudgetSpec

ledger = Ledger(open_backend(sys.argv[1]), ZoneInfo("UTC"))
for lease_id in ("old:a", "old:b"):
    renew_lease(ledger, lease_id, BudgetSpec("global", "day", 1.0), 1.0, (date(2026, 11, 27), date(2026, 11, 28)),
                need_usd=0.1, want_usd=0.1, now=4102444800.0, ttl_s=300)
ledger.close()
"""


def test_leases_the_earlier_release_wrote_verify_and_may_end(tmp_path):
    path = tmp_path / "ledger.db"
    with checkout("cd9e6d0") as run_dir:
        script = textwrap.dedent(_LEASES_WITH_EARLIER_RELEASE)
        written = subprocess.run(
            [sys.executable, "-c", script, str(path)], cwd=run_dir, capture_output=True, text=True, timeout=300
        )
    assert written.returncode == 0, written.stderr
    ledger = Ledger(open_backend(str(path)), UTC)
    try:
        assert lease_ids(ledger) == {"old:a", "old:b"}
        assert verify(ledger).intact, verify(ledger).problem
        columns = ", ".join((*LEASE_COLUMNS, "mac"))
        ((*saved,),) = ledger.backend.select(f"SELECT {columns} FROM leases WHERE lease_id = 'old:a'")
        release_lease(ledger, "old:a")
        tamper(ledger, "DELETE FROM leases WHERE lease_id = 'old:b'")  # no chain record vouches for it: accepted
        verdict = verify(ledger)
        assert verdict.intact, verdict.problem
        marks = ", ".join("?" * len(saved))
        tamper(ledger, f"INSERT INTO leases ({columns}) VALUES ({marks})", tuple(saved))  # put back after its release
        assert "lease 'old:a'" in verify(ledger).problem
    finally:
        ledger.close()
