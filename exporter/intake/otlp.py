"""OTLP trace export bodies in both encodings, read down to the spans that may be LLM calls; and the answers.

Spec: https://opentelemetry.io/docs/specs/otlp/#otlphttp. Protobuf bodies are ``ExportTraceServiceRequest`` messages
(``opentelemetry-proto``'s ``trace_service_pb2``). JSON bodies are the same message in the OTLP/JSON mapping: field
names in lowerCamelCase, trace and span ids as hex strings (not base64), 64-bit integers as strings or numbers, enums
as integers; unknown fields are ignored.

Spans made by spendwatch's own instrumentors (an app that both runs spendwatch and exports its traces) are passed
over, and so is another instrumentation's span around one of them in the same export: the app's ledger sink
recorded that call already.

Most spans of a trace are not LLM calls. A span is looked at further only when it holds a key that names a model
(:data:`~spendwatch.exporter.spans.dialects.MODEL_KEYS`): for the others no attribute value is decoded at all. A
protobuf body that holds none of those keys anywhere is passed over whole, without a loop over its spans.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spendwatch.exporter.spans.dialects import MODEL_KEYS, READ_KEYS
from spendwatch.exporter.spans.records import service_name

__all__ = [
    "CandidateSpan",
    "MalformedBody",
    "error_body",
    "from_json",
    "from_protobuf",
    "success_body",
]

_MODEL_KEY_BYTES = tuple(key.encode() for key in MODEL_KEYS)  # as a protobuf body holds them: UTF-8, unescaped
_STATUS_ERROR = 2  # Status.StatusCode STATUS_CODE_ERROR
# The instrumentation scope of spendwatch's own spans: their calls were recorded by the app that made them (as
# exporter/spans/processor.py passes them over in-process).
OWN_SCOPE = "spendwatch"
_TRACE_ID_BYTES, _SPAN_ID_BYTES = 16, 8


class MalformedBody(ValueError):
    """The body is not an export request in the encoding its content type names (answered 400)."""


@dataclass(slots=True)
class CandidateSpan:
    """A span with a model among its attribute keys: the attributes a dialect reads (``READ_KEYS``) decoded, ids as
    integers (None if invalid)."""

    trace_id: int | None
    span_id: int | None
    start_ns: int
    end_ns: int
    failed: bool  # status code ERROR
    attributes: dict[str, Any]
    service: str | None


# --- protobuf ------------------------------------------------------------------------------------------------------
def from_protobuf(body: bytes) -> tuple[int, list[CandidateSpan]]:
    """(how many spans the request holds, the candidate spans among them)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        raise MalformedBody(f"not an ExportTraceServiceRequest protobuf message ({error})") from None
    total = sum(len(scope.spans) for resources in request.resource_spans for scope in resources.scope_spans)
    named = sum(body.count(key) for key in _MODEL_KEY_BYTES)
    if not named:
        # No span of this export names a model (a batch of HTTP or database spans): none to look at, one memchr-
        # speed scan per key instead of a Python loop over every attribute of every span.
        return total, []
    # A body that names a model at least once per span (a Collector sending GenAI spans only) has each span's
    # attributes read straight away; otherwise the spans that name none are passed over first. Either way a span is
    # an LLM call only if usage_of_span finds a model among its attribute keys: this choice is only about speed.
    dense = named >= total
    candidates, covered = [], set()
    for resource_spans in request.resource_spans:
        service: Any = _UNREAD
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            if scope_spans.scope.name.startswith(OWN_SCOPE):
                covered.update(_id_of_bytes(span.parent_span_id, _SPAN_ID_BYTES) for span in spans)
                continue
            for span in spans:
                # The span's own bytes searched for a model key (C speed) cost a third less than a Python loop over
                # its attributes; a key found elsewhere (in a value) only sends the span to usage_of_span, which
                # reads keys.
                if not dense and not _names_a_model(span.SerializeToString()):
                    continue
                if service is _UNREAD:
                    service = service_name(_pb_attributes(resource_spans.resource.attributes))
                candidates.append(_pb_candidate(span, span.attributes, service))
    return total, _not_covered(candidates, covered)


def _names_a_model(data: bytes) -> bool:
    return any(key in data for key in _MODEL_KEY_BYTES)


def _not_covered(candidates: list[CandidateSpan], covered: set) -> list[CandidateSpan]:
    """Without the spans whose call spendwatch's own instrumentor recorded in the app already: the parents of its spans
    in the same export (another instrumentation's span around spendwatch's, for the same request)."""
    if not covered:
        return candidates
    return [span for span in candidates if span.span_id not in covered]


_UNREAD = object()


def _pb_candidate(span, attributes, service: str | None) -> CandidateSpan:
    return CandidateSpan(
        trace_id=_id_of_bytes(span.trace_id, _TRACE_ID_BYTES),
        span_id=_id_of_bytes(span.span_id, _SPAN_ID_BYTES),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        failed=span.status.code == _STATUS_ERROR,
        attributes=_pb_attributes(attributes, READ_KEYS),
        service=service,
    )


