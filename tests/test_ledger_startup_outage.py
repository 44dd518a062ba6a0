"""An app starts whatever its ledger does: PostgreSQL down, a read-only SQLite ledger, workers creating one ledger at
once. Its calls are answered, wait in the journal, and reach the ledger when it is back; the guard follows
``[guard] on_ledger_error``; only a location that can never work stops start-up."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import openai
import psycopg
import pytest

import spendwatch
from spendwatch import runtime
from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from tests.servers import in_ci, wait_until
from tests.test_auto_instrumentation import start_instrumented

UTC = ZoneInfo("UTC")
BIN = Path(sys.executable).parent
POLL_TIMEOUT = 120.0  # seconds: generous, for a loaded two-core machine


@pytest.fixture
def state_home(tmp_path, monkeypatch):
    """The state directory (PostgreSQL's journal and audit key) in tmp_path, for this process and its children."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def stopped_postgres(postgres_cluster, state_home):
    """A ledger database on a PostgreSQL server that is stopped now; ``postgres_cluster.start()`` brings it back."""
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE ledger")
    postgres_cluster.stop()
    return postgres_cluster.url("ledger")


def chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


def calls_in(location: str) -> int:
    ledger = Ledger(open_backend(location), UTC)
    try:
        return ledger.call_count()
    finally:
        ledger.close()


# --- PostgreSQL down at start-up --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_app_started_while_postgresql_is_down_records_every_call_once_it_is_back(
    stopped_postgres, postgres_cluster, client, stub
):
    attached = spendwatch.configure(ledger=stopped_postgres, metrics_address="off")

    answers = [chat(client) for _ in range(5)]
    assert all(answers)
    assert attached.sink.flush() is False
    assert attached.sink.ledger_errors > 0

    postgres_cluster.start()
    wait_until(lambda: calls_in(stopped_postgres) == 5, POLL_TIMEOUT, "the journaled calls in the ledger")
    chat(client)
    runtime.detach()

    ledger = Ledger(open_backend(stopped_postgres), UTC)
    assert ledger.call_count() == 6
    assert ledger.totals()[0]["input_tokens"] == sum(usage.input_tokens for usage in stub.usage_log)
    (started,) = ledger.events("configuration_started")
    assert f'"pid": {os.getpid()}' in started["detail"]
    ledger.close()


@pytest.mark.slow
def test_the_guard_refuses_a_call_it_cannot_check_and_says_the_ledger_is_unreachable(
    stopped_postgres, postgres_cluster, client, stub
):
    attached = spendwatch.configure(ledger=stopped_postgres, metrics_address="off", enforce="block", daily_budget_usd=5)

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        chat(client)

    assert isinstance(refused.value, openai.OpenAIError)
    assert "ledger cannot be reached" in str(refused.value)
    assert "would exceed" not in str(refused.value)
    assert stub.requests == []
    assert attached.sink.ledger_errors > 0
    postgres_cluster.start()
    wait_until(attached.sink.flush, POLL_TIMEOUT, "the ledger back")
    assert chat(client)  # the guard admits again
    runtime.detach()
    ledger = Ledger(open_backend(stopped_postgres), UTC)
    assert ledger.guard_decisions() == {("ledger-unavailable", "block"): 1, ("global", "allow"): 1}
    ledger.close()


@pytest.mark.slow
def test_with_on_ledger_error_admit_the_guard_lets_the_call_through_and_counts_it(
    stopped_postgres, postgres_cluster, client, stub, tmp_path
):
    config = tmp_path / "spendwatch.toml"
    config.write_text('[guard]\non_ledger_error = "admit"\n')
    attached = spendwatch.configure(
        config=str(config), ledger=stopped_postgres, metrics_address="off", enforce="block", daily_budget_usd=5
    )

    assert chat(client)
    assert chat(client)

    assert len(stub.requests) == 2
    assert attached.sink.ledger_errors >= 2  # each call the guard could not check, and the drainer's tries
    postgres_cluster.start()
    wait_until(attached.sink.flush, POLL_TIMEOUT, "the ledger back")
    runtime.detach()
    ledger = Ledger(open_backend(stopped_postgres), UTC)
    assert ledger.call_count() == 2
    assert ledger.guard_decisions() == {("ledger-unavailable", "allow"): 2}
    ledger.close()


# --- a read-only SQLite ledger ----------------------------------------------------------------------------------------

