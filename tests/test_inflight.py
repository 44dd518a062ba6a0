"""Calls on the wire when their process dies (kill -9) are counted once, as estimates; completed calls once; a live
process's calls in flight not at all. A real app process calls a local stub through the real openai SDK."""

from __future__ import annotations

import fcntl
import marshal
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
from zoneinfo import ZoneInfo

import anthropic
import openai
import pytest

import spendwatch
from spendwatch import runtime
from spendwatch.demo.anthropic_stub import AnthropicStub
from spendwatch.demo.bedrock_stub import BedrockStub
from spendwatch.demo.gemini_stub import GeminiStubServer
from spendwatch.demo.stub import StubServer
from spendwatch.exporter import Ledger, LedgerSink, codec, inflight, journal_directory
from spendwatch.exporter.api.alerts import alerts
from spendwatch.exporter.ledger import LedgerEntry, open_backend
from spendwatch.instrumentation.records import UsageRecord
from tests.bedrock import bedrock_client
from tests.conftest import FAKE_API_KEY
from tests.google_genai_fixtures import make_gemini
from tests.test_anthropic_instrumentation import API_KEY as ANTHROPIC_KEY

UTC = ZoneInfo("UTC")

APP = textwrap.dedent(
    """
    import os, sys, threading
    from zoneinfo import ZoneInfo
    import openai
    from spendwatch.exporter import Ledger, LedgerSink
    from spendwatch.exporter.ledger import LedgerEntry, open_backend
    from spendwatch.instrumentation import register_sink
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    ledger_path, journal, fast_url, slow_url = sys.argv[1:5]
    calls_after, file_size, flush = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "flush"
    # The drainer runs only when told (flush): what reaches the ledger is decided by the test.
    sink = LedgerSink(Ledger(open_backend(ledger_path), ZoneInfo("UTC")), journal, drain_interval=3600)
    if file_size:
        sink._journal.file_size = file_size  # small files: rotated, and the drained ones retired, while a call waits
    register_sink(sink)
    OpenAIInstrumentor().instrument()

    def ask(url):
        client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"], base_url=url, max_retries=0, timeout=3600)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    ask(fast_url)
    threading.Thread(target=ask, args=(slow_url,), daemon=True).start()
    sys.stdin.readline()  # the test saw the slow request reach the stub
    for _ in range(calls_after):
        ask(fast_url)
    if flush:
        assert sink.flush()
    print("ready", flush=True)
    threading.Event().wait()
    """
)


@pytest.fixture
def slow_stub():
    with StubServer(reply_delay_s=600) as server:  # answers long after the test is over: the call stays on the wire
        yield server


def start_app(tmp_path, stub, slow_stub, *, calls_after=0, file_size=0, flush=False) -> subprocess.Popen:
    argv = [sys.executable, "-c", APP, str(tmp_path / "ledger.db"), str(tmp_path / "journal"), stub.base_url]
    argv += [slow_stub.base_url, str(calls_after), str(file_size), "flush" if flush else "no"]
    app = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": FAKE_API_KEY},
    )
    _wait_for(lambda: slow_stub.requests or app.poll() is not None)
    assert app.poll() is None, app.communicate()[1]
    app.stdin.write("go\n")
    app.stdin.flush()
    assert app.stdout.readline() == "ready\n", app.communicate()[1]
    return app


def _wait_for(condition) -> None:
    # A generous bound that only stops a broken run from hanging; it measures no speed.
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def kill(app: subprocess.Popen) -> None:
    app.kill()  # SIGKILL
    app.wait()
    assert app.returncode == -signal.SIGKILL


def recovered_calls(tmp_path) -> list[dict]:
    """The ledger's calls after a fresh sink's recovery (as a new app process, or spendwatch serve, does)."""
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)
    LedgerSink(ledger, tmp_path / "journal").close()
    return ledger.table_rows("calls")


def interrupted(calls: list[dict]) -> list[dict]:
    return [call for call in calls if call["error_type"] == inflight.INTERRUPTED]