def _pb_attributes(key_values, keys: frozenset | None = None) -> dict[str, Any]:
    """The attributes (those of ``keys`` only, if given: a value decoded costs more than a key looked at)."""
    if keys is None:
        return {kv.key: _pb_value(kv.value) for kv in key_values}
    return {key: _pb_value(kv.value) for kv in key_values if (key := kv.key) in keys}


def _pb_value(value) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [_pb_value(item) for item in value.array_value.values]
    return None  # a key-value list or bytes: no dialect reads one


def _id_of_bytes(raw: bytes, size: int) -> int | None:
    """An id as an integer; None when it has the wrong length or is all zeros (the spec's invalid id)."""
    if len(raw) != size:
        return None
    return int.from_bytes(raw, "big") or None


# --- JSON ----------------------------------------------------------------------------------------------------------
def from_json(body: bytes) -> tuple[int, list[CandidateSpan]]:
    """As :func:`from_protobuf`, for an OTLP/JSON body."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise MalformedBody(f"not JSON ({error})") from None
    try:
        return _json_spans(request)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a field missing or of the wrong JSON type
        raise MalformedBody(f"not an OTLP/JSON ExportTraceServiceRequest ({error})") from None


def _json_spans(request: Mapping) -> tuple[int, list[CandidateSpan]]:
    total, candidates, covered = 0, [], set()
    for resource_spans in _list(request, "resourceSpans"):
        service: Any = _UNREAD
        for scope_spans in _list(resource_spans, "scopeSpans"):
            spans = _list(scope_spans, "spans")
            total += len(spans)
            if str((scope_spans.get("scope") or {}).get("name") or "").startswith(OWN_SCOPE):
                covered.update(_id_of_hex(span.get("parentSpanId"), _SPAN_ID_BYTES) for span in spans)
                continue
            for span in spans:
                attributes = _list(span, "attributes")
                if not any(kv["key"] in MODEL_KEYS for kv in attributes):
                    continue
                if service is _UNREAD:
                    resource = resource_spans.get("resource") or {}
                    service = service_name(_json_attributes(_list(resource, "attributes")))
                candidates.append(_json_candidate(span, attributes, service))
    return total, _not_covered(candidates, covered)


def _list(message: Mapping, field: str) -> list:
    value = message.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{field} is not a list")
    return value


def _json_candidate(span: Mapping, attributes: list, service: str | None) -> CandidateSpan:
    status = span.get("status") or {}
    return CandidateSpan(
        trace_id=_id_of_hex(span.get("traceId"), _TRACE_ID_BYTES),
        span_id=_id_of_hex(span.get("spanId"), _SPAN_ID_BYTES),
        start_ns=int(span.get("startTimeUnixNano") or 0),
        end_ns=int(span.get("endTimeUnixNano") or 0),
        failed=status.get("code") in (_STATUS_ERROR, "STATUS_CODE_ERROR"),
        attributes=_json_attributes(attributes, READ_KEYS),
        service=service,
    )


def _json_attributes(key_values: list, keys: frozenset | None = None) -> dict[str, Any]:
    """As :func:`_pb_attributes`."""
    return {kv["key"]: _json_value(kv.get("value") or {}) for kv in key_values if keys is None or kv["key"] in keys}


def _json_value(value: Mapping) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # an int64: a string in OTLP/JSON, a number from lenient producers
    if "doubleValue" in value:
        return float(value["doubleValue"])  # may be "NaN" or "Infinity"; the dialects drop non-finite numbers
    if "boolValue" in value:
        return value["boolValue"] is True
    if "arrayValue" in value:
        return [_json_value(item) for item in _list(value["arrayValue"], "values")]
    return None


def _id_of_hex(text: Any, size: int) -> int | None:
    if not isinstance(text, str) or len(text) != 2 * size:
        return None
    try:
        return int(text, 16) or None
    except ValueError:
        return None


# --- answers -------------------------------------------------------------------------------------------------------
def success_body(rejected: int, message: str, *, as_json: bool) -> bytes:
    """An ``ExportTraceServiceResponse``: empty when every span was taken, else its partial success."""
    if as_json:
        partial = {"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}} if rejected else {}
        return json.dumps(partial).encode()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response.SerializeToString()


def error_body(http_status: int, message: str, *, as_json: bool) -> bytes:
    """The spec's error answer: a ``google.rpc.Status`` with its code and message, in the request's encoding."""
    code = _RPC_CODES.get(http_status, _RPC_UNKNOWN)
    if as_json:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    # google.rpc.Status field 1 (int32 code), field 2 (string message): two fields, encoded by hand rather than
    # depending on googleapis-common-protos for them.
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


_RPC_UNKNOWN = 2
_RPC_CODES = {400: 3, 401: 16, 405: 12, 413: 8, 415: 3, 503: 14}  # INVALID_ARGUMENT, UNAUTHENTICATED, ...


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
