"""Specification of the ``/metrics`` server and ``spendwatch serve``: real HTTP(S) over loopback with urllib."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import Ledger, LedgerEntry, open_backend
from spendwatch.exporter.metrics_endpoint import Holder, MetricsEndpoint
from spendwatch.exporter.server import LEDGER_HEADER, PID_HEADER, ledger_fingerprint, start_metrics_server
from spendwatch.exporter.settings import load_settings
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.records import UsageRecord
from tests.servers import free_port, wait_until

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


# --- sharing the address: several processes, one /metrics over one ledger -------------------------------------------


def settings_for(ledger_path, port: int, **more):
    return load_settings({"ledger": str(ledger_path), "metrics_address": f"127.0.0.1:{port}", **more}, environ={})


@pytest.fixture
def endpoints(registry):
    """Start endpoints on the test registry; every one started is stopped afterwards."""
    started = []

    def start(settings, **options):
        endpoint = MetricsEndpoint(registry, settings, **options)
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.stop()


def spendwatch_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("spendwatch") and r.levelno >= logging.WARNING]


def test_every_answer_names_the_ledger_it_shows_and_the_process_serving_it(registry, tmp_path):
    server = start_metrics_server(registry, LOOPBACK_EPHEMERAL, ledger_location=str(tmp_path / "ledger.db"))
    try:
        with get(server.url) as response:
            assert response.headers[LEDGER_HEADER] == ledger_fingerprint(str(tmp_path / "ledger.db"))
            assert response.headers[PID_HEADER] == str(os.getpid())
    finally:
        server.stop()


def test_a_client_without_credentials_is_not_told_which_ledger_is_served(registry, tmp_path):
    ledger_path = str(tmp_path / "ledger.db")
    server = start_metrics_server(registry, LOOPBACK_EPHEMERAL, basic_auth=CREDENTIALS, ledger_location=ledger_path)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(server.url)
        assert LEDGER_HEADER not in refused.value.headers and PID_HEADER not in refused.value.headers
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("ledger.db", "{tmp}/ledger.db", True),
        ("{tmp}/link.db", "{tmp}/ledger.db", True),
        ("{tmp}/ledger.db", "{tmp}/other.db", False),
        ("postgresql://app:secret@db.internal/spend", "postgresql://reader@db.internal:5432/spend", True),
        ("postgres://db.internal/spend", "postgresql://db.internal/spend", True),
        ("postgresql://db.internal/spend", "postgresql://db.internal/other", False),
        ("postgresql://db.internal/spend", "postgresql://db.backup/spend", False),
    ],
    ids=["relative", "symlink", "two files", "user and password", "scheme spelling", "two databases", "two hosts"],
)
def test_the_ledger_fingerprint_tells_ledgers_apart_however_they_are_named(tmp_path, monkeypatch, one, other, same):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.db").symlink_to(tmp_path / "ledger.db")

    first, second = (ledger_fingerprint(name.format(tmp=tmp_path)) for name in (one, other))

    assert (first == second) is same
    assert "secret" not in first and len(first) == 16


def test_an_endpoint_on_a_free_address_serves_it(endpoints, tmp_path):
    endpoint = endpoints(settings_for(tmp_path / "ledger.db", free_port()))

    assert endpoint.serving and endpoint.holder is None
    with get(endpoint.url) as response:
        assert response.headers[PID_HEADER] == str(os.getpid())


def test_an_address_spendwatch_serves_over_the_same_ledger_is_left_to_it_without_a_warning(endpoints, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spendwatch")
    settings = settings_for(tmp_path / "ledger.db", free_port())
    holder = endpoints(settings)

    second = endpoints(settings)

    assert not second.serving and holder.serving
    wait_until(lambda: second.holder, 30, "the holder identified")
    assert second.holder == Holder("same ledger", os.getpid())
    assert spendwatch_warnings(caplog) == []
    assert any(f"served by spendwatch (process {os.getpid()})" in r.getMessage() for r in caplog.records)


def test_a_holder_behind_basic_auth_and_tls_is_recognised_with_the_configured_credentials(
    endpoints, tmp_path, self_signed_cert, caplog
):
    certfile, keyfile = self_signed_cert
    tls = {"metrics_tls_certfile": certfile, "metrics_tls_keyfile": keyfile}
    settings = settings_for(tmp_path / "ledger.db", free_port(), metrics_basic_auth=":".join(CREDENTIALS), **tls)
    endpoints(settings)

    second = endpoints(settings)
    wait_until(lambda: second.holder, 30, "the holder identified")

    assert second.holder == Holder("same ledger", os.getpid())
    assert spendwatch_warnings(caplog) == []


def test_an_address_another_program_holds_gets_one_warning_naming_it_and_what_to_do(endpoints, tmp_path, stub, caplog):
    settings = settings_for(tmp_path / "ledger.db", stub.port)

    endpoint = endpoints(settings, retry_interval=0.05)
    wait_until(lambda: endpoint.holder, 30, "the holder identified")
    endpoint.stop()

    (warning,) = spendwatch_warnings(caplog)
    assert f"SPENDWATCH_METRICS_ADDRESS=127.0.0.1:{stub.port}" in warning and "already in use" in warning
    assert "another program" in warning and "spendwatch serve" in warning
    assert endpoint.holder == Holder("not spendwatch")


def test_an_address_spendwatch_serves_over_another_ledger_gets_a_warning(endpoints, tmp_path, caplog):
    port = free_port()
    endpoints(settings_for(tmp_path / "one.db", port))

    endpoint = endpoints(settings_for(tmp_path / "other.db", port))
    wait_until(lambda: endpoint.holder, 30, "the holder identified")

    (warning,) = spendwatch_warnings(caplog)
    assert f"spendwatch (process {os.getpid()}) over another ledger" in warning


def test_a_process_that_ends_at_once_still_says_who_holds_the_address(endpoints, tmp_path, stub, caplog):
    endpoint = endpoints(settings_for(tmp_path / "ledger.db", stub.port))
    endpoint.stop()

    assert len(spendwatch_warnings(caplog)) == 1


def test_a_waiting_endpoint_takes_the_address_over_when_its_holder_stops(endpoints, tmp_path):
    settings = settings_for(tmp_path / "ledger.db", free_port())
    holder = endpoints(settings)
    waiting = endpoints(settings, retry_interval=0.05)
    wait_until(lambda: waiting.holder, 30, "the holder identified")

    holder.stop()

    wait_until(lambda: waiting.serving, 30, "the waiting endpoint serving")
    with get(waiting.url) as response:
        assert "llm_cost_usd" in metric_names(response.read())


def takeover_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "spendwatch-metrics-takeover"]


def test_a_stopped_waiting_endpoint_stops_waiting_and_never_serves(endpoints, tmp_path):
    settings = settings_for(tmp_path / "ledger.db", free_port())
    holder = endpoints(settings)
    waiting = endpoints(settings, retry_interval=0.05)

    waiting.stop()

    wait_until(lambda: not takeover_threads(), 30, "the takeover thread to end")
    holder.stop()

    with socket.socket() as probe:  # nothing listens there: listening on it works
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a closed client may linger
        probe.bind(("127.0.0.1", settings.metrics_address[1]))
        probe.listen()
    assert not waiting.serving


def fork(work) -> int:
    """Run ``work()`` in a forked child, which exits 0 when it returned; the child's PID."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
            os._exit(0)
        finally:
            os._exit(1)  # never return into the parent's test run
    return pid


