"""Transient is not poison (issue 20, cause 2): a full disk or a lost server keeps records in the journal until they
land; only a value the database refuses is quarantined, and a quarantined record is visible and replayable, audited.

Every error is provoked for real: SQLite and PostgreSQL (started by the tests) on a small tmpfs the test mounts and
fills, servers whose connections are terminated, values the drivers or the servers refuse.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spendwatch.cli.doctor import OK, WARN, run_checks
from spendwatch.exporter import Ledger, LedgerEntry, LedgerSink, quarantine
from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import LedgerUnavailable, open_backend
from spendwatch.exporter.ledger.audit import AUDIT_KEY_ENV, verify
from spendwatch.exporter.ledger.errors import is_poison
from spendwatch.exporter.sink import journal_directory
from spendwatch.instrumentation.records import UsageRecord
from tests.disks import SmallDisk
from tests.servers import free_port, http_get, start_process

UTC = ZoneInfo("UTC")
SPENDWATCH = Path(sys.executable).parent / "spendwatch"
KEY = "0123456789abcdef0123456789abcdef-quarantine-test"
_names = itertools.count(1)


def a_record(i: int = 0, **fields) -> UsageRecord:
    values = {
        "provider": "openai",
        "operation": "chat",
        "request_model": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": 0.001,
        "pricing": "genai-prices 0.2.3",
        "start_time": 1795780800.0 + i,
    }
    return UsageRecord(**(values | fields))


def raised_by(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the error is what the test looks at
        return error
    raise AssertionError("no error was raised")


def ingest_one(ledger: Ledger, record: UsageRecord) -> BaseException:
    return raised_by(lambda: ledger.ingest([LedgerEntry(f"e-{next(_names)}", record)]))


# --- a small disk the test fills ---------------------------------------------------------------------------------


@pytest.fixture
def postgres_on_small_disk(postgres_server, small_disk) -> Iterator[tuple[str, SmallDisk]]:
    """A new database whose tables live on a 32 MB tmpfs (a tablespace; the WAL stays on the server's disk, so a full
    tmpfs is PostgreSQL's "could not extend file", SQLSTATE 53100, and the server stays up)."""
    disk = small_disk("32m")
    postgres = pwd.getpwnam("postgres")
    os.chown(disk.path, postgres.pw_uid, postgres.pw_gid)
    n = next(_names)
    admin_url = postgres_server.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE TABLESPACE small_{n} LOCATION '{disk.path}'")
        admin.execute(f"CREATE DATABASE full_{n} TABLESPACE small_{n}")
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/full_{n}", disk
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS full_{n} WITH (FORCE)")
            admin.execute(f"DROP TABLESPACE IF EXISTS small_{n}")


@pytest.fixture(autouse=True)
def audit_key(monkeypatch):
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)


# --- what is poison, what is transient: each error provoked for real ------------------------------------------------

POISON_RECORDS = {
    "an int beyond 64 bits": {"input_tokens": 2**70},
    "a lone surrogate": {"request_model": "gpt\ud800"},
    "no model (NOT NULL)": {"request_model": None},
    "a token count that is not a number": {"input_tokens": "many"},
    "attributes that are not JSON": {"attributes": {"a": object()}},
}


@pytest.mark.parametrize("fields", POISON_RECORDS.values(), ids=POISON_RECORDS.keys())
def test_a_value_sqlite_refuses_is_poison(tmp_path, fields):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)
    assert is_poison(ingest_one(ledger, a_record(**fields)))
    assert ledger.call_count() == 0


def test_sqlite_refusals_by_binding_and_check_constraint_are_poison(tmp_path):
    connection = sqlite3.connect(tmp_path / "raw.db")
    connection.execute("CREATE TABLE t (a INTEGER CHECK (a >= 0))")
    assert is_poison(raised_by(lambda: connection.execute("INSERT INTO t VALUES (?)", ({"a": 1},))))
    assert is_poison(raised_by(lambda: connection.execute("INSERT INTO t VALUES (?)", (-1,))))


