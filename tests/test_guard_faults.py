"""The budget guard under faults (issue 20): a process whose clock runs ahead, a call longer than a lease's TTL, a
call starting just before midnight, a ledger that cannot be reached (on_ledger_error block and admit, with its
allowance) and PostgreSQL stopped and restarted under a hammer. Real guards on real SQLite and PostgreSQL ledgers;
the clock a guard reads is injected where a test needs a host whose clock is off."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo

import openai
import pytest

import spendwatch
from spendwatch import runtime
from spendwatch.exporter import Ledger, LedgerEntry, LedgerSink, load_settings
from spendwatch.exporter.guard import BudgetGuard
from spendwatch.exporter.guard_rules import OUTAGE_BUDGET, guard_config
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import verify
from spendwatch.instrumentation.admission import register_guard, unregister_guard
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.records import UsageRecord
from tests.servers import wait_until
from tests.test_guard import MESSAGES, MINI, PRICES, a_request

UTC = ZoneInfo("UTC")
WORST = MINI.cost(100, 1000)  # a_request()'s worst case
POLL_TIMEOUT = 120.0  # seconds: generous, for a loaded two-core machine


@pytest.fixture
def build(tmp_path):
    """``build(location, config_toml, clock, **settings)``: a guard and a sink of their own on the ledger at
    ``location``, as one process would have."""
    opened: list = []

    def make(location: str, config_toml: str = "", clock=time.time, **settings) -> tuple[BudgetGuard, LedgerSink]:
        config = tmp_path / f"spendwatch-{len(opened)}.toml"
        config.write_text(config_toml)
        resolved = load_settings({"config": str(config), **settings}, environ={})
        ledger = Ledger(open_backend(location), resolved.timezone)
        sink = LedgerSink(ledger, tmp_path / f"journal-{len(opened)}", drain_interval=3600)
        guard = BudgetGuard(ledger, resolved, PRICES, guard_config(resolved.raw.get("guard"), str(config)), clock=clock)
        opened.append((guard, sink))
        return guard, sink

    yield make
    for guard, sink in opened:
        guard.close()
        sink.close()


def _month(unix: float) -> tuple[int, int]:
    moment = datetime.fromtimestamp(unix, UTC)
    return moment.year, moment.month


def _skip_near_a_month_end(ahead_s: float) -> None:
    if _month(time.time()) != _month(time.time() + ahead_s + 60):
        pytest.skip("a month ends within the test's clock offset: the two clocks would be in different periods")


# --- expiry by the database's clock ---------------------------------------------------------------------------------


def test_a_process_whose_clock_runs_400_s_ahead_leaves_the_others_live_leases_alone(build, ledger_location):
    _skip_near_a_month_end(400)
    honest, _ = build(ledger_location, monthly_budget_usd=WORST * 1.5)
    ahead, _ = build(ledger_location, clock=lambda: time.time() + 400, monthly_budget_usd=WORST * 1.5)

    assert honest.admit(a_request()) is not None  # in flight: its lease holds its worst case

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        ahead.admit(a_request())
    assert refused.value.cause == "budget"
    ((held,),) = honest.ledger.backend.select("SELECT MAX(outstanding_usd) FROM leases")
    assert held == pytest.approx(WORST)  # the honest process's lease, still there


def test_a_call_longer_than_the_lease_ttl_keeps_its_reservation(build, ledger_location):
    _skip_near_a_month_end(60)
    ttl = 6  # the heartbeat renews every 2 s
    long_caller, _ = build(ledger_location, f"[guard]\nlease_ttl_s = {ttl}\n", monthly_budget_usd=WORST * 1.5)
    ticket = long_caller.admit(a_request())
    ((first_expiry,),) = long_caller.ledger.backend.select("SELECT expires_at FROM leases")

    # The call is still in flight when its lease's first TTL is long over (SQLite's clock is this host's; the test's
    # PostgreSQL runs on this host too).
    wait_until(lambda: time.time() > first_expiry + 2, POLL_TIMEOUT, "the lease's first TTL over")
    other, _ = build(ledger_location, monthly_budget_usd=WORST * 1.5)

    with pytest.raises(spendwatch.BudgetExceededError):
        other.admit(a_request())
    ticket.settle(UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=WORST / 2))


def test_a_call_in_flight_across_the_end_of_its_period_keeps_its_reservation(build, tmp_path):
    midnight = datetime(2026, 11, 28, tzinfo=UTC).timestamp()
    clock = {"now": midnight - 1}
    location, config = str(tmp_path / "ledger.db"), "[guard]\nlease_ttl_s = 6\n"
    long_caller, _ = build(location, config, clock=lambda: clock["now"], daily_budget_usd=WORST * 1.5)
    ticket = long_caller.admit(a_request())  # a long call, started a second before midnight
    ((first_expiry,),) = long_caller.ledger.backend.select("SELECT expires_at FROM leases")
    clock["now"] = midnight + 1
    assert long_caller.admit(a_request()) is not None  # the new day's first call: a lease of its own

    wait_until(lambda: time.time() > first_expiry + 2, POLL_TIMEOUT, "the old day's lease's first TTL over")
    late, _ = build(location, clock=lambda: midnight - 0.5, daily_budget_usd=WORST * 1.5)

    with pytest.raises(spendwatch.BudgetExceededError):
        late.admit(a_request())  # the old day's budget is still held by the call in flight
    ticket.settle(UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=WORST / 2))


# --- the call's period: one clock read -------------------------------------------------------------------------------


def test_a_call_starting_just_before_midnight_is_reserved_and_charged_on_the_same_day(build, tmp_path):
    midnight = datetime(2026, 11, 28, tzinfo=UTC).timestamp()
    clock = {"now": midnight - 12 * 3600}
    guard, sink = build(str(tmp_path / "ledger.db"), clock=lambda: clock["now"], daily_budget_usd=WORST * 2.5)
    for _ in range(2):  # the day's two calls
        ticket = guard.admit(a_request())
        ticket.settle(record := UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=WORST, start_time=clock["now"]))
        sink.record(record)
    with pytest.raises(spendwatch.BudgetExceededError):
        guard.admit(a_request())

    # The call's own start time is read microseconds before midnight; the guard reads its clock just after.
    started = midnight - 0.000_05
    clock["now"] = midnight + 0.000_05
    ticket = guard.admit(a_request())
    ticket.settle(record := UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=WORST, start_time=started))
    sink.record(record)
    sink.flush()

    ledger = guard.ledger
    assert ledger.spend(date(2026, 11, 27), date(2026, 11, 28)) == pytest.approx(2 * WORST)  # within its limit
    assert ledger.spend(date(2026, 11, 28), date(2026, 11, 29)) == pytest.approx(WORST)  # where it was reserved


def test_a_clock_stepped_back_into_a_full_day_is_refused_on_that_day(build, tmp_path):
    midnight = datetime(2026, 11, 28, tzinfo=UTC).timestamp()
    clock = {"now": midnight - 12 * 3600}
    guard, sink = build(str(tmp_path / "ledger.db"), clock=lambda: clock["now"], daily_budget_usd=WORST * 2.5)

    def call() -> None:
        ticket = guard.admit(a_request())
        ticket.settle(record := UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=WORST, start_time=clock["now"]))
        sink.record(record)

    call(), call()  # the 27th's two calls: it is full
    clock["now"] = midnight + 60
    call()  # the 28th has room
    clock["now"] = midnight - 30  # the host's clock stepped back (NTP, a VM restored): the 27th again
    with pytest.raises(spendwatch.BudgetExceededError):
        call()
    sink.flush()

    assert guard.ledger.spend(date(2026, 11, 27), date(2026, 11, 28)) == pytest.approx(2 * WORST)
    assert guard.ledger.spend(date(2026, 11, 28), date(2026, 11, 29)) == pytest.approx(WORST)


# --- the ledger out of reach: block, admit within the allowance, told apart from budget refusals -------------------


def _unreachable(tmp_path) -> Ledger:
    def connect():
        raise ConnectionError("connection refused (the test's ledger is down)")

    return Ledger.opened_later(str(tmp_path / "down.db"), UTC, connect)


@pytest.fixture
def guarded_client(tmp_path, stub, span_exporter, tracer_provider, meter_provider, sink):
    """``guarded_client(ledger, config_toml)``: an instrumented OpenAI client whose calls ``BudgetGuard`` on
    ``ledger`` admits."""
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    guards: list = []

    def make(ledger: Ledger, config_toml: str = "", **settings) -> openai.OpenAI:
        config = tmp_path / "spendwatch.toml"
        config.write_text(config_toml)
        resolved = load_settings({"config": str(config), "daily_budget_usd": 1.0, **settings}, environ={})
        guard = BudgetGuard(ledger, resolved, PRICES, guard_config(resolved.raw.get("guard"), str(config)))
        register_guard(guard)
        guards.append(guard)
        return openai.OpenAI(api_key="sk-test", base_url=stub.base_url, max_retries=0)

    yield make
    for guard in guards:
        unregister_guard(guard)
    instrumentor.uninstrument()


def _chat(client: openai.OpenAI, max_tokens: int = 1000):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=max_tokens)


def test_a_refusal_for_an_unreachable_ledger_is_told_apart_in_the_error_the_span_and_the_decision(
    guarded_client, tmp_path, stub, span_exporter, sink
):
    client = guarded_client(_unreachable(tmp_path))

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        _chat(client)

    assert isinstance(refused.value, openai.OpenAIError)
    assert refused.value.cause == "ledger_unavailable"
    assert refused.value.budget == OUTAGE_BUDGET
    assert "the ledger cannot be reached (connection refused" in str(refused.value)
    assert stub.requests == []
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["spendwatch.guard.cause"] == "ledger_unavailable"
    assert sink.records[-1].guard_actions == ((OUTAGE_BUDGET, "block"),)


def test_a_budget_refusal_says_its_cause_is_the_budget(guarded_client, tmp_path, stub, span_exporter, sink):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC)
    client = guarded_client(ledger, daily_budget_usd=WORST / 2)

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        _chat(client)

    assert refused.value.cause == "budget"
    assert refused.value.budget == "global"
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["spendwatch.guard.cause"] == "budget"
    ledger.close()


def test_on_ledger_error_admit_lets_calls_through_only_within_the_outage_allowance(
    guarded_client, tmp_path, stub, sink
):
    allowance = MINI.cost(400, 200) * 2.5
    config = f'[guard]\non_ledger_error = "admit"\noutage_allowance_usd = {allowance!r}\n'
    client = guarded_client(_unreachable(tmp_path), config)

    outcomes, worst = [], None
    for _ in range(8):
        try:
            _chat(client, max_tokens=200)
            outcomes.append("ok")
        except spendwatch.BudgetExceededError as refusal:
            outcomes.append(refusal.cause)
            worst = refusal.estimated_cost_usd  # each call's worst case: the same request each time

    admitted = math.floor(allowance / worst)
    assert admitted >= 1
    assert outcomes == ["ok"] * admitted + ["ledger_unavailable"] * (8 - admitted)
    assert len(stub.requests) == admitted
    assert sum(record.cost_usd for record in sink.records if record.outcome == "success") <= allowance
    decisions = [record.guard_actions for record in sink.records if record.outcome == "success"]
    assert decisions == [((OUTAGE_BUDGET, "allow"),)] * admitted


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('on_ledger_error = "admit"\noutage_allowance_usd = -1', "guard.outage_allowance_usd=-1 "),
        ('on_ledger_error = "admit"\noutage_allowance_usd = "lots"', "guard.outage_allowance_usd='lots' "),
        ('on_ledger_error = "block"\noutage_allowance_usd = 0.5', "applies only with on_ledger_error"),
        ("lease_ttl_s = 0.5", "guard.lease_ttl_s=0.5 "),
    ],
)
def test_a_bad_outage_setting_fails_at_start_up_naming_it(table, problem):
    import tomllib

    with pytest.raises(ConfigError) as raised:
        guard_config(tomllib.loads(f"[guard]\n{table}\n")["guard"], "spendwatch.toml")

    assert problem in raised.value.message
    assert "\n" not in raised.value.message


# --- PostgreSQL stopped and restarted under a hammer ----------------------------------------------------------------


class _Hammer:
    """Threads making calls through the real SDK until stopped, counting what happened to each."""

    def __init__(self, client: openai.OpenAI, threads: int = 4) -> None:
        self.client, self.counts, self.lock = client, {"ok": 0, "budget": 0, "ledger_unavailable": 0}, threading.Lock()
        self.stopping = threading.Event()
        self.workers = [threading.Thread(target=self._call) for _ in range(threads)]
        for worker in self.workers:
            worker.start()

    def _call(self) -> None:
        while not self.stopping.is_set():
            try:
                _chat(self.client, max_tokens=400)
                outcome = "ok"
            except spendwatch.BudgetExceededError as refusal:
                outcome = refusal.cause
                time.sleep(0.01)  # a refused caller backs off a little, as an app would
            with self.lock:
                self.counts[outcome] += 1

    def seen(self, outcome: str) -> int:
        with self.lock:
            return self.counts[outcome]

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "admit"])
def test_postgresql_stopped_and_restarted_under_a_hammer_never_takes_the_budget_past_its_bound(
    postgres_cluster, tmp_path, monkeypatch, mode
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    worst = MINI.cost(200, 400)
    limit, allowance = 60 * worst, 10 * worst
    config = tmp_path / "spendwatch.toml"
    extra = f"outage_allowance_usd = {allowance!r}\n" if mode == "admit" else ""
    config.write_text(f'[guard]\non_ledger_error = "{mode}"\nlease_ttl_s = 6\n{extra}')
    location = postgres_cluster.url()
    attached = spendwatch.configure(
        config=str(config), ledger=location, metrics_address="off", enforce="block", daily_budget_usd=limit
    )
    from spendwatch.demo.stub import StubServer

    with StubServer() as server:
        hammer = _Hammer(openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0))
        try:
            wait_until(lambda: hammer.seen("ok") >= 10, POLL_TIMEOUT, "calls admitted")
            postgres_cluster.stop()
            wait_until(lambda: hammer.seen("ledger_unavailable") >= 20, POLL_TIMEOUT, "refusals for the outage")
            postgres_cluster.start()
            wait_until(lambda: hammer.seen("budget") >= 20, POLL_TIMEOUT, "the budget spent and refusing")
        finally:
            hammer.stop()
            wait_until(attached.sink.flush, POLL_TIMEOUT, "the journal in the ledger")
            runtime.detach()
            OpenAIInstrumentor().uninstrument()
        served = len(server.usage_log)

    ledger = Ledger(open_backend(location), UTC)
    (total,) = ledger.totals()
    bound = limit if mode == "block" else limit + allowance
    assert total["cost_usd"] <= bound
    assert total["success"] == hammer.seen("ok") == served
    decisions = ledger.guard_decisions()
    assert decisions[(OUTAGE_BUDGET, "block")] == hammer.seen("ledger_unavailable")
    if mode == "admit":
        assert decisions[(OUTAGE_BUDGET, "allow")] >= 1
    ledger.close()


# --- processes creating one new ledger at the same moment -------------------------------------------------------------


def _first_open(location: str, worker: int, ready, state_home: str) -> None:
    os.environ["XDG_STATE_HOME"] = state_home
    ready.wait()  # every worker imported: they open the ledger together
    ledger = Ledger(open_backend(location), UTC)
    record = UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=0.001, start_time=time.time())
    ledger.ingest([LedgerEntry(f"worker-{worker}:0", record)])
    ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_creating_one_new_ledger_at_the_same_moment_all_open_it(tmp_path, backend, request, monkeypatch):
    state_home = str(tmp_path / "state")
    monkeypatch.setenv("XDG_STATE_HOME", state_home)
    location = str(tmp_path / "new" / "ledger.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(6)
    workers = [context.Process(target=_first_open, args=(location, n, ready, state_home)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=POLL_TIMEOUT)

    assert [worker.exitcode for worker in workers] == [0] * 6
    ledger = Ledger(open_backend(location), UTC)
    assert ledger.call_count() == 6
    assert verify(ledger).intact
    ledger.close()
