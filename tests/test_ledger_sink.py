"""The journal-backed sink: a returned call survives kill -9, processes share a ledger exactly, outages recover."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger, LedgerSink, journal_directory
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.dialects import SQLiteBackend
from spendwatch.exporter.sink import fallback_journal_directory
from spendwatch.instrumentation.records import UsageRecord
from tests.conftest import FAKE_API_KEY

UTC = ZoneInfo("UTC")


def a_record(cost: float = 0.001, request_model: str = "gpt-4o-mini", **fields) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        operation="chat",
        request_model=request_model,
        input_tokens=10,
        output_tokens=5,
        cost_usd=cost,
        pricing="genai-prices 0.2.3",
        start_time=1795780800.0,
        **fields,
    )


def open_ledger_at(path) -> Ledger:
    return Ledger(open_backend(str(path)), UTC)


def test_recorded_usage_reaches_the_ledger_and_the_journal_is_removed_on_close(tmp_path):
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, tmp_path / "journal")

    for _ in range(3):
        sink.record(a_record())
    sink.flush()

    assert ledger.call_count() == 3
    sink.close()
    assert list((tmp_path / "journal").iterdir()) == []


def test_a_full_journal_file_rotates_and_nothing_is_lost(tmp_path):
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, tmp_path / "journal")
    sink._journal.file_size = 4096  # force many rotations with small files

    for _ in range(500):
        sink.record(a_record())
    sink.close()

    assert ledger.call_count() == 500


KILLED_APP = textwrap.dedent(
    """
    import os, signal, sys
    from zoneinfo import ZoneInfo
    import openai
    from spendwatch.exporter import Ledger, LedgerSink
    from spendwatch.exporter.ledger import open_backend
    from spendwatch.instrumentation import register_sink
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    ledger_path, journal, base_url, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # A drainer that never runs: the ledger can only learn of these calls from the journal.
    register_sink(LedgerSink(Ledger(open_backend(ledger_path), ZoneInfo("UTC")), journal, drain_interval=3600))
    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"], base_url=base_url, max_retries=0)
    for _ in range(calls):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print("returned", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_calls_that_returned_survive_kill_9(tmp_path, stub):
    ledger_path, journal = tmp_path / "ledger.db", tmp_path / "journal"
    argv = [sys.executable, "-c", KILLED_APP, str(ledger_path), str(journal), stub.base_url, "5"]

    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": FAKE_API_KEY}
    )

    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "returned" in result.stdout
    ledger = open_ledger_at(ledger_path)
    assert ledger.call_count() == 0
    LedgerSink(ledger, journal).close()  # opening a sink replays dead writers' journals
    assert ledger.call_count() == 5
    expected = sum(usage.input_tokens for usage in stub.usage_log)
    assert ledger.totals()[0]["input_tokens"] == expected
    assert list(journal.iterdir()) == []


