"""Concurrent callers hammer one budget through the real SDK and the stub, with calls whose cost the old guard did
not bound (a priority tier, no output cap and long answers, web search, a model without a price): the settled spend
never goes past the limit, and the guard does refuse."""

from __future__ import annotations

import multiprocessing
import os
from zoneinfo import ZoneInfo

import openai
import pytest

import spendwatch
from spendwatch import runtime
from spendwatch.demo.stub import StubServer
from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from tests.conftest import FAKE_API_KEY
from tests.test_guard import MESSAGES, attach, hammer  # noqa: F401 - attach is a fixture

LONG_ANSWER = 16_000  # words the stub answers with when the request sets no cap: past the 4096 the old guard assumed


def _client(server: StubServer) -> openai.OpenAI:
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url=server.base_url, max_retries=0)


def _settled(attached) -> dict:
    attached.sink.flush()
    (total,) = attached.ledger.totals()
    return total


def test_priority_calls_without_a_cap_answering_at_length_never_overshoot(attach):  # noqa: F811
    attached = attach(daily_budget_usd=0.1)
    with StubServer(reply_words=LONG_ANSWER) as server:
        client = _client(server)

        outcomes = hammer(
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, service_tier="priority")
        )

        total = _settled(attached)
        assert outcomes["refused"] > 0 and outcomes["ok"] > 0
        assert total["cost_usd"] <= 0.1
        assert total["success"] == outcomes["ok"] == len(server.usage_log)
        assert all(usage.output_tokens == LONG_ANSWER for usage in server.usage_log)


def test_web_search_calls_never_overshoot(attach):  # noqa: F811
    attached = attach(daily_budget_usd=0.06)
    with StubServer() as server:
        client = _client(server)

        outcomes = hammer(
            lambda: client.responses.create(
                model="gpt-4o-mini",
                input="What happened today?",
                tools=[{"type": "web_search"}],
                max_tool_calls=1,
                max_output_tokens=50,
            )
        )

        total = _settled(attached)
        assert outcomes["refused"] > 0 and outcomes["ok"] > 0
        assert total["cost_usd"] <= 0.06
        assert total["cost_usd"] >= 0.01 * outcomes["ok"]  # each call's search is billed ($10 per 1,000)


def test_a_model_without_a_price_is_bounded_and_counted_at_the_upper_bound(attach):  # noqa: F811
    attached = attach("[guard]\nunpriced = 'upper-bound'\n", daily_budget_usd=0.5)
    with StubServer() as server:
        client = _client(server)

        outcomes = hammer(
            lambda: client.chat.completions.create(model="gpt-9-secret", messages=MESSAGES, max_tokens=500)
        )

        total = _settled(attached)
        assert outcomes["refused"] > 0 and outcomes["ok"] > 0
        assert 0 < total["cost_usd"] <= 0.5
        # Charged to the budget at the assumed price, which the ledger row names, and still unpriced (alerted).
        assert total["unpriced"] == outcomes["ok"]
        rows = attached.ledger.table_rows("calls")
        assert {row["pricing"].split(":")[0] for row in rows if row["outcome"] == "success"} == {"upper bound"}


def _process_hammer(ledger: str, base_url: str, budget: float, queue) -> None:
    os.environ.pop("SPENDWATCH_CONFIG", None)
    spendwatch.configure(ledger=ledger, metrics_address="off", enforce="block", daily_budget_usd=budget)
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=base_url, max_retries=0)
    outcomes = hammer(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, service_tier="priority"),
        threads=3,
    )
    runtime.detach()
    queue.put(dict(outcomes))


@pytest.mark.slow
def test_processes_with_priority_calls_answering_at_length_never_overshoot(tmp_path):
    ledger, budget = str(tmp_path / "ledger.db"), 0.1
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with StubServer(reply_words=LONG_ANSWER) as server:
        processes = [
            context.Process(target=_process_hammer, args=(ledger, server.base_url, budget, queue)) for _ in range(3)
        ]
        for process in processes:
            process.start()
        results = [queue.get() for _ in processes]
        for process in processes:
            process.join()
            assert process.exitcode == 0

    (total,) = Ledger(open_backend(ledger), ZoneInfo("UTC")).totals()
    assert sum(result.get("refused", 0) for result in results) > 0
    assert total["success"] == sum(result.get("ok", 0) for result in results) > 0
    assert total["cost_usd"] <= budget
