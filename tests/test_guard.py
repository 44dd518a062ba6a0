"""The budget guard: refusals before any request leaves, no overshoot under concurrency, rules, cooldown, rollover."""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import pickle
import threading
from zoneinfo import ZoneInfo

import openai
import pytest

import spendwatch
from spendwatch import runtime
from spendwatch.exporter import Ledger, LedgerSink, load_settings
from spendwatch.exporter.guard import BudgetGuard
from spendwatch.exporter.guard_rules import guard_config
from spendwatch.exporter.ledger import open_backend
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.errors import as_sdk_error
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable
from spendwatch.instrumentation.records import UsageRecord
from tests.conftest import FAKE_API_KEY

MESSAGES = [{"role": "user", "content": "Estimate the cost of this call."}]
PRICES = PriceTable()
MINI = PRICES.lookup("gpt-4o-mini")
NOON = 1795780800.0  # 2026-11-27T12:00:00Z


@pytest.fixture
def attach(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)

    def configure(config: str | None = None, **settings):
        if config is not None:
            path = tmp_path / "spendwatch.toml"
            path.write_text(config)
            settings["config"] = str(path)
        defaults = {"ledger": str(tmp_path / "ledger.db"), "metrics_address": "off", "enforce": "block"}
        return spendwatch.configure(**{**defaults, **settings})

    yield configure
    runtime.detach()
    OpenAIInstrumentor().uninstrument()


@pytest.fixture
def client(stub):
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)


def chat(client, **options):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **options)


def test_a_call_that_would_break_the_budget_is_refused_before_anything_is_sent(attach, client, stub):
    attached = attach(daily_budget_usd=0.0001)

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        chat(client, max_tokens=1000)  # worst case ~ $0.0006

    error = refused.value
    assert (error.budget, error.period, error.limit_usd) == ("global", "day", 0.0001)
    assert error.estimated_cost_usd > 0.0006
    assert "budget 'global' has $0.0001 of its $0.0001 daily limit left" in str(error)
    assert stub.requests == []
    attached.sink.flush()
    (total,) = attached.ledger.totals()
    assert (total["blocked"], total["cost_usd"]) == (1, 0)
    assert attached.ledger.guard_decisions() == {("global", "block"): 1}


def test_calls_within_the_budget_go_through_and_are_counted_as_allowed(attach, client, stub):
    attached = attach(daily_budget_usd=1.0)

    for _ in range(3):
        chat(client, max_tokens=20)

    attached.sink.flush()
    assert len(stub.requests) == 3
    assert attached.ledger.guard_decisions() == {("global", "allow"): 3}


def test_enforcement_off_never_refuses(attach, client, stub):
    attach(daily_budget_usd=0.0, enforce="off")

    chat(client, max_tokens=1000)

    assert len(stub.requests) == 1


def test_sequential_calls_stop_at_the_limit_and_never_past_it(attach, client, stub):
    attached = attach(daily_budget_usd=0.005)
    admitted = refused = 0
    for _ in range(20):
        try:
            chat(client, max_tokens=1000)
            admitted += 1
        except spendwatch.BudgetExceededError:
            refused += 1

    attached.sink.flush()
    spent = attached.ledger.totals()[0]["cost_usd"]
    worst = MINI.cost(200, 1000)
    assert refused > 0 and admitted > 0
    assert spent <= 0.005
    assert spent >= 0.005 - 2 * worst  # refused only when the next worst case no longer fit
    assert len(stub.requests) == admitted


def hammer(call, threads: int = 8, calls: int = 3) -> collections.Counter:
    """``call`` made ``calls`` times by each of ``threads`` threads at once: how many went through ("ok") and how
    many the guard refused ("refused")."""
    outcomes: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def caller():
        for _ in range(calls):
            try:
                call()
                outcome = "ok"
            except spendwatch.BudgetExceededError:
                outcome = "refused"
            with lock:
                outcomes[outcome] += 1

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def test_threads_hammering_one_budget_never_overshoot(attach, client, stub):
    attached = attach(daily_budget_usd=0.004)

    outcomes = hammer(lambda: chat(client, max_tokens=500), threads=8, calls=6)

    attached.sink.flush()
    spent = attached.ledger.totals()[0]["cost_usd"]
    assert outcomes["refused"] > 0
    assert spent <= 0.004
    assert spent >= 0.004 - 8 * MINI.cost(200, 500)


