"""``responses.create(background=True)`` returns a queued response with no usage: the call is counted when this
process retrieves (or cancels) it in a final status, priced from the usage reported then, once; a call whose outcome
is never seen here is counted from its request when the instrumentation is removed (or the process exits)."""

from __future__ import annotations

import os

import pytest

from spendwatch.instrumentation.openai_sdk import background

pytestmark = pytest.mark.usefixtures("instrument_openai")

REQUEST = {"model": "gpt-4o-mini", "input": "Summarise what this research costs", "background": True}


def finished_spans(span_exporter) -> list:
    return list(span_exporter.get_finished_spans())


def test_a_background_response_is_counted_when_retrieved_completed_and_only_once(client, stub, span_exporter, sink):
    queued = client.responses.create(**REQUEST)
    assert queued.status == "queued" and queued.usage is None
    assert sink.records == [] and finished_spans(span_exporter) == []  # still running: nothing to count yet

    done = client.responses.retrieve(queued.id)
    client.responses.retrieve(queued.id)

    assert done.status == "completed"
    (record,) = sink.records
    (reported,) = stub.usage_log
    assert (record.input_tokens, record.output_tokens) == (reported.input_tokens, reported.output_tokens)
    assert record.estimated is False and record.cost_usd > 0
    (span,) = finished_spans(span_exporter)
    assert span.attributes["gen_ai.usage.cost"] == record.cost_usd
    assert span.attributes["gen_ai.usage.output_tokens"] == reported.output_tokens


async def test_an_async_background_response_is_counted_when_retrieved(async_client, stub, sink):
    queued = await async_client.responses.create(**REQUEST)
    assert sink.records == []

    await async_client.responses.retrieve(queued.id)

    (record,) = sink.records
    assert record.output_tokens == stub.usage_log[0].output_tokens and not record.estimated


def test_a_cancelled_background_response_is_counted_from_what_it_reports(client, stub, sink):
    queued = client.responses.create(**REQUEST)

    cancelled = client.responses.cancel(queued.id)

    assert cancelled.status == "cancelled"
    (record,) = sink.records
    assert (record.outcome, record.output_tokens) == ("success", stub.usage_log[0].output_tokens)


def test_a_background_response_never_retrieved_is_counted_from_its_request_when_uninstrumented(
    instrument_openai, client, sink
):
    client.responses.create(**REQUEST)
    assert sink.records == []

    instrument_openai.uninstrument()

    (record,) = sink.records
    assert record.estimated is True and record.input_tokens > 0 and record.output_tokens == 0


def test_a_response_created_elsewhere_is_not_counted_when_retrieved_here(client, stub, sink):
    instrumented_elsewhere = client.responses.create(**{**REQUEST, "background": False})
    sink.records.clear()
    client.responses.create(**REQUEST)  # parked here, under another id

    stub._keep_background(instrumented_elsewhere.model_dump() | {"background": True})
    client.responses.retrieve(instrumented_elsewhere.id)

    assert sink.records == []  # only the call this process created will be counted, when its outcome is seen


def test_a_background_response_that_failed_is_counted_as_failed(client, stub, span_exporter, sink):
    queued = client.responses.create(**REQUEST)
    stub._background_response(queued.id, "failed")  # the model run failed after it was queued

    client.responses.retrieve(queued.id)

    (record,) = sink.records
    assert (record.outcome, record.error_type) == ("error", "response.failed")
    assert finished_spans(span_exporter)[0].attributes["error.type"] == "response.failed"


def test_a_forked_child_leaves_its_parents_background_calls_to_the_parent(client, sink):
    client.responses.create(**REQUEST)

    child = os.fork()
    if child == 0:  # the child: at its exit it must not count the parent's call
        background.end_all_from_request()
        os._exit(len(sink.records))
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert sink.records == []  # the parent still holds it, until its outcome is seen
