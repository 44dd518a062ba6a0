"""``POST /v1/traces`` on ``spendwatch serve``: OTLP/HTTP trace intake, a WSGI app served beside ``/metrics``::

    app = intake_app(sink, settings.price_table(), max_bytes=settings.intake_max_bytes)
    serve_as_configured(registry, settings, routes={INTAKE_PATH: app})

GenAI spans are priced (:func:`~spendwatch.exporter.spans.records.record_of`, source ``otlp``, the resource's
``service.name``) and stored through the ledger sink before the answer is sent: a 200 means every span it did not reject
is in the ledger, or (while the ledger cannot take them) in the journal, where it survives this process and waits out
the outage. When not even the journal can take them the answer is 503 with ``Retry-After``, which OTLP exporters retry;
a span journaled twice (a retry, two Collectors) is one ledger row, its id being its trace and span id. Other spans are
passed over. Bodies are read and priced (:func:`read_export`) by serve's intake workers when it has them
(:mod:`.workers`), else here.

Answers follow the OTLP/HTTP spec: an ``ExportTraceServiceResponse`` (with ``partial_success`` naming how many spans
were rejected and why), or a ``google.rpc.Status`` for a 4xx/5xx, in the request's encoding. A body over ``max_bytes``
(after decompression: a small gzip bomb is refused as soon as it inflates past the limit) is a 413.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable

from spendwatch.exporter.intake.otlp import (
    CandidateSpan,
    MalformedBody,
    error_body,
    from_json,
    from_protobuf,
    success_body,
)
from spendwatch.exporter.spans.dialects import usage_of_span
from spendwatch.exporter.spans.records import record_of
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["INTAKE_PATH", "RETRY_AFTER_S", "intake_app", "read_export"]

_logger = logging.getLogger(__name__)

INTAKE_PATH = "/v1/traces"
RETRY_AFTER_S = 5  # the journal cannot be written: a full disk or a missing directory is not fixed in a second
PROTOBUF, JSON = "application/x-protobuf", "application/json"
_DECODERS = {PROTOBUF: from_protobuf, JSON: from_json}
_READ_CHUNK = 1 << 20
_NS = 1e-9
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def intake_app(sink, prices, *, max_bytes: int, workers=None) -> Callable:
    """A WSGI app taking OTLP trace exports into ``sink`` (a :class:`~spendwatch.exporter.sink.LedgerSink`), pricing
    with ``prices`` (a ``PriceTable``); bodies over ``max_bytes`` once decompressed are refused. ``workers`` (an
    :class:`~spendwatch.exporter.intake.workers.IntakeWorkers`, or None) read bodies in processes of their own."""

    def read(content_type: str, body: bytes) -> tuple[int, list[UsageRecord], int]:
        by_worker = workers.read_export(content_type, body) if workers is not None else None
        return by_worker or read_export(content_type, body, prices)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        content_type = _media_type(environ.get("CONTENT_TYPE", ""))
        as_json = content_type == JSON
        headers = [("Content-Type", content_type if content_type in _DECODERS else "text/plain; charset=utf-8")]
        try:
            status, body = 200, _take(environ, content_type, sink, read, max_bytes, as_json)
        except _Refused as refused:
            status, body = refused.status, error_body(refused.status, str(refused), as_json=as_json)
            if content_type not in _DECODERS:
                body = f"{refused}\n".encode()
            headers += _extra_headers(status)
        except Exception:  # noqa: BLE001 - one bad export must not take the server down; the sender sees a 500
            _logger.warning("spendwatch: OTLP intake failed", exc_info=True)
            status, body = 500, error_body(500, "the intake failed; see spendwatch serve's log", as_json=as_json)
        start_response(_STATUS[status], [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return app


def _take(environ: dict, content_type: str, sink, read: Callable, max_bytes: int, as_json: bool) -> bytes:
    if environ.get("REQUEST_METHOD") != "POST":
        raise _Refused(405, f"{INTAKE_PATH} takes POST only")
    if content_type not in _DECODERS:
        raise _Refused(415, f"{INTAKE_PATH} takes {PROTOBUF} or {JSON}, not {content_type or 'no content type'!r}")
    body = _read_body(environ, max_bytes)
    try:
        total, records, rejected = read(content_type, body)
    except MalformedBody as malformed:
        raise _Refused(400, str(malformed)) from None
    if not sink.record_spans(records):
        raise _Refused(503, "spendwatch cannot journal spans now; retry later")
    _logger.debug("spendwatch: OTLP export of %d spans: %d calls recorded", total, len(records))
    message = f"{rejected} GenAI span(s) without a valid trace and span id" if rejected else ""
    return success_body(rejected, message, as_json=as_json)


def _read_body(environ: dict, max_bytes: int) -> bytes:
    if environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower() == "chunked":
        raw = _read_chunked(environ["wsgi.input"], max_bytes)  # as the OpenTelemetry JS exporters send gzip
    else:
        length_text = environ.get("CONTENT_LENGTH") or ""
        if not length_text.strip().isdigit():
            raise _Refused(411, "a Content-Length header (or chunked transfer encoding) is required")
        length = int(length_text)
        if length > max_bytes:
            raise _Refused(413, f"the body is {length} bytes; this intake takes at most {max_bytes}")
        raw = _read_exactly(environ["wsgi.input"], length)
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding == "gzip":
        return _gunzip(raw, max_bytes)
    if encoding not in ("", "identity"):
        raise _Refused(415, f"Content-Encoding {encoding!r} is not supported (gzip is)")
    return raw


def _read_exactly(stream, length: int) -> bytes:
    chunks, left = [], length
    while left:
        chunk = stream.read(min(left, _READ_CHUNK))
        if not chunk:
            raise _Refused(400, f"the body ended after {length - left} of its {length} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_chunked(stream, max_bytes: int) -> bytes:
    """A chunked request body (the WSGI server hands the raw stream over), refused once it passes ``max_bytes``."""
    chunks, size = [], 0
    while True:
        line = stream.readline(64)
        try:
            length = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _Refused(400, "the chunked body is malformed") from None
        if length == 0:
            break
        size += length
        if size > max_bytes:
            raise _Refused(413, f"the body passes {max_bytes} bytes, the most this intake takes")
        chunks.append(_read_exactly(stream, length))
        stream.readline(8)  # the chunk's CRLF
    while stream.readline(1024).strip():  # trailers, up to the blank line
        pass
    return b"".join(chunks)


def _gunzip(raw: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # Never more than the limit plus one byte is inflated, whatever the compressed body claims.
        body = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as error:
        raise _Refused(400, f"the body is not valid gzip ({error})") from None
    if len(body) > max_bytes:
        raise _Refused(413, f"the body inflates past {max_bytes} bytes, the most this intake takes")
    if not inflater.eof or inflater.unused_data:
        raise _Refused(400, "the gzip body is cut short or has data after its end")
    return body


def read_export(content_type: str, body: bytes, prices) -> tuple[int, list[UsageRecord], int]:
    """(how many spans the export holds, the priced records of its LLM calls, how many of those were rejected): what
    serve's process or an intake worker makes of a body of ``content_type``. Raises :class:`MalformedBody`."""
    total, candidates = _DECODERS[content_type](body)
    records, rejected = _records_of(candidates, prices)
    return total, records, rejected


def _records_of(candidates: list[CandidateSpan], prices) -> tuple[list[UsageRecord], int]:
    """The priced records of the spans that are LLM calls, and how many such spans were rejected (no usable id)."""
    records, rejected = [], 0
    for span in candidates:
        usage = usage_of_span(span.attributes)
        if usage is None:
            continue
        if span.trace_id is None or span.span_id is None:
            rejected += 1  # without its ids a span could be counted again on every retry
            continue
        records.append(
            record_of(
                usage,
                prices=prices,
                trace_id=span.trace_id,
                span_id=span.span_id,
                start_time=span.start_ns * _NS,
                duration_s=(span.end_ns - span.start_ns) * _NS,
                service=span.service,
                source="otlp",
                # semconv's value for an unnamed error: a status message can quote the user's data
                error_type="_OTHER" if span.failed and usage.error_type is None else None,
            )
        )
    return records, rejected


def _media_type(header: str) -> str:
    return header.partition(";")[0].strip().lower()


def _extra_headers(status: int) -> list[tuple[str, str]]:
    if status == 503:
        return [("Retry-After", str(RETRY_AFTER_S))]
    if status == 405:
        return [("Allow", "POST")]
    return []
