"""spendwatch.category: a with block or decorator that attributes every LLM call inside, across asyncio tasks."""

from __future__ import annotations

import asyncio

import openai
import pytest
from opentelemetry import baggage, context, propagate

import spendwatch
from spendwatch.attribution import clean_category
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("metabolite_identification", "metabolite_identification"),
        ("team-a/feature.x:1", "team-a/feature.x:1"),
        ("", "other"),
        ("has space", "other"),
        ("x" * 65, "other"),
        ("x" * 64, "x" * 64),
        ("drop;table", "other"),
        ("new\nline", "other"),
        (None, "other"),
        (42, "other"),
    ],
)
def test_categories_are_cleaned(given, kept):
    assert clean_category(given) == kept


def test_with_block_and_nesting(client, sink):
    with spendwatch.category("outer"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with spendwatch.category("inner"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert [record.category for record in sink.records] == ["outer", "inner", "outer", None]


async def test_async_decorator_covers_the_whole_coroutine_and_its_tasks(stub, sink):
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)

    @spendwatch.category("literature_review")
    async def review() -> None:
        await asyncio.sleep(0)
        await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(2))
        )

    await review()
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert [record.category for record in sink.records] == ["literature_review", "literature_review", None]


def test_sync_decorator(client, sink):
    @spendwatch.category("genomics")
    def annotate() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    annotate()

    assert sink.records[0].category == "genomics"


def test_a_fresh_context_attached_inside_keeps_the_category(client, sink):
    # What web frameworks' OpenTelemetry instrumentations do inside a middleware: attach the context extracted from
    # the request headers, which starts empty (or holds only the client's baggage).
    with spendwatch.category("route_category"):
        token = context.attach(propagate.extract({}))
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        context.detach(token)
        token = context.attach(propagate.extract({"baggage": "spendwatch.category=client_says"}))
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with spendwatch.category("handler_choice"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        context.detach(token)

    assert [record.category for record in sink.records] == ["route_category", "route_category", "handler_choice"]


def test_baggage_from_upstream_names_the_category_when_spendwatch_set_none(client, sink):
    token = context.attach(propagate.extract({"baggage": "spendwatch.category=literature_review"}))
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        context.detach(token)
    with spendwatch.category("genomics"):
        assert baggage.get_baggage("spendwatch.category") == "genomics"  # still sent on to downstream services

    assert sink.records[0].category == "literature_review"


def test_a_tracked_calls_own_category_wins_over_the_one_around_it(sink):
    with spendwatch.category("route_category"), spendwatch.track("chat", model="gpt-4o-mini", category="tracked") as op:
        op.set_tokens(input=10, output=5)

    assert sink.records[0].category == "tracked"


async def test_a_context_attached_explicitly_names_the_category_even_in_a_task_started_under_another(
    async_client, sink
):
    # A long-lived worker task, started inside one category, runs each job under the OpenTelemetry context its
    # submitter captured (as OpenTelemetry-aware queues do): each call gets its submitter's category.
    jobs: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        while True:
            captured, done = await jobs.get()
            token = context.attach(captured)
            try:
                await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            finally:
                context.detach(token)
            done.set_result(None)

    with spendwatch.category("first_request"):
        task = asyncio.create_task(worker())
    for name in ("genomics", "literature_review"):
        with spendwatch.category(name):
            done = asyncio.get_running_loop().create_future()
            await jobs.put((context.get_current(), done))
            await done
    task.cancel()

    assert [record.category for record in sink.records] == ["genomics", "literature_review"]
