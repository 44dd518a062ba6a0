"""A GenAI span's usage as a ledger record, priced exactly as an instrumented call (``calls.apply_usage``).

The ledger id of a span's record is its trace and span id (:func:`entry_id_of`), so the same span recorded twice
(a retried export, two Collectors forwarding it, in-process and OTLP both seeing it) is one calls row: the ledger
skips an id it holds.
"""

from __future__ import annotations

from spendwatch.exporter.spans.dialects import SpanUsage
from spendwatch.instrumentation.calls import NOT_BILLED, Usage, apply_usage, storable
from spendwatch.instrumentation.pricing import PriceTable
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["PRODUCER_COST_ATTRIBUTE", "SOURCES", "entry_id_of", "record_of", "service_name"]

SOURCES = ("sdk", "span", "otlp")
# Where a record keeps the cost a span's producer computed from its own price list (spendwatch prices the call).
PRODUCER_COST_ATTRIBUTE = "spendwatch.producer_cost_usd"
_TRACE_ID_END, _SPAN_ID_END = 1 << 128, 1 << 64
_MAX_TEXT = 200  # a span from another service can carry anything: names are cut before they reach the ledger


def entry_id_of(trace_id: int, span_id: int) -> str:
    """The ledger id of the call a span describes: one per span, whoever hands it in."""
    if 0 <= trace_id < _TRACE_ID_END and 0 <= span_id < _SPAN_ID_END:  # any ids OpenTelemetry makes
        return f"span:{trace_id.to_bytes(16, 'big').hex()}:{span_id.to_bytes(8, 'big').hex()}"  # twice format's speed
    return f"span:{trace_id:032x}:{span_id:016x}"


def service_name(resource_attributes) -> str | None:
    """A resource's service.name, or None when it is the SDK's placeholder (``unknown_service...``) or absent."""
    name = resource_attributes.get("service.name")
    if not name or str(name).startswith("unknown_service"):
        return None
    return str(name)


def record_of(
    usage: SpanUsage,
    *,
    prices: PriceTable,
    trace_id: int,
    span_id: int,
    start_time: float,
    duration_s: float,
    service: str | None,
    source: str,
    error_type: str | None = None,
    category: str | None = None,
) -> UsageRecord:
    """The usage record of one span's call. ``error_type`` (else the span's ``error.type``) makes it a failed call;
    ``category`` is used when the span carries no ``spendwatch.category``."""
    record = UsageRecord(_text(usage.provider), _text(usage.operation), _text(usage.request_model))
    record.trace_id, record.span_id, record.source = trace_id, span_id, source
    record.start_time, record.duration_s = start_time, max(duration_s, 0.0)
    record.service = None if service is None else _text(service)
    chosen_category = usage.category if usage.category is not None else category
    record.category = None if chosen_category is None else _text(chosen_category)[:100]
    error_type = error_type or usage.error_type
    if usage.has_usage or usage.cost_usd is not None:
        apply_usage(record, _call_usage(usage, record), prices, {}, record.provider)
    elif error_type is not None:
        # A refused request produced nothing to bill, as for an instrumented call (calls.Call._finish).
        record.cost_usd, record.pricing = 0.0, NOT_BILLED
    if error_type is not None:
        record.outcome, record.error_type = "error", _text(error_type)
    return record


def _call_usage(usage: SpanUsage, record: UsageRecord) -> Usage:
    call_usage = Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        output_audio_tokens=usage.output_audio_tokens,
        response_model=None if usage.response_model is None else _text(usage.response_model),
        service_tier=None if usage.service_tier is None else _text(usage.service_tier),
        estimated=usage.estimated,
    )
    if usage.cost_usd is not None:
        if usage.provider_reported:
            call_usage.provider_cost_usd = usage.cost_usd
        else:  # computed by the span's producer from its own prices: kept to compare, never counted
            record.attributes = {PRODUCER_COST_ATTRIBUTE: repr(usage.cost_usd)}
    return call_usage


def _text(value: str) -> str:
    if type(value) is str and len(value) <= _MAX_TEXT and value.isascii() and "\x00" not in value:
        return value  # the usual name, as storable would return it: one call instead of three
    return storable(str(value)[:_MAX_TEXT])
