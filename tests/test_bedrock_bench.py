"""bench.bedrock measures the whole spendwatch path: each counted kind is one call, priced from canned usage."""

from __future__ import annotations

from bench import bedrock as bench_bedrock
from tests.bedrock import *  # noqa: F403


def test_each_bench_kind_is_one_priced_call(instrument_bedrock, span_exporter, sink):
    kinds = bench_bedrock.call_kinds()

    for call in kinds.values():
        call()

    spans = span_exporter.get_finished_spans()
    assert len(spans) == len(sink.records) == len(kinds) == 2
    for record in sink.records:
        assert (record.input_tokens, record.output_tokens) == (12, bench_bedrock.DELTAS)
        assert not record.estimated and record.cost_usd > 0