def exit_code(pid: int) -> int:
    """The forked child's exit code, waiting for it with a generous timeout (a hang fails, not blocks, the test)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not finish within 60 s")


def test_a_forked_child_stops_its_inherited_server_without_waiting_for_the_parents_loop(serve):
    server = serve()

    assert exit_code(fork(server.stop)) == 0
    with get(server.url) as response:  # the parent still serves
        assert response.status == 200


def test_a_forked_child_keeps_no_copy_of_the_listening_socket(serve):
    server = serve()
    ready, release = os.pipe()
    child = fork(lambda: os.read(ready, 1))  # alive until the parent has stopped its server
    try:
        server.stop()
        with socket.socket() as again:  # the port is free although the child still runs
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", server.port))
            again.listen()
    finally:
        os.write(release, b"x")
    assert exit_code(child) == 0


def test_a_forked_childs_endpoint_stops_at_once_and_leaves_the_address_to_its_parent(endpoints, tmp_path):
    endpoint = endpoints(settings_for(tmp_path / "ledger.db", free_port()))

    def child():
        assert not endpoint.serving and endpoint.holder == Holder("same ledger", os.getppid())
        endpoint.stop()

    assert exit_code(fork(child)) == 0
    assert endpoint.serving
    with get(endpoint.url) as response:
        assert response.headers[PID_HEADER] == str(os.getpid())