READ_ONLY_APP = textwrap.dedent(
    """
    import sys, time
    import openai
    from spendwatch import runtime

    client = openai.OpenAI(max_retries=0)
    for _ in range(3):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        print("ANSWERED", reply.choices[0].message.content, flush=True)
    sink = runtime.current().sink
    while sink.ledger_errors == 0:
        time.sleep(0.05)
    print("LEDGER-ERRORS", sink.ledger_errors, "JOURNAL", sink.directory, flush=True)
    sys.stdin.readline()  # the test makes the ledger writable again, then lets the app end
    """
)


def immutable(*paths: Path) -> None:
    """Make ``paths`` immutable: not even root can write, create or delete in them (chmod does not stop root)."""
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"chattr +i is not possible here: {done.stderr.strip()}"
        pytest.fail(reason) if in_ci() else pytest.skip(reason)


def mutable(*paths: Path) -> None:
    subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


@pytest.fixture
def read_only_ledger(tmp_path, state_home):
    """A ledger whose file, key and directory even root cannot write (``chattr +i``); writable again on ``.undo()``."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr not found") if in_ci() else pytest.skip("chattr not found (e2fsprogs)")
    directory = tmp_path / "ledgers"
    location = directory / "ledger.db"
    Ledger(open_backend(str(location)), UTC).close()
    frozen = [location, Path(f"{location}.key"), directory]
    immutable(*frozen)

    class ReadOnly:
        path = location

        @staticmethod
        def undo() -> None:
            mutable(*frozen)

    yield ReadOnly
    mutable(*frozen)


def test_an_app_with_a_read_only_sqlite_ledger_answers_its_calls_and_records_them_once_writable(
    read_only_ledger, state_home, stub, tmp_path
):
    process = start_instrumented(READ_ONLY_APP, tmp_path, stub, read_only_ledger.path)
    try:
        lines = [process.stdout.readline() for _ in range(4)]
        assert [line.split()[0] for line in lines if line] == ["ANSWERED"] * 3 + ["LEDGER-ERRORS"], process.stderr
        assert int(lines[3].split()[1]) > 0
        assert lines[3].split()[3].startswith(str(state_home))  # beside the ledger could not be written either
        doctor = subprocess.run(
            [str(BIN / "spendwatch"), "doctor"],
            env={**os.environ, "SPENDWATCH_LEDGER": str(read_only_ledger.path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "3 calls wait in the journal" in doctor.stdout

        read_only_ledger.undo()
        wait_until(lambda: calls_in(str(read_only_ledger.path)) == 3, POLL_TIMEOUT, "the journaled calls drained")
        _, stderr = process.communicate("done\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "cannot write the ledger" in stderr
    assert stderr.count("cannot write the ledger") == 1  # logged once per outage
    ledger = Ledger(open_backend(str(read_only_ledger.path)), UTC)
    assert ledger.call_count() == 3
    assert len(ledger.events("configuration_started")) == 1
    ledger.close()


# --- workers creating one new ledger at the same moment ---------------------------------------------------------------


def test_opening_a_new_ledger_waits_for_another_process_still_creating_it(tmp_path):
    location = tmp_path / "ledger.db"
    creator = sqlite3.connect(location, isolation_level=None, check_same_thread=False)
    # A second connection stands in for another worker half-way through creating the ledger: it holds the new file's
    # write lock, which makes switching the file to WAL fail at once with "database is locked", whatever the busy
    # timeout. It finishes a moment later, as the other worker would.
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE spendwatch_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    finishing = threading.Timer(0.5, creator.execute, ("COMMIT",))
    finishing.start()

    ledger = Ledger(open_backend(str(location)), UTC)

    finishing.join()
    assert ledger.call_count() == 0
    ledger.close()
    creator.close()


# --- locations that can never work stay start-up errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ledger", "problem"),
    [
        ("postgresql://spend@[::1/ledger", "is not a valid PostgreSQL URL"),
        ("postgresql://spend@db:port/ledger", "is not a valid PostgreSQL URL"),
        ("{file}/ledger.db", "which is a file, not a directory"),
        ("{directory}", "is a directory"),
        ("{text}", "file is not a database"),
    ],
)
def test_a_ledger_location_that_can_never_work_stops_start_up_in_one_sentence(tmp_path, ledger, problem):
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "notes.txt").write_text("not a database at all, just some text")
    location = ledger.format(file=tmp_path / "file", directory=tmp_path, text=tmp_path / "notes.txt")

    with pytest.raises(spendwatch.ConfigError) as raised:
        spendwatch.configure(ledger=location, metrics_address="off")

    assert problem in raised.value.message
    assert raised.value.message.startswith("ledger=")
    assert "\n" not in raised.value.message
