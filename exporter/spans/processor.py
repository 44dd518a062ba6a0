"""In-process span ingestion (``SPENDWATCH_INGEST_SPANS=on``): a span processor on the app's tracer provider that
prices every ended GenAI span another instrumentation made and hands its record to the ledger sink.

Counted once: spendwatch's own spans (instrumentation scope ``spendwatch...``) are never read here, since the
instrumentor recorded their calls already; and when another instrumentation and spendwatch both made a CLIENT span
for the same request, one the parent of the other, spendwatch's record stands and the other span is passed over. The
spans spendwatch has open, and the parents of those that ended, are kept (by span id) until the span in question ends.

It sees only spans that are recording: a span the sampler dropped has no attributes and never reaches a processor.
"""

from __future__ import annotations

import logging

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from spendwatch.exporter.spans.dialects import usage_of_span
from spendwatch.exporter.spans.records import record_of, service_name
from spendwatch.instrumentation.calls import current_category
from spendwatch.instrumentation.pricing import PriceTable

__all__ = ["SpanIngestProcessor"]

_logger = logging.getLogger(__name__)
_OWN_SCOPE = "spendwatch"
_NS = 1e-9


class SpanIngestProcessor(SpanProcessor):
    """Prices other instrumentations' GenAI spans into ``sink`` (``record(UsageRecord)``) with source ``span``."""

    def __init__(self, sink, prices: PriceTable) -> None:
        self._sink = sink
        self._prices = prices
        self._own_open: set[int] = set()  # span ids of spendwatch's spans not ended yet
        self._covered: set[int] = set()  # span ids of spans whose child spendwatch recorded, until they end
        # A tracer provider cannot drop a processor: once spendwatch detaches, this one stays and does nothing.
        self.active = True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            if self.active and _is_own(span):
                self._own_open.add(span.context.span_id)
        except Exception:  # noqa: BLE001 - a processor must never break the app's span
            _logger.debug("spendwatch: span ingestion failed on start", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            if self.active:
                self._ended(span)
        except Exception:  # noqa: BLE001 - a processor must never break the app's span
            _logger.debug("spendwatch: span ingestion failed", exc_info=True)

    def _ended(self, span: ReadableSpan) -> None:
        span_id = span.context.span_id
        parent = span.parent
        if _is_own(span):
            self._own_open.discard(span_id)
            if parent is not None:
                self._covered.add(parent.span_id)  # its parent, if a GenAI span, is the same call seen again
            return
        covered = span_id in self._covered
        if covered:
            self._covered.discard(span_id)
        attributes = span.attributes
        if not attributes or covered or (parent is not None and parent.span_id in self._own_open):
            return
        usage = usage_of_span(attributes)
        if usage is None:
            return
        error_type = None
        if usage.error_type is None and span.status.status_code is StatusCode.ERROR:
            error_type = "_OTHER"  # semconv's value for an unnamed error: a status description can quote a message
        start, end = span.start_time or 0, span.end_time or 0
        record = record_of(
            usage,
            prices=self._prices,
            trace_id=span.context.trace_id,
            span_id=span_id,
            start_time=start * _NS,
            duration_s=(end - start) * _NS,
            service=_service_of(span),
            source="span",
            error_type=error_type,
            category=current_category(),
        )
        self._sink.record(record)

    def shutdown(self) -> None:
        self._own_open.clear()
        self._covered.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _is_own(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name.startswith(_OWN_SCOPE)


def _service_of(span: ReadableSpan) -> str | None:
    return service_name(span.resource.attributes if span.resource is not None else {})