def assert_one_interrupted_estimate(calls: list[dict]) -> None:
    (call,) = interrupted(calls)
    assert call["outcome"] == "error"
    assert call["estimated"]
    assert call["cost_usd"] > 0  # a priced model: estimated as this process's completed calls of it
    assert call["model"] == "gpt-4o-mini"
    completed = [other for other in calls if other["outcome"] == "success"]
    assert call["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in completed) / len(completed))


def test_a_call_on_the_wire_when_its_process_is_killed_is_counted_once_as_an_estimate(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub)
    kill(app)

    calls = recovered_calls(tmp_path)

    assert len(calls) == 2  # the call that returned, and the one that was on the wire
    assert_one_interrupted_estimate(calls)
    assert list((tmp_path / "journal").iterdir()) == []
    (shown,) = alerts(Ledger(open_backend(str(tmp_path / "ledger.db")), UTC), range_s=3600)["alerts"]
    assert (shown["kind"], shown["calls"], shown["models"]) == ("calls_interrupted", 1, ["gpt-4o-mini"])
    assert shown["cost_usd"] == interrupted(calls)[0]["cost_usd"]


def test_a_call_on_the_wire_is_counted_when_the_drainer_had_read_everything_else(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub, calls_after=3, flush=True)  # everything journaled is drained
    kill(app)

    calls = recovered_calls(tmp_path)

    assert len(calls) == 5
    assert_one_interrupted_estimate(calls)


def test_a_call_waiting_while_journal_files_rotate_and_retire_is_counted_once(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub, calls_after=40, file_size=4096, flush=True)
    assert len(list((tmp_path / "journal").glob("*.journal"))) == 1  # the files journaled before the call: retired
    kill(app)

    calls = recovered_calls(tmp_path)

    assert len(calls) == 42  # each completed call once, the interrupted one once
    assert_one_interrupted_estimate(calls)


def test_a_live_process_calls_in_flight_are_not_recorded_until_it_dies(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub, calls_after=2)
    try:
        calls = recovered_calls(tmp_path)  # another process replays what it may while the app lives
        assert interrupted(calls) == []
    finally:
        kill(app)

    calls = recovered_calls(tmp_path)

    assert len(calls) == 4
    assert_one_interrupted_estimate(calls)


def test_recovering_twice_counts_an_interrupted_call_once(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub)
    kill(app)
    journal_copy = {path.name: path.read_bytes() for path in (tmp_path / "journal").iterdir()}

    recovered_calls(tmp_path)
    for name, content in journal_copy.items():  # as if a second recovery had read the files before they went
        (tmp_path / "journal" / name).write_bytes(content)
    calls = recovered_calls(tmp_path)

    assert len(calls) == 2
    assert_one_interrupted_estimate(calls)


def test_a_dead_journal_another_process_is_replaying_holds_back_the_estimates_of_its_writer(tmp_path, stub, slow_stub):
    app = start_app(tmp_path, stub, slow_stub, calls_after=3)  # completed calls' marks still taken: nothing drained
    kill(app)
    (journal,) = (tmp_path / "journal").glob("*.journal")
    replaying = os.open(journal, os.O_RDWR)
    fcntl.flock(replaying, fcntl.LOCK_EX)  # as another process replaying it does
    try:
        calls = recovered_calls(tmp_path)
        assert calls == []  # the calls on the wire wait for their journal, whose records they may be
    finally:
        os.close(replaying)

    calls = recovered_calls(tmp_path)

    assert len(calls) == 5
    assert len([call for call in calls if call["outcome"] == "success"]) == 4
    assert_one_interrupted_estimate(calls)


def test_journal_records_carry_their_mark_and_earlier_ones_still_read():
    record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=3, cost_usd=0.5, service="api", mark=2**100)
    version_3 = marshal.dumps((3, *codec._VALUES(record)[:-1]))  # written before records carried their mark

    assert codec.decode(codec.encode(record)) == record
    assert codec.decode(version_3) == UsageRecord(
        "openai", "chat", "gpt-4o-mini", input_tokens=3, cost_usd=0.5, service="api"
    )


