"""Nothing waits for a restart to be seen (issue 20, cause 4): a process killed with kill -9 leaves calls in its
journal; a live app's drainer or ``spendwatch serve`` puts them in the ledger within seconds, and the guard keeps the
dead process's lease, past its TTL, until they are in, so the budget is never spent twice. Real processes calling the
stub through the real openai SDK, a real SQLite ledger; the killed worker's drainer never runs (drain_interval=3600),
so its calls can reach the ledger only from its journal."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger, LedgerSink, load_settings
from spendwatch.exporter.journal import JournalWriter
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import verify
from spendwatch.exporter.ledger.leases import HeldLease, held_leases, renew_lease
from spendwatch.exporter.periods import period_bounds
from spendwatch.exporter.recovery import owner_states, process_owner
from spendwatch.exporter.sink import journal_directory
from tests.conftest import FAKE_API_KEY
from tests.otlp_intake import SPENDWATCH, Serve
from tests.servers import wait_until
from tests.test_guard import MINI

UTC = ZoneInfo("UTC")
POLL_TIMEOUT = 120.0  # seconds: generous, for a loaded two-core machine (not a speed check)
MAX_TOKENS = 400

# A worker whose drainer never runs: each call's record stays in its journal. It acknowledges each call that returned
# ("ack" after it returned), says "done", and waits to be killed.
DYING_WORKER = textwrap.dedent(
    """
    import sys
    import openai
    from spendwatch.exporter import Ledger, LedgerSink, load_settings
    from spendwatch.exporter.guard import BudgetGuard
    from spendwatch.exporter.guard_rules import guard_config
    from spendwatch.exporter.ledger import open_backend
    from spendwatch.instrumentation import register_sink
    from spendwatch.instrumentation.admission import register_guard
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
    from spendwatch.instrumentation.pricing import PriceTable

    ledger_path, journal, base_url, calls, config, limit = sys.argv[1:7]
    settings = load_settings({"config": config, "daily_budget_usd": float(limit) or None}, environ={})
    ledger = Ledger(open_backend(ledger_path), settings.timezone)
    sink = LedgerSink(ledger, journal, drain_interval=3600)
    sink.service = "dying-worker"  # its calls told apart in the ledger
    register_sink(sink)
    if float(limit):
        rules = guard_config(settings.raw.get("guard"), config)
        register_guard(BudgetGuard(ledger, settings, PriceTable(), rules))
    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
    for _ in range(int(calls)):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS
        )
        print("ack", flush=True)
    print("done", flush=True)
    sys.stdin.read()
    """
).replace("MAX_TOKENS", str(MAX_TOKENS))

# A live app (spendwatch.configure, its drainer running) says "attached"; with a budget, it waits for a line on its
# stdin, then calls until the guard refuses, printing "ack" for each call that returned; then "ready", and it waits
# until its stdin closes, and exits cleanly.
LIVE_APP = textwrap.dedent(
    """
    import sys
    import openai
    import spendwatch

    ledger_path, base_url, config, limit = sys.argv[1:5]
    budget = {"enforce": "block", "daily_budget_usd": float(limit)} if float(limit) else {}
    spendwatch.configure(ledger=ledger_path, config=config, metrics_address="off", **budget)
    client = openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
    print("attached", flush=True)
    if float(limit):
        sys.stdin.readline()
    while float(limit):
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS
            )
        except spendwatch.BudgetExceededError as refusal:
            print("refused", refusal.cause, flush=True)
            break
        print("ack", flush=True)
    print("ready", flush=True)
    sys.stdin.read()
    """
).replace("MAX_TOKENS", str(MAX_TOKENS))


@pytest.fixture
def run(tmp_path):
    """``run(script, *args)``: a Python process running ``script``, its stdin and stdout piped; killed at the end."""
    started: list[subprocess.Popen] = []
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "OPENAI_API_KEY": FAKE_API_KEY}

    def start(script: str, *args) -> subprocess.Popen:
        path = tmp_path / f"script-{len(started)}.py"
        path.write_text(script)
        process = subprocess.Popen(
            [sys.executable, str(path), *map(str, args)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            stream.close()


def read_until(process: subprocess.Popen, last: str) -> list[str]:
    """The lines ``process`` prints up to and including one starting with ``last``."""
    lines = []
    while True:
        line = process.stdout.readline()
        assert line, f"the process ended before printing {last!r} (after {lines[-3:]})"
        lines.append(line.strip())
        if line.startswith(last):
            return lines


def kill_9(process: subprocess.Popen) -> None:
    process.kill()  # SIGKILL
    process.wait()  # reaped: not a zombie


def calls_in(location: str) -> int:
    ledger = Ledger(open_backend(location), UTC)  # reads only: a Ledger alone replays no journal
    try:
        return ledger.call_count()
    finally:
        ledger.close()


def journals(location: str) -> list[str]:
    return sorted(path.name for path in journal_directory(location).glob("*.journal"))


def test_a_live_apps_drainer_puts_a_killed_workers_calls_in_the_ledger_without_a_restart(tmp_path, stub, run):
    location = str(tmp_path / "ledger.db")
    survivor = run(LIVE_APP, location, stub.base_url, "", 0)
    read_until(survivor, "ready")  # attached, its drainer running, before the worker dies

    worker = run(DYING_WORKER, location, journal_directory(location), stub.base_url, 25, "", 0)
    acknowledged = read_until(worker, "done").count("ack")
    kill_9(worker)

    wait_until(lambda: calls_in(location) == acknowledged == 25, POLL_TIMEOUT, "the killed worker's calls")
    wait_until(lambda: len(journals(location)) == 1, POLL_TIMEOUT, "the dead journal replayed and removed")
    assert survivor.poll() is None  # no restart: the same live process did it


def test_spendwatch_serve_puts_a_killed_workers_calls_in_the_ledger_without_a_restart(tmp_path, stub, run):
    location = str(tmp_path / "ledger.db")
    serve = Serve(location, XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        worker = run(DYING_WORKER, location, journal_directory(location), stub.base_url, 25, "", 0)
        acknowledged = read_until(worker, "done").count("ack")
        kill_9(worker)

        wait_until(lambda: calls_in(location) == acknowledged == 25, POLL_TIMEOUT, "the killed worker's calls")
    finally:
        serve.stop()


def _lease_and_calls(location: str, lease_id: str) -> tuple[int, int]:
    """In one read: whether lease ``lease_id`` is there, and how many of the dying worker's calls the ledger has."""
    with closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=60)) as connection:
        query = (
            "SELECT (SELECT COUNT(*) FROM leases WHERE lease_id = ?), (SELECT COUNT(*) FROM calls WHERE service = ?)"
        )
        ((leases, calls),) = connection.execute(query, (lease_id, "dying-worker")).fetchall()
    return leases, calls


