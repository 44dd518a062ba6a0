"""For the OTLP intake's tests: a real ``spendwatch serve`` process, OTLP bodies made by hand, the ledger's calls."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]
PROTOBUF, JSON = "application/x-protobuf", "application/json"
NOW_NS = 1_790_000_000 * 10**9


class Serve:
    """``spendwatch serve`` on a free port over the SQLite ledger ``ledger``, stopped (and drained) by ``stop()``."""

    def __init__(self, ledger: str, **environ: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
        env |= {"SPENDWATCH_LEDGER": ledger, **environ}
        command = [*SPENDWATCH, "serve", "--address", "127.0.0.1:0"]
        self.ledger = ledger
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("serving "):
            self.process.kill()
            stderr = self.process.stderr.read()
            self.kill()
            raise AssertionError(f"spendwatch serve did not start: {line!r} {stderr}")
        self.url = line.removeprefix("serving ").removesuffix("/metrics") + "/v1/traces"

    def stop(self) -> str:
        """Stop the server (SIGTERM: it drains its journal into the ledger) and return what it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0
        stderr = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes


def post(
    url: str,
    body: bytes,
    content_type: str | None = PROTOBUF,
    *,
    headers: dict | None = None,
    credentials: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Answer:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, dict(error.headers), error.read())


@dataclass
class Span:
    """A span to send: its attributes as Python values (str, int, float, bool, list)."""

    trace_id: int
    span_id: int
    attributes: dict = field(default_factory=dict)
    failed: bool = False
    trace_bytes: bytes | None = None  # raw ids, to send an invalid one
    span_bytes: bytes | None = None
    parent_id: int | None = None
    scope: str = "test-producer"  # the instrumentation scope that made it


def chat_span(span_id: int, model: str = "gpt-4o-mini", input_tokens: int = 1000, output_tokens: int = 200, **extra):
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        **extra,
    }
    return Span(0xABC, span_id, attributes)


def http_span(span_id: int) -> Span:
    attributes = {"http.request.method": "GET", "url.path": "/checkout", "http.response.status_code": 200}
    return Span(0xABC, span_id, attributes)


def protobuf_body(spans: list[Span], service: str | None = "checkout") -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if service is not None:
        _pb_set(resource_spans.resource.attributes.add(), "service.name", service)
    scopes = {}
    for span in spans:
        if span.scope not in scopes:
            scopes[span.scope] = resource_spans.scope_spans.add()
            scopes[span.scope].scope.name = span.scope
        message = scopes[span.scope].spans.add()
        if span.parent_id is not None:
            message.parent_span_id = span.parent_id.to_bytes(8, "big")
        message.trace_id = span.trace_bytes if span.trace_bytes is not None else span.trace_id.to_bytes(16, "big")
        message.span_id = span.span_bytes if span.span_bytes is not None else span.span_id.to_bytes(8, "big")
        message.name = "span"
        message.start_time_unix_nano, message.end_time_unix_nano = NOW_NS, NOW_NS + 1_500_000_000
        message.status.code = 2 if span.failed else 0
        for key, value in span.attributes.items():
            _pb_set(message.attributes.add(), key, value)
    return request.SerializeToString()


def _pb_set(key_value, key: str, value) -> None:
    key_value.key = key
    _pb_value(key_value.value, value)


def _pb_value(message, value) -> None:
    if isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int):
        message.int_value = value
    elif isinstance(value, float):
        message.double_value = value
    elif isinstance(value, list):
        for item in value:
            _pb_value(message.array_value.values.add(), item)
    else:
        message.string_value = value


def json_body(spans: list[Span], service: str | None = "checkout") -> bytes:
    """The OTLP/JSON encoding: lowerCamelCase, hex ids, int64 as strings, enums as integers."""
    resource = {"attributes": [_json_kv("service.name", service)]} if service is not None else {}
    scopes: dict[str, list] = {}
    for span in spans:
        encoded = scopes.setdefault(span.scope, [])
        trace_hex = span.trace_bytes.hex() if span.trace_bytes is not None else f"{span.trace_id:032x}"
        span_hex = span.span_bytes.hex() if span.span_bytes is not None else f"{span.span_id:016x}"
        encoded.append(
            {
                "traceId": trace_hex,
                "spanId": span_hex,
                "name": "span",
                "kind": 3,
                "startTimeUnixNano": str(NOW_NS),
                "endTimeUnixNano": str(NOW_NS + 1_500_000_000),
                "attributes": [_json_kv(key, value) for key, value in span.attributes.items()],
                "status": {"code": 2} if span.failed else {},
                **({"parentSpanId": f"{span.parent_id:016x}"} if span.parent_id is not None else {}),
            }
        )
    scope_spans = [{"scope": {"name": name}, "spans": encoded} for name, encoded in scopes.items()]
    request = {"resourceSpans": [{"resource": resource, "scopeSpans": scope_spans}]}
    return json.dumps(request).encode()


def _json_kv(key: str, value) -> dict:
    return {"key": key, "value": _json_value(value)}


def _json_value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_json_value(item) for item in value]}}
    return {"stringValue": value}


def ledger_calls(location: str) -> list[dict]:
    """The calls rows of the SQLite ledger at ``location``, in id order, read by a connection of its own: the test
    process also holds a plain connection that locks the ledger, and a Ledger's would share its process's locks."""
    connection = sqlite3.connect(f"file:{location}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        connection.close()
