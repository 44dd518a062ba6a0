"""The semantic-convention histograms are recorded off the caller's path, and no collection misses a call."""

from __future__ import annotations

import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from spendwatch.instrumentation.records import UsageRecord
from spendwatch.instrumentation.semconv_metrics import FLUSH_AT, SemconvMetrics


def a_record() -> UsageRecord:
    return UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=10, output_tokens=5, duration_s=0.3)


def durations_counted(reader: InMemoryMetricReader) -> int:
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "gen_ai.client.operation.duration":
                    return sum(point.count for point in metric.data.data_points)
    return 0


def test_a_collection_records_every_call_queued_before_it():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    for _ in range(3):
        metrics.add(a_record())

    assert durations_counted(reader) == 3


def test_a_background_thread_records_the_queue_without_any_collection():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    for _ in range(FLUSH_AT):
        metrics.add(a_record())

    deadline = time.monotonic() + 10
    while metrics._pending and time.monotonic() < deadline:
        time.sleep(0.01)

    assert not metrics._pending
    assert durations_counted(reader) == FLUSH_AT
