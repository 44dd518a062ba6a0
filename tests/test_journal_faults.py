"""No acknowledged call is lost on the record path: a journal that cannot be written where it lives moves to the next
place of the chain (beside the ledger, $XDG_RUNTIME_DIR, the state directory), then to a bounded memory queue that
is written out as soon as a place or the ledger accepts it; only past that bound is a record dropped, and counted
where ``spendwatch serve`` reads it. Faults are real: full and read-only tmpfs mounts (root ignores permission bits),
and a ledger another writer holds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger, LedgerSink, inflight
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.dialects import SQLiteBackend
from spendwatch.exporter.sink import journal_directories, waiting_records
from spendwatch.instrumentation import records
from spendwatch.instrumentation.records import UsageRecord, emit, register_sink, unregister_sink
from tests.disks import SmallDisk
from tests.otlp_intake import Serve
from tests.servers import wait_until
from tests.test_auto_instrumentation import start_instrumented

UTC = ZoneInfo("UTC")
BIN = Path(sys.executable).parent
POLL_TIMEOUT = 120.0  # seconds: generous, for a loaded two-core machine
SMALL_FILE = 64 * 1024  # journal files small enough to rotate after a few hundred records


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The journal chain's fallbacks under the test's control: no $XDG_RUNTIME_DIR unless a test sets one."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return monkeypatch


def a_record(n: int = 0) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        operation="chat",
        request_model="gpt-4o-mini",
        input_tokens=10 + n,
        output_tokens=5,
        cost_usd=0.001,
        pricing="genai-prices 0.2.3",
        start_time=1795780800.0,
    )


def emitted(sink: LedgerSink, count: int) -> None:
    """``count`` records through the instrumentation's own hand-off (which swallows what a sink raises)."""
    register_sink(sink)
    try:
        for n in range(count):
            emit(a_record(n))
    finally:
        unregister_sink(sink)


def open_ledger_at(path) -> Ledger:
    return Ledger(open_backend(str(path)), UTC)


def locked_ledger(path: Path) -> tuple[Ledger, sqlite3.Connection]:
    """A ledger another writer holds (every write fails at once) until ``holder.execute("ROLLBACK")``."""
    open_ledger_at(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return Ledger(SQLiteBackend(str(path), busy_timeout_s=0.05), UTC), holder


# --- the chain of places ------------------------------------------------------------------------------------------


def test_a_journal_that_cannot_rotate_on_a_full_disk_goes_on_in_the_runtime_directory(tmp_path, small_disk, places):
    disk = small_disk("6m")
    places.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, disk.path / "journal", drain_interval=3600)
    sink._journal.file_size = SMALL_FILE  # the next file is due after a few hundred records
    disk.fill()

    emitted(sink, 2000)

    assert sink.directory.is_relative_to(tmp_path / "run")
    assert sink.flush() is True
    assert ledger.call_count() == 2000
    assert sink.records_dropped == 0
    sink.close()


def test_a_journal_directory_on_a_read_only_disk_moves_to_the_runtime_directory_with_the_state_one_full(
    tmp_path, small_disk, places
):
    read_only, full = small_disk("1m"), small_disk("1m")
    (read_only.path / "journal").mkdir()
    read_only.read_only()
    full.fill()
    places.setenv("XDG_STATE_HOME", str(full.path))
    places.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    ledger, holder = locked_ledger(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, read_only.path / "journal", drain_interval=3600)

    emitted(sink, 10)

    assert sink.directory.is_relative_to(tmp_path / "run")
    assert sink.flush() is False
    assert waiting_records(journal_directories(str(tmp_path / "ledger.db"))) == 10
    holder.execute("ROLLBACK")
    assert sink.flush() is True
    assert ledger.call_count() == 10
    sink.close()


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from zoneinfo import ZoneInfo
    from spendwatch.exporter import Ledger, LedgerSink
    from spendwatch.exporter.ledger import open_backend
    from spendwatch.instrumentation.records import UsageRecord, emit, register_sink

    sink = LedgerSink(Ledger(open_backend(sys.argv[1]), ZoneInfo("UTC")), sys.argv[2], drain_interval=3600)
    register_sink(sink)
    for n in range(100):
        emit(UsageRecord(provider="openai", operation="chat", request_model="gpt-4o-mini", input_tokens=n))
    print("ACKNOWLEDGED", sink.directory, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_dead_process_journal_in_a_fallback_place_is_seen_waiting_and_replayed(tmp_path, small_disk, places):
    disk = small_disk("1m")
    disk.fill()
    places.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    places.setenv("XDG_STATE_HOME", str(disk.path / "state"))  # full as well
    ledger_path = str(tmp_path / "ledger.db")
    open_ledger_at(ledger_path).close()
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)

    done = subprocess.run([sys.executable, str(script), ledger_path, str(disk.path / "journal")], capture_output=True)

    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.decode().split()[1].startswith(str(tmp_path / "run"))
    assert waiting_records(journal_directories(ledger_path)) == 100  # what doctor reports
    LedgerSink(open_ledger_at(ledger_path), disk.path / "journal", drain_interval=3600).close()  # replays
    assert open_ledger_at(ledger_path).call_count() == 100
    assert waiting_records(journal_directories(ledger_path)) == 0


