"""``POST /v1/traces`` on a real ``spendwatch serve`` process, with OTLP bodies made by hand in both encodings: GenAI
spans priced into the ledger once each, other spans passed over, bad requests refused with nothing recorded while the
server keeps serving, and no answer of 200 for spans the journal could not keep."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from spendwatch.exporter.sink import waiting_records
from spendwatch.instrumentation.pricing import PriceTable
from tests.otlp_intake import (
    JSON,
    PROTOBUF,
    Serve,
    Span,
    chat_span,
    http_span,
    json_body,
    ledger_calls,
    post,
    protobuf_body,
)
from tests.servers import wait_until

CREDENTIALS = ("collector", "s3cret")


@pytest.fixture
def ledger(tmp_path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
def serve(ledger):
    started = []

    def start(**environ: str) -> Serve:
        server = Serve(ledger, **environ)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def cost_of(model: str, input_tokens: int, output_tokens: int) -> float:
    return PriceTable().lookup(model).cost(input_tokens, output_tokens)


def dialect_spans() -> list[Span]:
    """One call in each dialect, and spans that are not calls."""
    older = Span(0xABC, 2, {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"})
    older.attributes |= {"gen_ai.usage.prompt_tokens": 300, "gen_ai.usage.completion_tokens": 40}
    openinference = Span(0xABC, 3, {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini"})
    openinference.attributes |= {"llm.provider": "openai", "llm.token_count.prompt": 50, "llm.token_count.total": 80}
    tool = Span(0xABC, 5, {"gen_ai.operation.name": "execute_tool", "gen_ai.request.model": "gpt-4o"})
    return [chat_span(1), older, openinference, http_span(4), tool, http_span(6)]


def expected_cost() -> float:
    return cost_of("gpt-4o-mini", 1000, 200) + cost_of("gpt-4o", 300, 40) + cost_of("gpt-4o-mini", 50, 30)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_genai_spans_are_priced_into_the_ledger_once_each_and_other_spans_passed_over(serve, ledger, encoding, gzipped):
    server = serve()
    content_type = PROTOBUF if encoding == "protobuf" else JSON
    body = (protobuf_body if encoding == "protobuf" else json_body)(dialect_spans())
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    answer = post(server.url, gzip.compress(body) if gzipped else body, content_type, headers=headers)
    assert (answer.status, answer.headers["Content-Type"]) == (200, content_type)
    if encoding == "protobuf":
        assert not ExportTraceServiceResponse.FromString(answer.body).HasField("partial_success")
    else:
        assert json.loads(answer.body) == {}
    server.stop()

    calls = ledger_calls(ledger)
    assert [call["span_id"] for call in calls] == [f"{n:016x}" for n in (1, 2, 3)]
    assert {call["trace_id"] for call in calls} == {f"{0xABC:032x}"}
    assert [(call["input_tokens"], call["output_tokens"]) for call in calls] == [(1000, 200), (300, 40), (50, 30)]
    assert sum(call["cost_usd"] for call in calls) == pytest.approx(expected_cost(), rel=1e-12)
    assert all(call["duration_s"] == pytest.approx(1.5) for call in calls)
    if "service" in calls[0]:  # the ledger's service column (issue 18, the ledger's part)
        assert {call["service"] for call in calls} == {"checkout"}


def test_a_retried_or_duplicated_export_counts_each_span_once(serve, ledger):
    server = serve()
    spans = [chat_span(1), chat_span(2)]
    assert post(server.url, protobuf_body(spans)).status == 200
    assert post(server.url, protobuf_body(spans)).status == 200  # the Collector's retry
    # A second Collector forwarding an overlapping batch, in the other encoding.
    assert post(server.url, json_body([chat_span(2), chat_span(3)]), JSON).status == 200
    server.stop()

    calls = ledger_calls(ledger)
    assert len(calls) == 3
    assert sum(call["cost_usd"] for call in calls) == pytest.approx(3 * cost_of("gpt-4o-mini", 1000, 200), rel=1e-12)


def test_a_failed_call_span_is_recorded_as_an_error(serve, ledger):
    server = serve()
    failed = chat_span(1)
    failed.failed = True
    assert post(server.url, protobuf_body([failed, chat_span(2, **{"error.type": "timeout"})])).status == 200
    server.stop()

    assert [(call["outcome"], call["error_type"]) for call in ledger_calls(ledger)] == [
        ("error", "_OTHER"),
        ("error", "timeout"),
    ]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_genai_spans_without_valid_ids_are_rejected_as_a_partial_success(serve, ledger, encoding):
    server = serve()
    no_span_id, zero_trace = chat_span(8), chat_span(9)
    no_span_id.span_bytes = b"\x01\x02\x03"
    zero_trace.trace_bytes = bytes(16)
    spans = [chat_span(1), no_span_id, zero_trace, http_span(10)]
    if encoding == "protobuf":
        answer = post(server.url, protobuf_body(spans))
        partial = ExportTraceServiceResponse.FromString(answer.body).partial_success
        rejected, message = partial.rejected_spans, partial.error_message
    else:
        answer = post(server.url, json_body(spans), JSON)
        partial = json.loads(answer.body)["partialSuccess"]
        rejected, message = int(partial["rejectedSpans"]), partial["errorMessage"]
    server.stop()

    assert answer.status == 200
    assert rejected == 2
    assert "trace and span id" in message
    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{1:016x}"]


def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (4 * 1024 * 1024), compresslevel=9)  # ~4 KiB that inflate to 4 MiB


@pytest.mark.parametrize(
    ("content_type", "body", "headers", "status"),
    [
        (PROTOBUF, b"\xff\xff\xff\xff garbage", {}, 400),
        (JSON, b"{not json", {}, 400),
        (JSON, b'{"resourceSpans": {"spans": 1}}', {}, 400),
        (JSON, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"value": {}}]}]}]}]}', {}, 400),
        (PROTOBUF, b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (PROTOBUF, gzip.compress(b"x" * 100)[:-8], {"Content-Encoding": "gzip"}, 400),
        (PROTOBUF, b"x", {"Content-Encoding": "br"}, 415),
        (PROTOBUF, gzip_bomb(), {"Content-Encoding": "gzip"}, 413),
        (PROTOBUF, b"\0" * 70_000, {}, 413),
        ("text/plain", b"hello", {}, 415),
        (None, b"hello", {}, 415),
    ],
    ids=[
        "bad-protobuf",
        "bad-json",
        "json-of-wrong-shape",
        "json-attribute-without-key",
        "bad-gzip",
        "cut-gzip",
        "unknown-encoding",
        "gzip-bomb",
        "oversized",
        "text",
        "no-content-type",
    ],
)
def test_a_bad_request_is_refused_with_nothing_recorded_and_the_server_keeps_serving(
    serve, ledger, content_type, body, headers, status
):
    server = serve(SPENDWATCH_INTAKE_MAX_BYTES="65536")
    answer = post(server.url, body, content_type, headers=headers)
    assert answer.status == status, answer.body
    assert answer.body  # says why
    assert post(server.url, protobuf_body([chat_span(1)])).status == 200
    server.stop()

    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{1:016x}"]


def test_a_refusal_is_a_status_message_in_the_request_encoding(serve):
    server = serve()
    answer = post(server.url, b"{not json", JSON)
    assert answer.headers["Content-Type"] == JSON
    assert json.loads(answer.body)["code"] == 3  # INVALID_ARGUMENT
    assert "not JSON" in json.loads(answer.body)["message"]
    answer = post(server.url, b"\xff\xff", PROTOBUF)
    assert answer.headers["Content-Type"] == PROTOBUF
    assert answer.body.startswith(b"\x08\x03\x12")  # google.rpc.Status: code 3, then the message
    assert post(server.url.replace("/v1/traces", "/v1/traces"), b"", PROTOBUF).status == 200  # an empty export
    server.stop()


@pytest.mark.parametrize("credentials", [None, ("collector", "wrong"), ("other", "s3cret")], ids=["none", "pw", "user"])
def test_the_intake_needs_the_metrics_credentials(serve, ledger, credentials):
    server = serve(SPENDWATCH_METRICS_BASIC_AUTH=":".join(CREDENTIALS))
    assert post(server.url, protobuf_body([chat_span(1)]), credentials=credentials).status == 401
    assert post(server.url, protobuf_body([chat_span(2)]), credentials=CREDENTIALS).status == 200
    server.stop()

    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{2:016x}"]


def test_the_intake_is_served_over_tls_like_metrics(serve, ledger, self_signed_cert):
    import ssl

    certfile, keyfile = self_signed_cert
    server = serve(
        SPENDWATCH_METRICS_TLS_CERTFILE=certfile,
        SPENDWATCH_METRICS_TLS_KEYFILE=keyfile,
        SPENDWATCH_METRICS_BASIC_AUTH=":".join(CREDENTIALS),
    )
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=certfile)
    assert post(server.url, protobuf_body([chat_span(1)]), credentials=CREDENTIALS, context=context).status == 200
    server.stop()

    assert len(ledger_calls(ledger)) == 1


def test_while_the_ledger_is_up_spans_are_in_it_when_the_answer_comes_with_nothing_journaled(serve, ledger):
    server = serve()
    assert post(server.url, protobuf_body([chat_span(1), http_span(2), chat_span(3)])).status == 200

    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{n:016x}" for n in (1, 3)]  # no drain waited for
    assert waiting_records([Path(f"{ledger}.journal")]) == 0
    server.stop()


def test_spans_wait_in_the_journal_while_the_ledger_is_down_and_reach_it_after(serve, ledger):
    server = serve()
    assert post(server.url, protobuf_body([chat_span(1)])).status == 200
    wait_until(lambda: len(ledger_calls(ledger)) == 1, 60, "the first span in the ledger")
    blocker = sqlite3.connect(ledger, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the ledger takes no writes (nor reads) from anyone else now
    try:
        spans = [chat_span(n) for n in range(2, 202)]
        assert post(server.url, protobuf_body(spans)).status == 200  # journaled: the 200 promises it is kept
        journal = Path(f"{ledger}.journal")
        wait_until(lambda: waiting_records([journal]) == 200, 60, "the spans waiting in the journal")
        assert blocker.execute("SELECT count(*) FROM calls").fetchone() == (1,)
    finally:
        blocker.execute("ROLLBACK")
    try:
        count = "SELECT count(*) FROM calls"
        wait_until(lambda: blocker.execute(count).fetchone() == (201,), 120, "the journaled spans in the ledger")
    finally:
        blocker.close()
    server.stop()

    calls = ledger_calls(ledger)
    assert sum(call["cost_usd"] for call in calls) == pytest.approx(201 * cost_of("gpt-4o-mini", 1000, 200), rel=1e-9)


def test_when_neither_the_ledger_nor_a_journal_can_be_written_the_intake_answers_503_with_retry_after(
    serve, ledger, tmp_path
):
    # Neither the journal's directory nor its fallback under the state directory can be created: both are files.
    Path(f"{ledger}.journal").write_text("in the way")
    state_home = tmp_path / "state"
    state_home.write_text("in the way")
    server = serve(XDG_STATE_HOME=str(state_home))
    assert post(server.url, protobuf_body([chat_span(1)])).status == 200  # the ledger takes it: no journal needed
    blocker = sqlite3.connect(ledger, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # and now the ledger takes nothing either
    try:
        answer = post(server.url, protobuf_body([chat_span(3)]))
        assert answer.status == 503
        assert int(answer.headers["Retry-After"]) > 0
        assert post(server.url, protobuf_body([http_span(2)])).status == 200  # nothing to keep: taken
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    server.stop()

    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{1:016x}"]


def test_json_ids_in_upper_case_and_integers_as_numbers_are_read(serve, ledger):
    server = serve()
    body = json.loads(json_body([chat_span(0xBEEF)]))
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"], span["spanId"] = span["traceId"].upper(), span["spanId"].upper()
    for attribute in span["attributes"]:
        if "intValue" in attribute["value"]:
            attribute["value"]["intValue"] = int(attribute["value"]["intValue"])  # a lenient producer's number
    assert post(server.url, json.dumps(body).encode(), JSON).status == 200
    server.stop()

    (call,) = ledger_calls(ledger)
    assert (call["span_id"], call["input_tokens"], call["output_tokens"]) == (f"{0xBEEF:016x}", 1000, 200)


def test_a_bad_body_size_limit_fails_at_start_up_naming_the_setting(ledger):
    with pytest.raises(AssertionError, match="SPENDWATCH_INTAKE_MAX_BYTES='lots'"):
        Serve(ledger, SPENDWATCH_INTAKE_MAX_BYTES="lots")


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_spans_of_an_app_running_spendwatch_are_not_counted_again(serve, ledger, encoding):
    # The app recorded its calls itself (source sdk); it also exports its traces here.
    own = chat_span(2)
    own.scope, own.parent_id = "spendwatch.instrumentation.openai_sdk", 1
    around_own = chat_span(1)  # another instrumentation's CLIENT span around spendwatch's, for the same request
    other = chat_span(3)  # a call only the other instrumentation saw
    server = serve()
    spans = [around_own, own, other]
    if encoding == "protobuf":
        assert post(server.url, protobuf_body(spans)).status == 200
    else:
        assert post(server.url, json_body(spans), JSON).status == 200
    server.stop()

    assert [call["span_id"] for call in ledger_calls(ledger)] == [f"{3:016x}"]