def _process_hammer(ledger: str, base_url: str, budget: float, threads: int, calls: int, queue) -> None:
    os.environ.pop("SPENDWATCH_CONFIG", None)
    spendwatch.configure(ledger=ledger, metrics_address="off", enforce="block", daily_budget_usd=budget)
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=base_url, max_retries=0)
    counts = hammer(lambda: chat(client, max_tokens=400), threads, calls)
    runtime.detach()
    queue.put(dict(counts))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_sharing_a_one_dollar_scale_budget_never_overshoot(tmp_path, stub, backend, request):
    ledger = str(tmp_path / "ledger.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    budget = 0.006
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_process_hammer, args=(ledger, stub.base_url, budget, 3, 6, queue)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = [queue.get(timeout=5) for _ in processes]

    opened = Ledger(open_backend(ledger), ZoneInfo("UTC"))
    (total,) = opened.totals()
    admitted = sum(result.get("ok", 0) for result in results)
    worst = MINI.cost(200, 400)
    assert total["cost_usd"] <= budget
    assert total["success"] == admitted == len(stub.usage_log)
    assert total["blocked"] == sum(result.get("refused", 0) for result in results) > 0
    assert total["cost_usd"] >= budget - 4 * 3 * worst  # at most each caller's last worst case left unused
    assert opened.spend(*_today(opened)) == pytest.approx(total["cost_usd"])


def _today(ledger: Ledger):
    from datetime import date, timedelta

    today = date.today()
    return today - timedelta(days=1), today + timedelta(days=2)


# --- the guard on its own, with an injected clock ----------------------------------------------------------------


def a_request(model: str = "gpt-4o-mini", output: int | None = 1000, category: str | None = None) -> CallRequest:
    return CallRequest("openai", "chat", model, category, 100, output, "max_tokens" if output else None)


def settle(ticket, cost: float | None, start: float = NOON) -> UsageRecord:
    record = UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=cost, start_time=start)
    ticket.settle(record)
    return record


@pytest.fixture
def make_guard(tmp_path):
    opened: list = []

    def build(config_toml: str = "", clock=lambda: NOON, **environ_settings) -> tuple[BudgetGuard, LedgerSink]:
        config = tmp_path / "spendwatch.toml"
        config.write_text(config_toml)
        settings = load_settings({"config": str(config), **environ_settings}, environ={})
        ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), settings.timezone)
        sink = LedgerSink(ledger, tmp_path / "journal", drain_interval=3600)
        rules = guard_config(settings.raw.get("guard"), str(config))
        guard = BudgetGuard(ledger, settings, PRICES, rules, clock=clock)
        opened.append(sink)
        return guard, sink

    yield build
    for sink in opened:
        sink.close()


def _admit_and_wait(location: str, journal: str, limit: float, admitted) -> None:
    """A process that reserves a call, says so, and waits to be killed (no settle, no close)."""
    settings = load_settings({"daily_budget_usd": limit}, environ={})
    ledger = Ledger(open_backend(location), settings.timezone)
    LedgerSink(ledger, journal, drain_interval=3600)
    BudgetGuard(ledger, settings, PRICES, guard_config(None, "test"), clock=lambda: NOON).admit(a_request())
    admitted.set()
    threading.Event().wait()


def test_a_killed_processes_lease_outlives_its_ttl_until_its_journal_is_in(make_guard, tmp_path):
    limit = MINI.cost(100, 1000) * 1.5
    survivor, sink = make_guard(daily_budget_usd=limit)
    context = multiprocessing.get_context("spawn")
    admitted = context.Event()
    crashed = context.Process(
        target=_admit_and_wait, args=(str(tmp_path / "ledger.db"), str(tmp_path / "journal"), limit, admitted)
    )
    crashed.start()
    assert admitted.wait(120)
    crashed.kill()
    crashed.join()
    # Expiry is by the database's clock: the killed process's TTL passes as its expiry falls behind that clock.
    with survivor.ledger.transaction() as cursor:
        survivor.ledger.backend.execute(cursor, "UPDATE leases SET expires_at = expires_at - 301")

    with pytest.raises(spendwatch.BudgetExceededError):  # its journal is not in the ledger yet: its lease holds
        survivor.admit(a_request())

    sink.after_drain[0]()  # the drainer's look for dead processes' journals: replayed, so the lease is released
    assert survivor.admit(a_request()) is not None