# --- nowhere to journal: memory, and the way out of it -------------------------------------------------------------


def test_a_sink_started_with_nowhere_to_journal_keeps_records_in_memory_until_a_place_takes_them(
    tmp_path, small_disk, places, caplog
):
    disk = small_disk("6m")
    disk.fill()
    places.setenv("XDG_STATE_HOME", str(disk.path / "state"))
    ledger, holder = locked_ledger(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, disk.path / "journal", drain_interval=3600)

    emitted(sink, 50)

    assert sink.flush() is False
    assert waiting_records(sink.directories) == 0  # in memory: no file anywhere could take them
    assert "records wait in memory" in caplog.text
    disk.free()
    assert sink.flush() is False  # the ledger is still held by another writer...
    assert waiting_records(sink.directories) == 50  # ...but the records are in a journal file now
    assert sink.directory == disk.path / "journal"
    holder.execute("ROLLBACK")
    assert sink.flush() is True
    assert ledger.call_count() == 50
    assert sink.records_dropped == 0
    sink.close()


def test_a_sink_started_with_nowhere_to_mark_calls_marks_them_once_a_place_takes_its_table(
    tmp_path, small_disk, places
):
    disk = small_disk("1m")
    disk.fill()
    places.setenv("XDG_STATE_HOME", str(disk.path / "state"))
    sink = LedgerSink(open_ledger_at(tmp_path / "ledger.db"), disk.path / "journal", drain_interval=3600)
    register_sink(sink)
    try:
        assert sink not in records.beginners  # no in-flight table: a kill -9 mid-call would go unseen
        disk.free()

        assert sink.flush() is True

        assert sink in records.beginners
        assert list(sink.directory.glob(f"*{inflight.SUFFIX}"))
    finally:
        unregister_sink(sink)
        sink.close()


def test_records_in_memory_go_straight_into_the_ledger_when_no_place_takes_a_file(tmp_path, small_disk, places):
    disk = small_disk("1m")
    disk.fill()
    places.setenv("XDG_STATE_HOME", str(disk.path / "state"))
    ledger = open_ledger_at(tmp_path / "ledger.db")
    sink = LedgerSink(ledger, disk.path / "journal", drain_interval=3600)

    emitted(sink, 30)

    assert sink.flush() is True
    assert ledger.call_count() == 30
    sink.close()
    assert ledger.call_count() == 30  # once each


def test_past_the_memory_bound_records_are_dropped_counted_and_served_by_spendwatch_serve(
    tmp_path, small_disk, places, caplog
):
    disk = small_disk("1m")
    disk.fill()
    places.setenv("XDG_STATE_HOME", str(disk.path / "state"))
    ledger_path = tmp_path / "ledger.db"
    ledger, holder = locked_ledger(ledger_path)
    sink = LedgerSink(ledger, disk.path / "journal", drain_interval=3600, memory_records=5)

    emitted(sink, 8)

    assert sink.records_dropped == 3
    assert sink.flush() is False
    assert "usage records are being dropped (3 so far)" in caplog.text
    holder.execute("ROLLBACK")
    assert sink.flush() is True
    assert ledger.call_count() == 5
    errors = sink.ledger_errors
    assert errors > 0
    sink.close()

    serve = Serve(str(ledger_path), XDG_STATE_HOME=str(tmp_path / "serve-state"))
    try:
        metrics = scrape(serve.url.removesuffix("/v1/traces") + "/metrics")
    finally:
        serve.stop()
    assert metrics["spendwatch_records_dropped_total"] == 3
    assert metrics["spendwatch_ledger_errors_total"] == errors


