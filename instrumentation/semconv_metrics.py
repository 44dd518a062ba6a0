"""The GenAI semantic-convention metrics (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``),
recorded off the caller's path.

Three histogram recordings cost the OpenTelemetry SDK about 20 µs a call, a third of our whole budget. So a call only
appends its finished usage record to a queue (~0.1 µs). The queue is recorded into the histograms by a background
thread once :data:`FLUSH_AT` calls wait, and always when a metric reader collects (an observable callback runs first
in every collection, so no reader ever misses a call); only past :data:`MAX_PENDING` (the thread cannot keep up) does
a caller record the queue itself. The cost: measurements carry the time they were recorded, and no exemplars.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from spendwatch.instrumentation.records import UsageRecord

__all__ = ["SemconvMetrics", "TOKEN_USAGE_BUCKETS", "DURATION_BUCKETS", "FLUSH_AT", "MAX_PENDING"]

# Explicit bucket boundaries from the GenAI semantic conventions (gen-ai-metrics.md).
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FLUSH_AT = 64
MAX_PENDING = 4096

_logger = logging.getLogger(__name__)


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
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._pending: deque[UsageRecord] = deque()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0
        # Observes nothing: it exists for its callback, which every collection runs before reading the histograms.
        meter.create_observable_gauge("spendwatch.internal.semconv_flush", callbacks=[self._flush_before_collect])

    def add(self, record: UsageRecord) -> None:
        pending = self._pending
        pending.append(record)
        if len(pending) >= FLUSH_AT and not self._wake.is_set():
            self._start_flusher()
            self._wake.set()
        if len(pending) > MAX_PENDING:
            self.flush()

    def _start_flusher(self) -> None:
        # Started lazily, and again in a forked child (threads do not survive a fork).
        if self._flusher is None or self._flusher_pid != os.getpid():
            self._flusher_pid = os.getpid()
            self._flusher = threading.Thread(target=self._flush_when_woken, name="spendwatch-semconv", daemon=True)
            self._flusher.start()

    def _flush_when_woken(self) -> None:
        while True:
            self._wake.wait()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the SDK's failure must not end the thread
                _logger.debug("spendwatch: recording semconv metrics failed", exc_info=True)
            self._wake.clear()

    def flush(self) -> None:
        pending = self._pending
        while pending:
            try:
                record = pending.popleft()
            except IndexError:  # another thread emptied it first
                return
            self._record(record)

    def _flush_before_collect(self, options: CallbackOptions) -> list[Observation]:
        self.flush()
        return []

    def _record(self, record: UsageRecord) -> None:
        attributes = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.provider.name": record.provider,
            "gen_ai.request.model": record.request_model,
        }
        if record.response_model:
            attributes["gen_ai.response.model"] = record.response_model
        if record.error_type:
            attributes["error.type"] = record.error_type
        self.operation_duration.record(record.duration_s, attributes)
        if record.error_type is None or record.input_tokens or record.output_tokens:
            self.token_usage.record(record.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            if record.operation != "embeddings":
                self.token_usage.record(record.output_tokens, {**attributes, "gen_ai.token.type": "output"})