def test_spend_settles_to_the_actual_cost_and_releases_the_rest(make_guard):
    worst = MINI.cost(100, 1000)
    guard, sink = make_guard(daily_budget_usd=worst * 2.2)

    for _ in range(4):  # each call really costs a tenth of its worst case
        sink.record(settle(guard.admit(a_request()), worst / 10))
    sink.flush()

    assert guard.admit(a_request()) is not None


def test_a_new_day_starts_a_new_period(make_guard):
    clock = {"now": NOON}
    worst = MINI.cost(100, 1000)
    guard, sink = make_guard(daily_budget_usd=worst * 1.5, clock=lambda: clock["now"])
    sink.record(settle(guard.admit(a_request()), worst))
    sink.flush()
    with pytest.raises(spendwatch.BudgetExceededError):
        guard.admit(a_request())

    clock["now"] = NOON + 86400

    assert guard.admit(a_request()) is not None


def test_a_per_call_ceiling_refuses_expensive_calls_only(make_guard):
    guard, _ = make_guard("[[guard.ceilings]]\nmax_usd = 0.0001\nmodels = ['gpt-4o-mini']\n", daily_budget_usd=10)

    with pytest.raises(spendwatch.BudgetExceededError, match="single call"):
        guard.admit(a_request(output=1000))
    assert guard.admit(a_request(output=10)) is not None
    assert guard.admit(a_request(model="gpt-4o", output=1000)) is not None


DEGRADE = """
[[guard.rules]]
budget = "global"
at = 0.5
action = "degrade"
max_output_tokens = 50
model = "gpt-4o-mini"
cooldown_s = 60
"""


def test_degrade_caps_the_output_and_swaps_the_model_past_the_share_until_the_cooldown_ends(make_guard):
    clock = {"now": NOON}
    guard, sink = make_guard(DEGRADE, daily_budget_usd=0.01, clock=lambda: clock["now"])
    assert guard.admit(a_request(model="gpt-4o", output=100)).request_changes is None

    sink.record(settle(guard.admit(a_request(output=10)), 0.006))
    sink.flush()
    ticket = guard.admit(a_request(model="gpt-4o", output=100))

    assert ticket.request_changes == {"model": "gpt-4o-mini", "max_tokens": 50}
    assert ticket.decisions == (("global", "degrade"),)
    settle(ticket, 0.0)
    guard.ledger.set_budget_limit("global", "day", 1.0)  # far below the share now, but the cooldown holds
    clock["now"] += 30
    assert guard.admit(a_request(model="gpt-4o")).request_changes == {"model": "gpt-4o-mini", "max_tokens": 50}


THROTTLE = """
[[guard.rules]]
budget = "global"
at = 0.0
action = "throttle"
max_calls_per_minute = 2
"""


def test_throttle_admits_at_most_n_calls_a_minute(make_guard):
    clock = {"now": NOON}
    guard, _ = make_guard(THROTTLE, daily_budget_usd=1.0, clock=lambda: clock["now"])
    guard.admit(a_request(output=10))
    guard.admit(a_request(output=10))

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        guard.admit(a_request(output=10))
    assert refused.value.action == "throttle"

    clock["now"] += 61
    assert guard.admit(a_request(output=10)) is not None


def test_category_budget_only_guards_its_category(make_guard):
    config = "[budgets.tiny]\ncategory = 'genomics'\ndaily_usd = 0.0001\n"
    guard, _ = make_guard(config)

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        guard.admit(a_request(category="genomics"))
    assert refused.value.budget == "tiny"
    assert guard.admit(a_request(category="proteomics")) is None  # no budget covers it


def test_unpriced_models_are_admitted_unless_configured_otherwise(make_guard):
    allowing, _ = make_guard(daily_budget_usd=1.0)
    assert allowing.admit(a_request(model="my-private-model")) is not None

    blocking, _ = make_guard("[guard]\nunpriced = 'block'\n", daily_budget_usd=1.0)
    with pytest.raises(spendwatch.BudgetExceededError, match="no price"):
        blocking.admit(a_request(model="my-private-model"))


def test_degrade_is_visible_in_the_request_that_reaches_the_server(attach, client, stub):
    attached = attach(DEGRADE.replace("at = 0.5", "at = 0.0"), daily_budget_usd=1.0)

    chat(client, max_tokens=400)

    assert stub.requests[0]["body"]["max_tokens"] == 50
    attached.sink.flush()
    assert attached.ledger.guard_decisions() == {("global", "degrade"): 1}