START = 1795780800.0


class _Start:
    provider = price_provider = "openai"
    operation = "chat"
    request_model = "gpt-4o-mini"
    category = "extraction"
    attributes = {"lightrag.stage": "extract"}
    start_time = START
    ticket = None


def test_a_table_keeps_what_an_estimate_needs_until_the_drainer_read_the_record(tmp_path):
    (tmp_path / "a-file").write_text("")
    sink = types.SimpleNamespace(service="api")
    table = inflight.InflightTable([tmp_path / "a-file" / "journal", tmp_path], sink, slots=4)  # the first fails
    table.begin(2**100 + 5, _Start())
    sink.service = None
    table.begin(7, _Start())
    dead = inflight.DeadTable(table.path, os.open(table.path, os.O_RDWR))  # read as recovery would

    extraction = (START, "openai", "chat", "gpt-4o-mini", "openai", "extraction")
    assert sorted(dead.marks(), key=lambda mark: mark.mark) == [
        inflight.Mark(7, *extraction, None, _Start.attributes),
        inflight.Mark(2**100 + 5, *extraction, "api", _Start.attributes),
    ]
    table.ended([LedgerEntry("x", UsageRecord("openai", "chat", "gpt-4o-mini", mark=mark)) for mark in (7, 2**100 + 5)])
    assert dead.marks() == []
    for number in range(6):  # more calls than slots: the last ones go unmarked, and are counted
        table.begin(number + 1, _Start())
    assert (len(dead.marks()), table.unmarked) == (4, 2)
    dead.close(delete=False)
    table.close()
    assert list(tmp_path.glob("*.inflight")) == []


class _Admitted:
    """A guard's ticket (exporter.guard.GuardTicket): what the in-flight table reads of it."""

    request_changes = None

    def __init__(self, worst_usd: float) -> None:
        self.worst_usd = worst_usd


def test_an_estimate_stays_within_what_the_guard_reserved_for_the_call(tmp_path):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)
    mean = 0.004
    ledger.ingest(
        [LedgerEntry(f"done-{n}", UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=mean)) for n in range(3)]
    )
    table = inflight.InflightTable([tmp_path], types.SimpleNamespace(service=None), slots=4)
    small, large, unguarded = _Start(), _Start(), _Start()
    small.ticket, large.ticket, unguarded.ticket = _Admitted(0.0012345), _Admitted(0.5), None
    for mark, start in enumerate((small, large, unguarded), start=1):
        table.begin(mark, start)
    dead = inflight.DeadTable(table.path, os.open(table.path, os.O_RDWR))

    reserved = {mark.mark: mark.reserved_usd for mark in dead.marks()}
    estimates = {entry.record.mark: entry.record.cost_usd for entry in inflight.interrupted_entries(dead, ledger)}

    assert reserved[1] <= 0.0012345 and reserved[1] == pytest.approx(0.0012345, rel=1e-6)
    assert reserved[3] == 0.0  # not guarded: no reservation to stay within
    assert estimates == {1: reserved[1], 2: pytest.approx(mean), 3: pytest.approx(mean)}
    dead.close(delete=False)
    table.close()


def test_a_table_written_before_slots_held_reservations_still_reads(tmp_path):
    table = inflight.InflightTable([tmp_path], types.SimpleNamespace(service=None), slots=2)
    table.begin(9, _Start())
    fd = os.open(table.path, os.O_RDWR)
    slot = inflight._HEADER_SIZE
    low, high, start, _, kind = inflight._SLOT.unpack_from(table._mm, slot)
    os.pwrite(fd, inflight._HEADER.pack(b"SWI1", 2), 0)  # the earlier layout: no reservation, the kind at byte 24
    os.pwrite(fd, inflight._SLOT_WITHOUT_RESERVATION.pack(low, high, start, kind) + b"\0" * 4, slot)

    (mark,) = inflight.DeadTable(table.path, fd).marks()

    assert (mark.mark, mark.start_time, mark.request_model, mark.reserved_usd) == (9, START, "gpt-4o-mini", 0.0)
    table.forget()