def test_a_full_sqlite_disk_a_lock_a_read_only_file_and_a_closed_ledger_are_transient(tmp_path, small_disk):
    disk = small_disk("2m")
    ledger = Ledger(open_backend(str(disk.path / "ledger.db")), UTC)
    disk.fill()
    full = ingest_one(ledger, a_record(request_model="m" * 200_000))  # pages the full disk cannot give
    # The error says what happened (SQLite rolled the transaction back itself; a ROLLBACK after it would say "no
    # transaction is active" instead).
    assert isinstance(full, sqlite3.OperationalError) and "full" in str(full) and not is_poison(full)
    disk.free()

    holder = sqlite3.connect(disk.path / "ledger.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    ledger.set_busy_timeout(0)
    locked = ingest_one(ledger, a_record())
    assert "locked" in str(locked) and not is_poison(locked)
    holder.execute("ROLLBACK")

    read_only = sqlite3.connect(f"file:{disk.path / 'ledger.db'}?mode=ro", uri=True)
    refused = raised_by(lambda: read_only.execute("INSERT INTO spendwatch_meta VALUES ('k', 'v')"))
    assert "readonly" in str(refused) and not is_poison(refused)

    ledger.backend.close()
    closed = ingest_one(ledger, a_record())
    assert "closed" in str(closed) and not is_poison(closed)
    assert not is_poison(LedgerUnavailable("connection refused"))


@pytest.mark.parametrize("fields", POISON_RECORDS.values(), ids=POISON_RECORDS.keys())
def test_a_value_postgresql_refuses_is_poison(postgres_url, fields):
    ledger = Ledger(open_backend(postgres_url), UTC)
    assert is_poison(ingest_one(ledger, a_record(**fields)))
    assert ledger.call_count() == 0


def test_text_postgresql_cannot_hold_is_poison(postgres_url):
    ledger = Ledger(open_backend(postgres_url), UTC)
    assert is_poison(ingest_one(ledger, a_record(request_model="gpt\x00")))  # psycopg: text cannot hold NUL
    too_long = ingest_one(ledger, a_record(request_model=secrets.token_hex(8000)))  # a totals key beyond an index row
    assert isinstance(too_long, psycopg.errors.ProgramLimitExceeded) and is_poison(too_long)
    assert ledger.call_count() == 0


def test_postgresql_refusals_by_type_and_constraint_are_poison(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (a BIGINT CHECK (a >= 0), b INTEGER, c TEXT)")
        cases = {
            "NumericValueOutOfRange": ("INSERT INTO t (a) VALUES (%s)", (2**70,)),
            "CheckViolation": ("INSERT INTO t (a) VALUES (%s)", (-1,)),
            "InvalidTextRepresentation": ("INSERT INTO t (b) VALUES (CAST(%s AS TEXT)::INTEGER)", ("many",)),
            "CharacterNotInRepertoire": ("INSERT INTO t (c) VALUES (convert_from(%s, 'UTF8'))", (b"\xff",)),
            "ProgrammingError": ("INSERT INTO t (c) VALUES (%s)", ({"a": 1},)),  # psycopg: cannot adapt type
        }
        for name, (query, parameters) in cases.items():
            error = raised_by(lambda q=query, p=parameters: connection.execute(q, p))
            assert type(error).__name__ == name and is_poison(error), error


def test_a_full_postgresql_disk_a_terminated_connection_and_a_server_down_are_transient(postgres_on_small_disk):
    url, disk = postgres_on_small_disk
    ledger = Ledger(open_backend(url), UTC)
    disk.fill()
    # 5 MB of pages the full disk cannot give (random: TOAST would compress a repeated letter to nothing)
    full = ingest_one(ledger, a_record(request_model=secrets.token_hex(2_500_000)))
    assert isinstance(full, psycopg.errors.DiskFull) and not is_poison(full)
    disk.free()

    backend_pid = ledger.backend.connection.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
    terminated = ingest_one(ledger, a_record())
    assert isinstance(terminated, psycopg.OperationalError) and not is_poison(terminated)

    refused = raised_by(lambda: psycopg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=5))
    assert isinstance(refused, psycopg.OperationalError) and not is_poison(refused)


# --- through the sink: a full disk retries, never quarantines -------------------------------------------------------


def quarantined_in(directory: Path) -> list[str]:
    path = directory / quarantine.QUARANTINE_FILE
    return path.read_text().splitlines() if path.exists() else []


def test_a_full_sqlite_disk_quarantines_nothing_and_every_record_lands_once_space_is_back(tmp_path, small_disk):
    disk = small_disk("4m")
    ledger = Ledger(open_backend(str(disk.path / "ledger.db")), UTC)
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    for i in range(200):
        sink.record(a_record(i))
    assert sink.flush() is True
    disk.fill()

    for i in range(200, 3200):
        sink.record(a_record(i, request_model=f"model-{i % 40}"))
    assert sink.flush() is False  # the ledger is full: the records wait in the journal
    assert sink.flush() is False
    assert quarantined_in(tmp_path / "journal") == []
    assert ledger.call_count() == 200

    disk.free()
    assert sink.flush() is True
    assert ledger.call_count() == 3200
    assert quarantined_in(tmp_path / "journal") == []
    sink.close()
    assert verify(ledger).intact


def test_a_full_postgresql_disk_quarantines_nothing_and_every_record_lands_once_space_is_back(
    tmp_path, postgres_on_small_disk
):
    url, disk = postgres_on_small_disk
    ledger = Ledger(open_backend(url), UTC)
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    sink.record(a_record())
    assert sink.flush() is True
    disk.fill()

    for i in range(1, 3001):
        sink.record(a_record(i, request_model=f"model-{i % 40}-" + "x" * 200))
    assert sink.flush() is False  # could not extend file: No space left on device
    assert quarantined_in(tmp_path / "journal") == []
    assert ledger.call_count() == 1

    disk.free()
    assert sink.flush() is True
    assert ledger.call_count() == 3001
    assert quarantined_in(tmp_path / "journal") == []
    sink.close()
    assert verify(ledger).intact


# --- a poison record: quarantined, visible, replayed once, audited --------------------------------------------------


def spendwatch(environ: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPENDWATCH), *args], env=environ, capture_output=True, text=True, timeout=120)


