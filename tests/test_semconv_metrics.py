"""The semantic-convention histograms are recorded off the caller's path, and no collection misses a call."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from spendwatch.instrumentation import background
from spendwatch.instrumentation.background import FLUSH_INTERVAL_S
from spendwatch.instrumentation.records import UsageRecord
from spendwatch.instrumentation.semconv_metrics import MAX_BACKLOG, MAX_PENDING, SemconvMetrics


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


def wait_until_recorded(metrics: SemconvMetrics, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while metrics._pending and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_background_thread_records_the_queue_without_any_collection():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    for _ in range(5):
        metrics.add(a_record())

    wait_until_recorded(metrics, FLUSH_INTERVAL_S * 5)

    assert not metrics._pending
    assert durations_counted(reader) == 5


def test_a_full_queue_is_recorded_at_once_not_at_the_next_interval(monkeypatch):
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    # The thread's next interval is a day away, so only the full queue's wake-up can record it; no clock is read.
    monkeypatch.setattr(background, "FLUSH_INTERVAL_S", 86400.0)
    metrics.add(a_record())
    wait_until_recorded(metrics, FLUSH_INTERVAL_S * 5)  # this interval ends: the thread now waits out the long one
    assert not metrics._pending
    try:
        for _ in range(MAX_PENDING):
            metrics.add(a_record())

        wait_until_recorded(metrics, 60)  # generous: the thread is woken at once, a loaded machine may be slow

        assert not metrics._pending
        assert durations_counted(reader) == MAX_PENDING + 1
    finally:
        monkeypatch.undo()
        background.background_thread.wake()  # back to the usual interval for the tests that follow


def test_failed_calls_that_used_nothing_count_a_duration_but_no_tokens():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    metrics.add(UsageRecord("openai", "chat", "gpt-4o-mini", error_type="APIConnectionError", duration_s=0.1))
    metrics.add(UsageRecord("openai", "embeddings", "text-embedding-3-small", input_tokens=7, duration_s=0.1))

    points = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = point.attributes
                    key = (metric.name, attributes["gen_ai.operation.name"], attributes.get("gen_ai.token.type"))
                    points[key] = (point.count, point.sum)

    assert points == {
        ("gen_ai.client.operation.duration", "chat", None): (1, 0.1),
        ("gen_ai.client.operation.duration", "embeddings", None): (1, 0.1),
        ("gen_ai.client.token.usage", "embeddings", "input"): (1, 7),
    }


def test_a_forked_child_starts_its_own_background_thread():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    metrics.add(a_record())  # the parent's thread is up
    wait_until_recorded(metrics, FLUSH_INTERVAL_S * 5)

    pid = os.fork()
    if pid == 0:  # the child: no collection, so only a thread of its own can record these
        try:
            for _ in range(3):
                metrics.add(a_record())
            wait_until_recorded(metrics, FLUSH_INTERVAL_S * 5)
            os._exit(0 if not metrics._pending else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0


def test_calls_that_outpace_the_thread_record_inline_so_the_queue_stays_bounded():
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    calls = MAX_BACKLOG + 5000
    longest = 0
    for _ in range(calls):  # a tight loop queues far faster than the SDK records (~7 µs a measurement)
        metrics.add(a_record())
        longest = max(longest, len(metrics._pending))

    assert longest <= MAX_BACKLOG
    assert durations_counted(reader) == calls  # and nothing was dropped


@pytest.mark.slow
def test_a_fork_while_the_histograms_are_being_recorded_leaves_the_child_no_held_lock():
    # A fork copies the locks of the OpenTelemetry SDK as they are: one the recording thread held would stay held in
    # the child forever, and the child's first collection would hang.
    reader = InMemoryMetricReader()
    metrics = SemconvMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    stop = threading.Event()

    def keep_recording() -> None:
        while not stop.is_set():
            for _ in range(2000):
                metrics.add(a_record())
            metrics.flush()

    recorder = threading.Thread(target=keep_recording, daemon=True)
    recorder.start()
    hung = 0
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                try:
                    durations_counted(reader)  # takes the SDK's locks
                finally:
                    os._exit(0)
            hung += not _exited_within(pid, seconds=5)
    finally:
        stop.set()
        recorder.join()
    assert hung == 0


def _exited_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_a_collection_records_the_queue_of_a_second_instrumentation_on_the_same_meter():
    # instrument -> uninstrument -> instrument on one MeterProvider: the meter keeps only the first flush callback.
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    SemconvMetrics(meter)
    again = SemconvMetrics(meter)

    for _ in range(3):
        again.add(a_record())

    assert durations_counted(reader) == 3
