"""The benchmark's ``work-floor`` reference does the work it claims: the same usage and cost on its spans as
spendwatch's, for every kind it times. Each variant instruments the SDK for good, so each runs in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# A fresh interpreter per benchmark variant: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parent.parent
_SPANS_OF_ONE_CALL_PER_KIND = """
import asyncio, json, sys
from bench import transport, variants
variants.setup(sys.argv[1])
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
spans = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(spans))
client, aclient = transport.make_clients()
messages = [{"role": "user", "content": "Say this is a test"}]
client.chat.completions.create(model=transport.CHAT_MODEL, messages=messages)
asyncio.run(aclient.chat.completions.create(model=transport.CHAT_MODEL, messages=messages))
client.responses.create(model=transport.CHAT_MODEL, input="Say this is a test")
client.embeddings.create(model=transport.EMBEDDING_MODEL, input="Say this is a test")
print(json.dumps([dict(span.attributes) for span in spans.get_finished_spans()]))
"""
_COMPARED = (
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cost",
    "gen_ai.usage.cost.amount",
    "spendwatch.pricing",
)


def _spans(variant: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", _SPANS_OF_ONE_CALL_PER_KIND, variant],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_work_floor_prices_every_timed_call_as_spendwatch_does():
    ours, floor = _spans("spendwatch"), _spans("work-floor")
    assert len(floor) == len(ours) == 4
    for spendwatch_span, floor_span in zip(ours, floor, strict=True):
        assert floor_span["gen_ai.usage.cost"] > 0
        assert {key: floor_span[key] for key in _COMPARED} == {key: spendwatch_span[key] for key in _COMPARED}
