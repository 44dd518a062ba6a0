"""The GenAI semantic-convention metrics (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``),
recorded off the caller's path.

Three histogram recordings cost the OpenTelemetry SDK about 20 µs a call (``python -m bench``, "deferred" table). So a
call only appends a tuple of plain values to a queue (no object the garbage collector has to walk, no thread to wake).
The background thread (:mod:`.background`) records every queue into its histograms each interval, or at once
when a queue reaches :data:`MAX_PENDING`; and an observable callback, which every collection runs before it reads the
histograms, records the queue first, so no reader ever misses a call. Should calls ever outpace the thread, past
:data:`MAX_BACKLOG` each call records one queued call itself (as an instrumentation without a queue would), so memory
stays bounded. The cost: measurements carry the time they were recorded (at most a second late), and no exemplars.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from spendwatch.instrumentation.background import background_thread
from spendwatch.instrumentation.records import UsageRecord

__all__ = [
    "MAX_BACKLOG",
    "MAX_PENDING",
    "OPERATION_DURATION_BUCKETS",
    "TOKEN_USAGE_BUCKETS",
    "SemconvMetrics",
    "record_queues",
]

# Explicit bucket boundaries from the GenAI semantic conventions (gen-ai-metrics.md).
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
OPERATION_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
MAX_PENDING = 8192
MAX_BACKLOG = 8 * MAX_PENDING
_MAX_CACHED_KEYS = 1024

_logger = logging.getLogger(__name__)

# (operation, provider, request model, response model, error type): one histogram attribute set.
_Key = tuple[str, str, str, str | None, str | None]


class SemconvMetrics:
    def __init__(self, meter: Meter) -> None:
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_USAGE_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=OPERATION_DURATION_BUCKETS,
        )
        # (key, duration, input tokens, output tokens) per call, oldest first.
        self._pending: deque[tuple[_Key, float, int, int]] = deque()
        self._attributes: dict[_Key, tuple[dict, dict, dict]] = {}
        # Observes nothing: it exists for its callback, which every collection runs before reading the histograms.
        meter.create_observable_gauge("spendwatch.internal.semconv_flush", callbacks=[self._flush_before_collect])
        _queues.add(self)

    def add(self, record: UsageRecord) -> None:
        pending = self._pending
        key = (record.operation, record.provider, record.request_model, record.response_model, record.error_type)
        pending.append((key, record.duration_s, record.input_tokens, record.output_tokens))
        if len(pending) >= MAX_PENDING or not background_thread.running:
            background_thread.wake()
            if len(pending) >= MAX_BACKLOG:  # calls outpace the thread: record one here, so the queue stops growing
                self._record_oldest()

    def flush(self) -> int:
        """Record the queue now; returns how many calls this recorded."""
        with background_thread.recording:
            return self._record_all()

    def _record_all(self) -> int:
        pending = self._pending
        recorded = 0
        while pending:
            try:
                key, duration, input_tokens, output_tokens = pending.popleft()
            except IndexError:  # another thread emptied it first
                break
            self._record(key, duration, input_tokens, output_tokens)
            recorded += 1
        return recorded

    def _record_oldest(self) -> None:
        try:
            oldest = self._pending.popleft()
        except IndexError:  # the thread emptied it first
            return
        with background_thread.recording:
            self._record(*oldest)

    def _flush_before_collect(self, options: CallbackOptions) -> list[Observation]:
        # Every queue, not only this one: a meter keeps the first callback of an instrument name and drops later
        # ones, so after instrument -> uninstrument -> instrument on one MeterProvider only the first one runs.
        record_queues()
        return []

    def _record(self, key: _Key, duration: float, input_tokens: int, output_tokens: int) -> None:
        attributes = self._attributes.get(key)
        if attributes is None:
            if len(self._attributes) >= _MAX_CACHED_KEYS:  # many models in one long-lived process: start over
                self._attributes.clear()
            attributes = self._attributes[key] = _attribute_sets(key)
        common, input_type, output_type = attributes
        self.operation_duration.record(duration, common)
        if key[4] is None or input_tokens or output_tokens:  # a failed call that used nothing has no token counts
            self.token_usage.record(input_tokens, input_type)
            if key[0] != "embeddings":
                self.token_usage.record(output_tokens, output_type)


def _attribute_sets(key: _Key) -> tuple[dict, dict, dict]:
    """The duration's attributes, and the token usage's for input and for output."""
    operation, provider, request_model, response_model, error_type = key
    common = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
    }
    if response_model:
        common["gen_ai.response.model"] = response_model
    if error_type:
        common["error.type"] = error_type
    return common, {**common, "gen_ai.token.type": "input"}, {**common, "gen_ai.token.type": "output"}


_queues: weakref.WeakSet[SemconvMetrics] = weakref.WeakSet()


def record_queues() -> int:
    """Record every queue of this process (each under the thread's ``recording`` lock); returns how many calls this
    recorded."""
    recorded = 0
    for metrics in list(_queues):
        try:
            recorded += metrics.flush()
        except Exception:  # noqa: BLE001 - the SDK's failure must not end the thread
            _logger.debug("spendwatch: recording semconv metrics failed", exc_info=True)
    return recorded


background_thread.flushes.append(record_queues)