def test_on_threshold_fires_once_per_level(attach, client):
    attached = attach(daily_budget_usd=0.0015, enforce="off")
    fired: list[tuple[str, str, str]] = []
    spendwatch.on_threshold(lambda status, level: fired.append((status.name, status.period, level)))

    for _ in range(3):
        chat(client, max_tokens=1000)  # ~$0.0006 each: 40 %, 80 %, 120 %
        attached.sink.flush()
        attached.thresholds.check()

    assert fired == [("global", "day", "warning"), ("global", "day", "critical"), ("global", "day", "exceeded")]


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[[guard.rules]]\nbudget = 'global'\nat = 0.9\naction = 'panic'", "must be one of block, throttle, degrade"),
        ("[[guard.rules]]\nbudget = 'global'\nat = 0.9\naction = 'degrade'", "needs max_output_tokens or model"),
        ("[[guard.ceilings]]\nmax_usd = -1", "non-negative"),
        ("[guard]\nunpriced = 'maybe'", "must be one of admit, upper-bound, block"),
        ("[guard]\non_ledger_error = 'maybe'", "guard.on_ledger_error='maybe' .* must be block or admit"),
    ],
)
def test_bad_guard_rules_fail_at_start_up(attach, toml, problem):
    with pytest.raises(spendwatch.ConfigError, match=problem):
        attach(toml)


# --- the refusal as the app sees it: an SDK error, not retried, with a message that adds up -----------------------


def test_a_refusal_is_an_openai_error_that_the_sdk_does_not_retry(attach, stub, caplog):
    attached = attach(daily_budget_usd=0.0001)
    patient = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=5)
    caplog.set_level(logging.DEBUG, logger="openai")

    with pytest.raises(openai.OpenAIError) as refused:  # what an app's handler for the SDK's errors catches
        chat(patient, max_tokens=1000)

    assert isinstance(refused.value, spendwatch.BudgetExceededError)
    assert stub.requests == []
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]
    attached.sink.flush()
    (total,) = attached.ledger.totals()
    assert (total["blocked"], total["error"], total["success"]) == (1, 0, 0)
    assert attached.ledger.guard_decisions() == {("global", "block"): 1}


def test_an_async_refusal_is_an_openai_error_too(attach, stub):
    attach(daily_budget_usd=0.0001)
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=5)

    async def call():
        return await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1000)

    with pytest.raises(openai.OpenAIError) as refused:
        asyncio.run(call())

    assert isinstance(refused.value, spendwatch.BudgetExceededError)
    assert stub.requests == []


def test_a_refusal_crosses_processes_whole():
    refusal = as_sdk_error(spendwatch.BudgetExceededError("global", "day", 1.0, 0.25, 2.0), openai.OpenAIError)

    copied = pickle.loads(pickle.dumps(refusal))

    assert type(copied) is type(refusal)
    assert isinstance(copied, openai.OpenAIError)
    assert (copied.budget, copied.spent_usd, copied.estimated_cost_usd, str(copied)) == (
        "global",
        0.25,
        2.0,
        str(refusal),
    )


def test_a_refusal_counts_the_last_calls_settled_cost_not_its_reservation(attach, client, stub):
    attached = attach(daily_budget_usd=0.02)
    chat(client)  # no cap: reserves ~$0.0098 for gpt-4o-mini's 16,384 output tokens; the stub answers with 12

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        chat(client, max_tokens=40_000)  # could cost ~$0.024, more than the whole limit

    attached.sink.flush()
    error = refused.value
    settled = attached.ledger.totals()[0]["cost_usd"]
    assert 0 < settled < MINI.cost(200, 16_384) / 100
    assert error.spent_usd == pytest.approx(settled)
    assert error.reserved_usd == 0
    assert error.remaining_usd == pytest.approx(0.02 - settled)
    assert str(error).startswith("spendwatch refused the call: it could cost up to $0.024")
    assert "of its $0.02 daily limit left" in str(error)
    assert "would exceed" not in str(error)


def test_a_refusal_counts_calls_in_flight_as_reserved(make_guard):
    worst = MINI.cost(100, 1000)
    guard, _ = make_guard(daily_budget_usd=worst * 1.5)
    guard.admit(a_request())  # in flight: not settled yet

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        guard.admit(a_request())

    assert refused.value.spent_usd == 0
    assert refused.value.reserved_usd == pytest.approx(worst)
    assert f"{_dollars(worst)} reserved by calls in flight" in str(refused.value)


def _dollars(amount: float) -> str:
    return f"${amount:.7f}".rstrip("0")
