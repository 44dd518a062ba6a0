"""Specification of the ``/metrics`` server and ``spendwatch serve``: real HTTP(S) over loopback with urllib."""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import Ledger, LedgerEntry
from spendwatch.exporter.ledger_backends import open_backend
from spendwatch.exporter.server import start_metrics_server
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord

LOOPBACK_EPHEMERAL = ("127.0.0.1", 0)
CREDENTIALS = ("prometheus", "s3cret:with-colon")
_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    ledger.ingest([LedgerEntry("one", UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=0.25, duration_s=0.3))])
    yield ledger
    ledger.close()


@pytest.fixture
def registry(ledger):
    registry = CollectorRegistry()
    SpendCollector(ledger, registry=registry)
    return registry


@pytest.fixture
def serve(registry):
    """Start a server on the test registry; every server started is stopped afterwards."""
    servers = []

    def start(**options):
        server = start_metrics_server(registry, LOOPBACK_EPHEMERAL, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def get(url: str, *, credentials: tuple[str, str] | None = None, context: ssl.SSLContext | None = None):
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return urllib.request.urlopen(request, timeout=10, context=context)


def metric_names(body: bytes) -> set[str]:
    return {family.name for family in text_string_to_metric_families(body.decode())}


def test_serves_the_registry_in_the_prometheus_text_format(serve):
    server = serve()
    with get(server.url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "llm_cost_usd" in metric_names(response.read())


def test_binds_loopback_and_reports_the_ephemeral_port_it_got(serve):
    server = serve()
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"


def test_stop_closes_the_port(serve):
    server = serve()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        get(server.url)


@pytest.mark.parametrize(
    "credentials",
    [None, ("prometheus", "wrong"), ("someone", CREDENTIALS[1]), ("", ""), (CREDENTIALS[0], CREDENTIALS[1] + "x")],
    ids=["missing", "wrong password", "wrong user", "empty", "password with a suffix"],
)
def test_basic_auth_refuses_anything_but_the_right_credentials(serve, credentials):
    server = serve(basic_auth=CREDENTIALS)
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(server.url, credentials=credentials)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!not-base64!!!", "Basic", "Basic " + "QQ=="])
def test_basic_auth_refuses_malformed_authorization_headers(serve, header):
    server = serve(basic_auth=CREDENTIALS)
    request = urllib.request.Request(server.url, headers={"Authorization": header})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_basic_auth_admits_the_right_credentials(serve):
    server = serve(basic_auth=CREDENTIALS)
    with get(server.url, credentials=CREDENTIALS) as response:
        assert response.status == 200
        assert "llm_cost_usd" in metric_names(response.read())


def test_tls_serves_https_to_a_client_trusting_the_certificate(serve, self_signed_cert):
    certfile, keyfile = self_signed_cert
    server = serve(certfile=certfile, keyfile=keyfile, basic_auth=CREDENTIALS)
    assert server.url.startswith("https://")
    trusting = ssl.create_default_context(cafile=certfile)
    with get(server.url, credentials=CREDENTIALS, context=trusting) as response:
        assert response.status == 200
        assert "llm_cost_usd" in metric_names(response.read())


def test_tls_is_refused_by_a_client_that_does_not_trust_the_certificate(serve, self_signed_cert):
    certfile, keyfile = self_signed_cert
    server = serve(certfile=certfile, keyfile=keyfile)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(server.url, context=ssl.create_default_context())


def test_a_plain_http_client_on_the_tls_port_does_not_stop_the_server(serve, self_signed_cert):
    certfile, keyfile = self_signed_cert
    server = serve(certfile=certfile, keyfile=keyfile)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(server.url.replace("https://", "http://"))
    with get(server.url, context=ssl.create_default_context(cafile=certfile)) as response:
        assert response.status == 200


def test_a_certificate_without_its_key_is_a_config_error(registry, self_signed_cert):
    with pytest.raises(ConfigError, match="SPENDWATCH_METRICS_TLS_KEYFILE"):
        start_metrics_server(registry, LOOPBACK_EPHEMERAL, certfile=self_signed_cert[0])


def test_a_port_in_use_is_a_config_error_naming_the_setting_and_value(registry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as error:
            start_metrics_server(registry, ("127.0.0.1", port))
    assert f"SPENDWATCH_METRICS_ADDRESS=127.0.0.1:{port}" in str(error.value)
    assert "already in use" in str(error.value)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_spendwatch_serve_prints_its_url_serves_the_ledger_and_exits_0_on_a_stop_signal(tmp_path, stop_signal):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ |= {"SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"), "SPENDWATCH_DAILY_BUDGET_USD": "5"}
    command = [*SPENDWATCH, "serve", "--address", "127.0.0.1:0"]
    process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), line or process.stderr.read()
        with get(line.removeprefix("serving ")) as response:
            names = metric_names(response.read())
        assert {"llm_cost_usd", "llm_budget_limit_usd", "spendwatch_ledger_errors"} <= names
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_spendwatch_serve_shows_the_guard_decisions_every_host_recorded_in_the_ledger(tmp_path):
    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    refused = UsageRecord("openai", "chat", "gpt-4o", outcome="blocked", guard_actions=(("global", "block"),))
    ledger.ingest([LedgerEntry("refused", refused)])
    ledger.close()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ["SPENDWATCH_LEDGER"] = str(tmp_path / "ledger.db")
    process = subprocess.Popen(
        [*SPENDWATCH, "serve", "--address", "127.0.0.1:0"], env=environ, stdout=subprocess.PIPE, text=True
    )
    try:
        url = process.stdout.readline().strip().removeprefix("serving ")
        with get(url) as response:
            body = response.read().decode()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()

    assert 'llm_guard_decisions_total{action="block",budget="global"} 1.0' in body


def test_spendwatch_serve_on_a_port_in_use_exits_2_naming_the_setting(tmp_path):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ["SPENDWATCH_LEDGER"] = str(tmp_path / "ledger.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [*SPENDWATCH, "serve", "--address", f"127.0.0.1:{port}"]
        finished = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert f"SPENDWATCH_METRICS_ADDRESS=127.0.0.1:{port}" in finished.stderr