def scrape(url: str) -> dict[str, float]:
    """The unlabelled samples of a /metrics page, by name."""
    with urllib.request.urlopen(url, timeout=60) as response:
        lines = response.read().decode().splitlines()
    samples = (line.partition(" ") for line in lines if not line.startswith("#"))
    return {name: float(value) for name, _, value in samples if "{" not in name}


def test_a_bad_memory_bound_stops_start_up_naming_the_setting():
    done = subprocess.run(
        [sys.executable, "-c", "import spendwatch; spendwatch.configure(metrics_address='off')"],
        env={**os.environ, "SPENDWATCH_JOURNAL_MEMORY_RECORDS": "lots"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "SPENDWATCH_JOURNAL_MEMORY_RECORDS='lots'" in done.stderr
    assert "Traceback" not in done.stderr


# --- an app started while its ledger's disk is full -----------------------------------------------------------------

FULL_DISK_APP = textwrap.dedent(
    """
    import sys
    import openai

    client = openai.OpenAI(max_retries=0)
    for _ in range(3):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        print("ANSWERED", reply.choices[0].message.content, flush=True)
    sys.stdin.readline()  # the test frees the disk, waits for the calls in the ledger, then lets the app end
    """
)


def test_an_app_started_while_its_ledgers_disk_is_full_records_every_call_once_there_is_space(
    tmp_path, small_disk, stub
):
    disk = small_disk("4m")
    ledger_path = disk.path / "ledger.db"
    open_ledger_at(ledger_path).close()
    disk.fill()  # the ledger, its journal directory and the state directory all on it
    process = start_instrumented(FULL_DISK_APP, tmp_path, stub, ledger_path, XDG_STATE_HOME=str(disk.path / "state"))
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        assert [line.split()[0] for line in lines if line] == ["ANSWERED"] * 3
        disk.free()
        wait_until(lambda: open_ledger_at(ledger_path).call_count() == 3, POLL_TIMEOUT, "the calls in the ledger")
        _, stderr = process.communicate("done\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "records wait in memory" in stderr
    assert open_ledger_at(ledger_path).call_count() == 3


# --- counts every process over the ledger adds up -------------------------------------------------------------------


def test_each_process_ledger_errors_are_kept_in_the_ledger_and_added_up_by_any_other(tmp_path, places):
    path = tmp_path / "ledger.db"
    first_ledger, holder = locked_ledger(path)
    first = LedgerSink(first_ledger, tmp_path / "first", drain_interval=3600)
    second = LedgerSink(
        Ledger(SQLiteBackend(str(path), busy_timeout_s=0.05), UTC), tmp_path / "second", drain_interval=3600
    )
    emitted(first, 1)
    emitted(second, 1)
    assert first.flush() is False and second.flush() is False
    assert first.all_ledger_errors() == first.ledger_errors  # nothing kept in the ledger yet: its own
    holder.execute("ROLLBACK")
    assert first.flush() is True and second.flush() is True

    everyone = first.ledger_errors + second.ledger_errors
    assert first.all_ledger_errors() == second.all_ledger_errors() == everyone
    reader = LedgerSink(open_ledger_at(path), tmp_path / "reader", drain_interval=3600)  # as spendwatch serve is
    assert reader.all_ledger_errors() == everyone
    for sink in (first, second, reader):
        sink.close()


def test_doctor_names_where_calls_are_journaled_when_the_journal_directory_is_read_only(tmp_path, places):
    from spendwatch.cli.doctor import FAIL, WARN, run_checks

    ledger_path = tmp_path / "ledger.db"
    open_ledger_at(ledger_path).close()
    own = journal_directories(str(ledger_path))[0]
    own.mkdir(exist_ok=True)
    disk = SmallDisk(own, "1m")  # the journal directory beside the ledger, read-only; the ledger itself is fine
    try:
        disk.read_only()
        environ = {**os.environ, "SPENDWATCH_LEDGER": str(ledger_path)}
        (ledger,) = [check for check in run_checks(environ) if check.name == "ledger"]
        assert ledger.status == WARN and str(journal_directories(str(ledger_path))[-1]) in ledger.summary

        environ["XDG_STATE_HOME"] = str(own / "state")  # the fallback on the read-only disk too
        (ledger,) = [check for check in run_checks(environ) if check.name == "ledger"]
        assert ledger.status == FAIL and "SPENDWATCH_JOURNAL_MEMORY_RECORDS" in ledger.summary
    finally:
        disk.unmount()