def _hammer(ledger_path: str, journal: str, threads: int, per_thread: int) -> None:
    sink = LedgerSink(open_ledger_at(ledger_path), journal, drain_interval=0.01)

    def write() -> None:
        for _ in range(per_thread):
            sink.record(a_record(0.001))

    workers = [threading.Thread(target=write) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sink.close()


@pytest.mark.slow
def test_four_processes_with_threads_share_one_sqlite_ledger_exactly(tmp_path):
    ledger_path, journal = str(tmp_path / "ledger.db"), str(tmp_path / "journal")
    open_ledger_at(ledger_path).close()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_hammer, args=(ledger_path, journal, 4, 250)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0

    (total,) = open_ledger_at(ledger_path).totals()
    assert total["success"] == 4 * 4 * 250
    assert total["cost_usd"] == pytest.approx(4 * 4 * 250 * 0.001, rel=1e-12)


def test_an_unwritable_ledger_is_counted_and_drained_once_it_is_back(tmp_path):
    path = str(tmp_path / "ledger.db")
    open_ledger_at(path).close()
    ledger = Ledger(SQLiteBackend(path, busy_timeout_s=0.05), UTC)
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every write fails for now

    sink.record(a_record())
    assert sink.flush() is False
    assert sink.ledger_errors == 1

    blocker.execute("ROLLBACK")
    assert sink.flush() is True
    assert ledger.call_count() == 1
    sink.close()


def test_a_live_writers_journal_is_not_replayed_by_another_process(tmp_path):
    ledger = open_ledger_at(tmp_path / "ledger.db")
    writer = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    writer.record(a_record())

    other = LedgerSink(open_ledger_at(tmp_path / "ledger.db"), tmp_path / "journal", drain_interval=3600)

    assert other.recover() == 0
    assert ledger.call_count() == 0
    writer.close()
    other.close()
    assert ledger.call_count() == 1


def test_journal_directory_sits_beside_a_sqlite_ledger_and_under_state_for_postgres(tmp_path):
    assert journal_directory("/data/ledger.db") != journal_directory("/data/other.db")
    assert str(journal_directory("/data/ledger.db")) == "/data/ledger.db.journal"
    postgres = journal_directory("postgresql://u:p@db/spend", state_home=str(tmp_path))
    assert postgres.parent == tmp_path / "spendwatch"
    assert "p@db" not in str(postgres)
    assert postgres != journal_directory("postgresql://u:p@db/other", state_home=str(tmp_path))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_worker_writes_its_own_journal(tmp_path):
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, tmp_path / "journal")
    pid = os.fork()
    if pid == 0:  # the child: record and close, as a gunicorn worker would at shutdown
        try:
            sink.record(a_record())
            sink.close()
            os._exit(0)
        finally:
            os._exit(1)  # never return into the parent's test run
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.record(a_record())
    sink.close()

    assert open_ledger_at(tmp_path / "ledger.db").call_count() == 2


@pytest.mark.slow
def test_four_processes_with_threads_share_one_postgresql_ledger_exactly(tmp_path, postgres_url):
    open_backend(postgres_url).close()
    context = multiprocessing.get_context("spawn")
    journals = [str(tmp_path / f"journal-{n}") for n in range(4)]  # as on four hosts
    processes = [context.Process(target=_hammer, args=(postgres_url, journal, 4, 100)) for journal in journals]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0

    (total,) = open_ledger_at(postgres_url).totals()
    assert total["success"] == 4 * 4 * 100
    assert total["cost_usd"] == pytest.approx(4 * 4 * 100 * 0.001, rel=1e-12)


def test_postgresql_going_away_is_counted_and_drained_once_it_is_back(tmp_path, postgres_url):
    import psycopg

    ledger = open_ledger_at(postgres_url)
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
    database = postgres_url.rsplit("/", 1)[1]
    admin = psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    sink.record(a_record())
    assert sink.flush() is False
    assert sink.flush() is False  # still down: reconnecting fails too
    assert sink.ledger_errors == 2

    admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    assert sink.flush() is True
    assert ledger.call_count() == 1
    sink.close()
    admin.close()


def test_a_record_the_ledger_can_never_store_is_set_aside_and_blocks_nothing(tmp_path):
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)

    sink.record(a_record())
    sink.record(a_record(request_model="poison\ud800"))  # a lone surrogate: SQLite cannot encode it
    sink.record(a_record())

    assert sink.flush() is True
    assert ledger.call_count() == 2
    assert sink.ledger_errors >= 1
    (kept,) = (tmp_path / "journal" / "quarantine.jsonl").read_text().splitlines()
    assert "poison" in kept
    sink.close()


def test_a_journal_directory_that_cannot_be_created_falls_back_to_the_state_directory(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "a-file").write_text("not a directory")
    ledger = open_ledger_at(tmp_path / "ledger.db")

    sink = LedgerSink(ledger, tmp_path / "a-file" / "journal", drain_interval=3600)
    sink.record(a_record())

    assert sink.directory == fallback_journal_directory(ledger.location)
    assert sink.directory.is_relative_to(tmp_path / "state")
    assert "journaling in" in caplog.text
    assert sink.flush() is True
    assert ledger.call_count() == 1
    sink.close()