def poll(condition, what: str) -> None:
    """Until ``condition()`` holds; an assertion it makes fails the test at once (wait_until would retry it)."""
    deadline = time.monotonic() + POLL_TIMEOUT  # against a hang, not a speed check
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def successes(location: str) -> int:
    with closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=60)) as connection:
        return connection.execute("SELECT COUNT(*) FROM calls WHERE outcome = 'success'").fetchall()[0][0]


def test_a_killed_processes_lease_is_kept_past_its_ttl_until_its_journal_is_in_and_spend_never_passes_the_limit(
    tmp_path, stub, run
):
    location = str(tmp_path / "ledger.db")
    worst = MINI.cost(10, MAX_TOKENS)  # about what each call costs: the stub answers max_tokens words
    limit = 12 * worst
    config = tmp_path / "spendwatch.toml"
    config.write_text("[guard]\nlease_ttl_s = 1\nlease_fraction = 0.5\n")

    survivor = run(LIVE_APP, location, stub.base_url, config, limit)
    read_until(survivor, "attached")  # a live app, its drainer running, before the worker dies
    # The worker takes a lease of half the budget, spends about a third of it in acknowledged calls, and is killed
    # before any of them reached the ledger.
    worker = run(DYING_WORKER, location, journal_directory(location), stub.base_url, 4, config, limit)
    acknowledged = read_until(worker, "done").count("ack")
    kill_9(worker)
    ledger = Ledger(open_backend(location), UTC)
    ((lease_id, expires_at),) = ledger.backend.select("SELECT lease_id, expires_at FROM leases")
    ledger.close()

    def lease_kept_while_its_calls_wait() -> bool:
        leases, calls = _lease_and_calls(location, lease_id)
        assert leases == 1 or calls == acknowledged, "the lease was released before its journal was in the ledger"
        return not leases

    poll(lambda: lease_kept_while_its_calls_wait() or time.time() > float(expires_at) + 1, "its lease past its TTL")
    # Its lease past its TTL, the live app spends what the budget has left, while its drainer replays the journal.
    survivor.stdin.write("go\n")
    survivor.stdin.flush()
    poll(lease_kept_while_its_calls_wait, "the worker's journal in and its lease released")
    lines = read_until(survivor, "ready")
    assert "refused budget" in lines
    wait_until(lambda: successes(location) == acknowledged + lines.count("ack"), POLL_TIMEOUT, "every call in")
    survivor.stdin.close()
    assert survivor.wait(timeout=POLL_TIMEOUT) == 0

    # What the ledger settled, once every journal is in (a fresh sink replays any left): never past the limit.
    ledger = Ledger(open_backend(location), UTC)
    LedgerSink(ledger, journal_directory(location), drain_interval=3600).close()
    totals = ledger.totals()  # one row per service: the worker's and the app's
    assert sum(t["success"] for t in totals) == acknowledged + lines.count("ack") == len(stub.usage_log)
    assert acknowledged == 4 and lines.count("ack") >= 1
    assert sum(t["cost_usd"] for t in totals) <= limit
    assert verify(ledger).intact
    ledger.close()