GUARDED_APP = textwrap.dedent(
    """
    import os, sys
    import openai
    import spendwatch
    from spendwatch.instrumentation import admission

    spendwatch.configure()
    guard = admission.current_guard()
    admit = guard.admit

    def announced(request):  # tells the test the guard is deciding: the ledger it asks is locked, so it waits
        print("admitting", flush=True)
        return admit(request)

    guard.admit = announced
    client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"], base_url=sys.argv[1], max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    """
)


def test_a_process_killed_while_the_guard_decides_leaves_no_estimate_of_a_call_it_never_sent(tmp_path, stub):
    location = str(tmp_path / "ledger.db")
    Ledger(open_backend(location), UTC).close()
    locker = sqlite3.connect(location, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the guard cannot read or take its lease until the test lets go
    env = {
        **os.environ,
        "OPENAI_API_KEY": FAKE_API_KEY,
        "SPENDWATCH_LEDGER": location,
        "SPENDWATCH_ENFORCE": "block",
        "SPENDWATCH_DAILY_BUDGET_USD": "10",
        "SPENDWATCH_METRICS_ADDRESS": "off",
    }
    app = subprocess.Popen(
        [sys.executable, "-c", GUARDED_APP, stub.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert app.stdout.readline() == "admitting\n", app.communicate()[1]
    kill(app)
    locker.execute("ROLLBACK")
    locker.close()

    ledger = Ledger(open_backend(location), UTC)
    LedgerSink(ledger, journal_directory(location)).close()  # recovery, as the next process or spendwatch serve

    assert stub.requests == []
    assert ledger.table_rows("calls") == []  # the request never left: nothing was spent, nothing is estimated


def _every_sdk_call(origin_of: dict[str, str]) -> list:
    """One small call through each SDK spendwatch instruments, to its local stub."""
    hi = [{"role": "user", "content": "hi"}]
    openai_client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=origin_of["openai"], max_retries=0)
    claude = anthropic.Anthropic(base_url=origin_of["anthropic"], api_key=ANTHROPIC_KEY, max_retries=0)
    gemini, bedrock = make_gemini(origin_of["gemini"]), bedrock_client(origin_of["bedrock"])
    return [
        lambda: openai_client.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=5),
        lambda: claude.messages.create(model="claude-sonnet-4-20250514", max_tokens=5, messages=hi),
        lambda: gemini.models.generate_content(
            model="gemini-2.5-flash", contents="hi", config={"max_output_tokens": 5}
        ),
        lambda: bedrock.converse(
            modelId="us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
            inferenceConfig={"maxTokens": 5},
        ),
    ]


@pytest.mark.parametrize("budget", [None, 0.0000001], ids=["unguarded", "guard-refuses"])
def test_every_sdk_marks_a_call_it_sends_and_never_one_the_guard_refused(tmp_path, monkeypatch, stub, budget):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    guarded = {"enforce": "block", "daily_budget_usd": budget} if budget else {}
    attached = spendwatch.configure(ledger=str(tmp_path / "ledger.db"), metrics_address="off", **guarded)
    try:
        with AnthropicStub() as anthropic_stub, GeminiStubServer() as gemini, BedrockStub() as bedrock:
            origins = {"openai": stub.base_url, "anthropic": anthropic_stub.origin, "gemini": gemini.base_url}
            for sdk_call in _every_sdk_call(origins | {"bedrock": bedrock.origin}):
                if budget:
                    with pytest.raises(spendwatch.BudgetExceededError):
                        sdk_call()
                else:
                    sdk_call()
        assert attached.sink.flush()
        calls = attached.ledger.table_rows("calls")
    finally:
        runtime.detach()

    assert sorted(call["provider"] for call in calls) == ["anthropic", "aws.bedrock", "gcp.gemini", "openai"]
    marked = {call["provider"]: call["id"].startswith("call:") for call in calls}
    assert marked == dict.fromkeys(marked, not budget)  # a refused call never left: no mark, no estimate if killed