def scraped_quarantined(ledger: Ledger) -> float:
    registry = CollectorRegistry()
    SpendCollector(ledger, registry=registry)
    (line,) = [
        line for line in generate_latest(registry).decode().splitlines() if line.startswith("spendwatch_records_quar")
    ]
    return float(line.split()[-1])


@pytest.fixture
def environ(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kept = {key: value for key, value in os.environ.items() if not key.startswith(("SPENDWATCH_", "OTEL_"))}
    return kept | {"SPENDWATCH_METRICS_ADDRESS": "off", AUDIT_KEY_ENV: KEY}


def test_a_poison_record_is_quarantined_visible_and_replayed_once_into_the_ledger_audited(postgres_url, environ):
    environ["SPENDWATCH_LEDGER"] = postgres_url
    ledger = Ledger(open_backend(postgres_url), UTC)
    # A constraint the ledger's database enforces (a DBA's, a column too narrow): this model is refused.
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE calls ADD CONSTRAINT no_poison CHECK (model <> 'poison-model')")
    directory = journal_directory(postgres_url)
    sink = LedgerSink(ledger, directory, drain_interval=3600)
    sink.record(a_record(1))
    sink.record(a_record(2, request_model="poison-model", cost_usd=0.25))
    sink.record(a_record(3))
    assert sink.flush() is True
    sink.close()
    assert ledger.call_count() == 2
    (kept,) = quarantined_in(directory)
    assert json.loads(kept)["error"].startswith("CheckViolation")

    # Visible: doctor warns with the count and the command, /metrics counts it, the CLI lists it.
    doctor = {result.name: result for result in run_checks(environ)}["quarantine"]
    assert doctor.status == WARN
    assert "1 records" in doctor.summary and "spendwatch quarantine replay" in doctor.fix
    assert scraped_quarantined(ledger) == 1.0
    listed = spendwatch(environ, "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (item,) = json.loads(listed.stdout)["quarantined"]
    assert item["replayable"] and item["call"]["model"] == "poison-model" and item["call"]["cost_usd"] == 0.25

    # Still refused: replay keeps it and says so.
    refused = spendwatch(environ, "quarantine", "replay")
    assert refused.returncode == 1 and "still refused" in refused.stdout
    assert len(quarantined_in(directory)) == 1

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE calls DROP CONSTRAINT no_poison")
    replayed = spendwatch(environ, "quarantine", "replay", "--reason", "constraint dropped")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed 1 records (1 new" in replayed.stdout
    again = spendwatch(environ, "quarantine", "replay")
    assert again.returncode == 0 and "no record is in quarantine" in again.stdout

    assert ledger.call_count() == 3
    assert [row["model"] for row in ledger.table_rows("calls")].count("poison-model") == 1
    assert sum(row["cost_usd"] for row in ledger.totals()) == pytest.approx(0.252)
    events = [json.loads(event["detail"]) for event in ledger.events(quarantine.REPLAYED_EVENT)]
    assert events[-1]["replayed"] == [item["entry_id"]] and events[-1]["reason"] == "constraint dropped"
    assert quarantined_in(directory) == []
    assert scraped_quarantined(ledger) == 0.0
    assert {result.name: result for result in run_checks(environ)}["quarantine"].status == OK
    audit = spendwatch(environ, "audit", "verify")
    assert audit.returncode == 0, audit.stdout


def test_a_record_sqlite_can_never_store_stays_in_quarantine_and_blocks_nothing(tmp_path, environ):
    environ["SPENDWATCH_LEDGER"] = str(tmp_path / "ledger.db")
    ledger = Ledger(open_backend(environ["SPENDWATCH_LEDGER"]), UTC)
    directory = journal_directory(environ["SPENDWATCH_LEDGER"])
    sink = LedgerSink(ledger, directory, drain_interval=3600)
    for i in range(5):
        sink.record(a_record(i, request_model="gpt\ud800" if i == 2 else "gpt-4o-mini"))
    assert sink.flush() is True
    sink.close()
    assert ledger.call_count() == 4
    assert len(quarantined_in(directory)) == 1

    assert served_quarantined(environ, tmp_path) == 1.0  # what spendwatch serve shows, from the files

    replay = spendwatch(environ, "quarantine", "replay")
    assert replay.returncode == 1 and "UnicodeEncodeError" in replay.stdout
    assert len(quarantined_in(directory)) == 1  # nothing lost
    assert ledger.call_count() == 4
    assert spendwatch(environ, "audit", "verify").returncode == 0


def served_quarantined(environ: dict, tmp_path: Path) -> float:
    address = f"127.0.0.1:{free_port()}"
    argv = [str(SPENDWATCH), "serve", "--address", address]
    server = start_process(argv, log_path=tmp_path / "serve.log", env=environ)
    try:
        server.wait_ready(lambda: http_get(f"http://{address}/metrics")[0] == 200, 60, "spendwatch serve")
        text = http_get(f"http://{address}/metrics")[1].decode()
    finally:
        server.stop()
    (line,) = [line for line in text.splitlines() if line.startswith("spendwatch_records_quarantined ")]
    return float(line.split()[-1])


def test_a_line_an_earlier_release_wrote_is_listed_and_counted_and_never_removed(tmp_path, environ):
    environ["SPENDWATCH_LEDGER"] = str(tmp_path / "ledger.db")
    directory = journal_directory(environ["SPENDWATCH_LEDGER"])
    directory.mkdir()
    old_line = {"entry_id": "f:64", "error": "CHECK constraint failed", "record": repr(a_record())}
    (directory / quarantine.QUARANTINE_FILE).write_text(json.dumps(old_line) + "\n")
    quarantine.keep([directory], LedgerEntry("f:128", a_record(1)), ValueError("refused then"))

    listed = spendwatch(environ, "quarantine", "list")
    assert "f:64" in listed.stdout and "not replayable" in listed.stdout and "2 records" in listed.stdout
    replayed = spendwatch(environ, "quarantine", "replay")
    assert replayed.returncode == 0 and "replayed 1 records (1 new" in replayed.stdout
    (left,) = quarantined_in(directory)
    assert json.loads(left) == old_line


def test_a_replay_cut_short_by_an_outage_removes_nothing_and_counts_nothing_twice(tmp_path):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)
    directory = tmp_path / "journal"
    for i in range(3):
        quarantine.keep([directory], LedgerEntry(f"j:{i}", a_record(i)), ValueError("refused then"))
    quarantine.keep([directory], LedgerEntry("j:0", a_record(0)), ValueError("kept twice"))
    assert quarantine.count([directory]) == 3
    ledger.ingest([LedgerEntry("j:0", a_record(0))])  # one made it in before (a replay cut short)

    holder = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    ledger.set_busy_timeout(0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        quarantine.replay(ledger, [directory])
    holder.execute("ROLLBACK")
    assert quarantine.count([directory]) == 3

    result = quarantine.replay(ledger, [directory])
    assert (sorted(result.replayed), result.new) == (["j:0", "j:1", "j:2"], 2)
    assert ledger.call_count() == 3 and quarantine.count([directory]) == 0
    assert verify(ledger).intact
