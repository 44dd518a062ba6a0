"""Real producers send their GenAI spans to a real ``spendwatch serve``: a Python app instrumented by the official
OpenTelemetry OpenAI instrumentation calling the OpenAI stub through the real SDK, and a Node.js app with the
OpenTelemetry JS SDK, each with its own OTLP/HTTP exporter (protobuf and JSON, gzip, basic auth). The ledger then
holds each GenAI span exactly once, priced, and nothing for the other spans they sent."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spendwatch.instrumentation.pricing import PriceTable
from tests.otlp_intake import Serve, ledger_calls
from tests.servers import in_ci

CREDENTIALS = ("collector", "s3cret")
NODE_APP = Path(__file__).parent / "node_otlp_producer"


@pytest.fixture
def ledger(tmp_path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
def server(ledger):
    server = Serve(ledger, SPENDWATCH_METRICS_BASIC_AUTH=":".join(CREDENTIALS))
    yield server
    server.kill()


def price(model: str, input_tokens: int, output_tokens: int) -> float:
    return PriceTable().lookup(model).cost(input_tokens, output_tokens)


def assert_ledger_holds_exactly(ledger: str, sent: list[dict], default_model: str) -> None:
    calls = {(call["trace_id"], call["span_id"]): call for call in ledger_calls(ledger)}
    assert set(calls) == {(span["trace_id"], span["span_id"]) for span in sent}
    for span in sent:
        call = calls[span["trace_id"], span["span_id"]]
        assert (call["input_tokens"], call["output_tokens"]) == (span["input_tokens"], span["output_tokens"])
    total = sum(price(span.get("model", default_model), span["input_tokens"], span["output_tokens"]) for span in sent)
    assert sum(call["cost_usd"] for call in calls.values()) == pytest.approx(total, rel=1e-9)


def test_python_app_with_the_official_openai_instrumentation(server, ledger, stub):
    token = base64.b64encode(":".join(CREDENTIALS).encode()).decode()
    environ = os.environ | {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": server.url,
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Basic%20{token}",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    app = [sys.executable, str(Path(__file__).parent / "otlp_python_producer.py"), stub.base_url, "12"]
    done = subprocess.run(app, env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    server.stop()

    assert len(sent) == 12
    assert_ledger_holds_exactly(ledger, sent, "gpt-4o-mini")
    assert len(ledger_calls(ledger)) == 12  # the app's own request span is not a call


def node_binary() -> str:
    """node, and the OpenTelemetry JS packages the app needs installed (npm ci, into the gitignored node_modules)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm not found: install Debian's nodejs and npm (`make test-servers` as root)"
        if in_ci():
            pytest.fail(f"{reason} [CI=true: a missing tool is a failure]", pytrace=False)
        pytest.skip(reason)
    if not (NODE_APP / "node_modules" / "@opentelemetry" / "sdk-trace").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_APP, check=True, capture_output=True, timeout=600
        )
    return node


@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_nodejs_app_with_the_opentelemetry_js_sdk(server, ledger, encoding):
    node = node_binary()
    app = [node, str(NODE_APP / "app.js"), server.url, encoding, "30", ":".join(CREDENTIALS)]
    done = subprocess.run(app, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr, done.stderr  # an export the intake refused
    sent = json.loads(done.stdout)
    server.stop()

    assert len(sent) == 30
    assert_ledger_holds_exactly(ledger, sent, "gpt-4o-mini")