def cli(location: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    env |= {"SPENDWATCH_LEDGER": location, "XDG_STATE_HOME": str(tmp_path / "state")}
    return subprocess.run([*SPENDWATCH, *args], env=env, capture_output=True, text=True, timeout=POLL_TIMEOUT)


def test_status_and_report_say_how_many_calls_wait_in_dead_journals_and_leave_them_there(tmp_path, stub, run):
    location = str(tmp_path / "ledger.db")
    worker = run(DYING_WORKER, location, journal_directory(location), stub.base_url, 3, "", 0)
    read_until(worker, "done")
    kill_9(worker)

    for command in (["status"], ["report", "--format", "csv"]):
        answer = cli(location, tmp_path, *command)
        assert answer.returncode == 0, answer.stderr
        assert "3 calls of processes that died wait in their journals" in answer.stderr
        assert "died" not in answer.stdout  # the output asked for stays clean (CSV)
    assert calls_in(location) == 0  # read-only: replaying is a drainer's job
    assert len(journals(location)) == 1


def test_a_lease_whose_owner_ran_on_another_host_is_kept_until_released_by_hand_audited(
    tmp_path, ledger_location, monkeypatch
):
    location = ledger_location
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the sink's journal, for a PostgreSQL ledger
    settings = load_settings({"daily_budget_usd": 1.0}, environ={})
    ledger = Ledger(open_backend(location), UTC)
    spec = settings.budgets[0]
    start, end = period_bounds(spec.period, time.time(), UTC)
    gone = "gone-host:4242:1"  # its journal is on that host: nothing here can replay it
    renew_lease(
        ledger,
        "lease-of-a-gone-host",
        spec,
        1.0,
        (start.date(), end.date()),
        need_usd=0.3,
        want_usd=0.3,
        ttl_s=1,
        owner=gone,
    )
    wait_until(lambda: held_leases(ledger)[0].expired, POLL_TIMEOUT, "the lease past its TTL")
    sink = LedgerSink(ledger, journal_directory(location), drain_interval=3600)
    sink.after_drain[0]()  # a live drainer's look for dead journals and settled leases

    assert [lease.owner for lease in held_leases(ledger)] == [gone]  # kept: refused rather than spent twice
    grant = renew_lease(ledger, "another", spec, 1.0, (start.date(), end.date()), need_usd=0.8, want_usd=0.8, ttl_s=60)
    assert grant.granted_usd == 0.0 and grant.others_usd == pytest.approx(0.3)

    listing = cli(location, tmp_path, "leases", "list")
    assert "lease-of-a-gone-host" in listing.stdout and "another host" in listing.stdout, listing.stderr
    doctor = cli(location, tmp_path, "doctor")
    assert any(line.startswith("warn") and " leases " in line for line in doctor.stdout.splitlines()), doctor.stdout
    assert cli(location, tmp_path, "leases", "release", "another").returncode == 1  # live: its owner renews it
    released = cli(location, tmp_path, "leases", "release", "lease-of-a-gone-host", "--reason", "host retired")

    assert released.returncode == 0, released.stderr
    assert "released lease-of-a-gone-host" in released.stdout
    assert held_leases(ledger) == []  # ("another" names no owner)
    (event,) = ledger.events("lease_released")
    detail = json.loads(event["detail"])
    assert detail["reason"] == "host retired" and detail["leases"][0]["owner"] == gone
    assert verify(ledger).intact
    sink.close()
    ledger.close()


HOLDS_A_JOURNAL = textwrap.dedent(
    """
    import sys
    from spendwatch.exporter.journal import JournalWriter

    journal = JournalWriter(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_reused_pid_is_another_owner_whose_open_journal_does_not_hold_the_dead_owners_lease(tmp_path, run):
    directory = tmp_path / "journal"
    alive = run(HOLDS_A_JOURNAL, directory)
    read_until(alive, "ready")
    host = process_owner().rsplit(":", 2)[0]
    # The lease's owner had this pid before: same host and pid, another start time.
    lease = HeldLease("lease", "global", "day", "2026-12-06", 0.1, f"{host}:{alive.pid}:1", 5.0)
    assert owner_states([lease], [directory]) == ["in"]  # the live process's own journal is not the dead owner's

    left = JournalWriter(tmp_path / "elsewhere")  # a journal file the dead owner left, not replayed yet
    left.close(delete=False)
    (path,) = (tmp_path / "elsewhere").glob("*.journal")
    path.rename(directory / f"{alive.pid}-left-by-the-dead-owner.journal")

    assert owner_states([lease], [directory]) == ["waiting"]
    start = Path(f"/proc/{alive.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # the real owner's
    assert owner_states([dataclasses.replace(lease, owner=f"{host}:{alive.pid}:{start}")], [directory]) == ["alive"]
