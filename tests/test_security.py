"""Secrets and content stay out of everything spendwatch writes, and ``/metrics`` is private by default.

The leak test runs a real app under ``opentelemetry-instrument`` (console span, metric and log exporters, Python
logging at DEBUG) against the stub, with a recognisable API key, organization id and prompt, including a failing call
and a 401 whose body quotes the credentials back, then greps stdout, stderr, the ledger's files, a ``/metrics``
scrape and ``spendwatch doctor``'s output for them.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import spendwatch
from spendwatch import runtime
from tests.conftest import OTHER_OPENAI_INSTRUMENTATION
from tests.servers import in_ci
from tests.test_auto_instrumentation import console_spans
from tests.test_hostile_input import instrumentors_in_use, undo_instrumentation

BIN = Path(sys.executable).parent
API_KEY = "sk-proj-SECRETKEY-9d8c7b6a5f4e3d2c1b0a"
ORGANIZATION = "org-SECRETORG-5e4d3c2b1a"
PROMPT_MARKER = "PROMPT-MARKER-a7c3e91f"
COMPLETION_MARKER = "spendwatch stub server"  # in every reply the stub writes
SECRETS = (API_KEY, ORGANIZATION)
CONTENT = (PROMPT_MARKER, COMPLETION_MARKER)

APP = textwrap.dedent(
    """
    import logging, os, sys, urllib.request
    import openai
    from spendwatch import runtime

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    prompt = [{"role": "user", "content": "Tell me about PROMPT_MARKER please"}]
    client = openai.OpenAI(
        api_key=os.environ["APP_API_KEY"], organization=os.environ["APP_ORGANIZATION"], max_retries=0
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=prompt)
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=prompt, stream=True, stream_options={"include_usage": True}
    ):
        pass
    client.responses.create(model="gpt-4o-mini", input=prompt[0]["content"])
    client.embeddings.create(model="text-embedding-3-small", input=prompt[0]["content"])
    try:
        client.chat.completions.create(model="stub-error-500", messages=prompt)
    except openai.InternalServerError:
        print("APP 500 raised")
    refusing = client.with_options(base_url=os.environ["APP_REFUSING_URL"])
    try:
        refusing.chat.completions.create(model="gpt-4o-mini", messages=prompt)
    except openai.AuthenticationError:
        print("APP 401 raised")
    url = runtime.current().metrics_server.url
    with urllib.request.urlopen(url, timeout=10) as response, open(os.environ["APP_SCRAPE"], "wb") as out:
        out.write(response.read())
    print("APP done")
    """
).replace("PROMPT_MARKER", PROMPT_MARKER)


class _Refusing(BaseHTTPRequestHandler):
    """Answers 401 quoting the credentials back in full, as a careless OpenAI-compatible proxy might."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        quoted = f"{self.headers.get('Authorization')} for {self.headers.get('OpenAI-Organization')}"
        message = f"Incorrect API key provided: {quoted}"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-should-retry", "false")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def refusing_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _clean_environ() -> dict[str, str]:
    drop = ("SPENDWATCH_", "OTEL_", "OPENAI_")
    return {key: value for key, value in os.environ.items() if not key.startswith(drop)}


def run_app(tmp_path: Path, stub, refusing_url: str, **extra: str) -> dict:
    """Run the app once; return what it left behind: its output, the ledger's bytes, the scrape, doctor's output."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    ledger = tmp_path / "ledger.db"
    environ = _clean_environ() | {
        "APP_API_KEY": API_KEY,
        "APP_ORGANIZATION": ORGANIZATION,
        "APP_REFUSING_URL": refusing_url,
        "APP_SCRAPE": str(tmp_path / "scrape.txt"),
        "OPENAI_BASE_URL": stub.base_url,
        "OTEL_SERVICE_NAME": "spendwatch-security-test",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": OTHER_OPENAI_INSTRUMENTATION,  # spendwatch's own, not the test extra's
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "console",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
        "OTEL_PYTHON_LOG_LEVEL": "debug",
        "SPENDWATCH_LEDGER": str(ledger),
        "SPENDWATCH_METRICS_ADDRESS": "127.0.0.1:0",
        **extra,
    }
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, str(app)]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "APP done" in done.stdout and "APP 500 raised" in done.stdout and "APP 401 raised" in done.stdout
    doctor_environ = environ | {"OPENAI_API_KEY": API_KEY, "OPENAI_ORG_ID": ORGANIZATION}
    doctor = [
        subprocess.run([str(BIN / "spendwatch"), "doctor", *flags], env=doctor_environ, capture_output=True, text=True)
        for flags in ((), ("--json",))
    ]
    ledger_files = [ledger, *tmp_path.glob("ledger.db-*"), *(p for p in tmp_path.rglob("*.journal*") if p.is_file())]
    return {
        "stdout": done.stdout,
        "stderr": done.stderr,
        "ledger": b"".join(path.read_bytes() for path in ledger_files if path.is_file()),
        "scrape": (tmp_path / "scrape.txt").read_text(),
        "doctor": "".join(run.stdout + run.stderr for run in doctor),
    }


def spans(stdout: str) -> list[dict]:
    """The spans among the console exporters' JSON objects (log records and metrics are printed there too)."""
    return [item for item in console_spans(stdout) if "kind" in item and "name" in item]


def assert_absent(outputs: dict, needles: tuple[str, ...]) -> None:
    for where, text in outputs.items():
        haystack = text if isinstance(text, bytes) else text.encode()
        for needle in needles:
            assert needle.encode() not in haystack, f"{needle!r} leaked into {where}"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, stub_server, refusing_server):
    stub_server.reset()
    return run_app(tmp_path_factory.mktemp("default"), stub_server, refusing_server)


def test_the_run_recorded_spans_logs_and_metrics_worth_grepping(default_run):
    names = {span["name"] for span in spans(default_run["stdout"])}
    assert {"chat gpt-4o-mini", "embeddings text-embedding-3-small", "chat stub-error-500"} <= names
    assert "DEBUG" in default_run["stderr"]
    assert "llm_cost_usd_total" in default_run["scrape"]
    assert "gen_ai.client.token.usage" in default_run["stdout"]  # the OTel metrics went through the console too
    assert b"gpt-4o-mini" in default_run["ledger"]
    assert "ledger" in default_run["doctor"]


def test_no_key_organization_prompt_or_completion_leaks_anywhere_by_default(default_run):
    assert_absent(default_run, SECRETS + CONTENT)


def test_an_error_span_carries_the_error_type_and_not_the_providers_message(default_run):
    finished = spans(default_run["stdout"])
    refused = [span for span in finished if span["attributes"].get("error.type") == "AuthenticationError"]
    assert refused, [span["attributes"].get("error.type") for span in finished]
    assert refused[0]["status"]["description"] == "AuthenticationError"


def test_captured_content_reaches_spans_but_never_the_key_organization_or_ledger(
    tmp_path, stub_server, refusing_server
):
    captured = run_app(
        tmp_path, stub_server, refusing_server, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"
    )

    (chat, *_) = [span for span in spans(captured["stdout"]) if span["name"] == "chat gpt-4o-mini"]
    assert PROMPT_MARKER in chat["attributes"]["gen_ai.input.messages"]
    assert COMPLETION_MARKER in chat["attributes"]["gen_ai.output.messages"]
    assert_absent(captured, SECRETS)
    assert_absent({key: captured[key] for key in ("ledger", "scrape", "doctor")}, CONTENT)


# --- /metrics is private by default -------------------------------------------------------------------------------


@pytest.fixture
def attach(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("SPENDWATCH_"):
            monkeypatch.delenv(name)

    instrumented_before = instrumentors_in_use()

    def configure(**settings):
        return spendwatch.configure(ledger=str(tmp_path / "ledger.db"), **settings)

    yield configure
    runtime.detach()
    undo_instrumentation(instrumented_before)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of this machine's TCP sockets listening on ``port``, from /proc (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port and len(address) == width:
                found.add(address)
    return found


def _a_non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the kernel just picks a source address
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _skip_unless_ci(why: str) -> None:
    # A busy default port on a developer's machine is a reason to skip; in CI it is a failure, never a skip.
    (pytest.fail if in_ci() else pytest.skip)(why)


def test_configure_serves_metrics_on_loopback_port_9464_by_default(attach):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9464)) == 0:
            _skip_unless_ci("something else already listens on 127.0.0.1:9464")

    try:
        attached = attach()
    except spendwatch.ConfigError as error:  # taken between the probe and the bind, by another test run
        _skip_unless_ci(str(error))

    assert (attached.metrics_server.host, attached.metrics_server.port) == ("127.0.0.1", 9464)
    assert _listening_addresses(9464) == {"0100007F"}  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or ::
    outside = _a_non_loopback_address()
    if outside is not None:
        with socket.socket() as probe:
            assert probe.connect_ex((outside, 9464)) != 0


def test_basic_auth_and_tls_from_the_environment_guard_the_configured_endpoint(attach, self_signed_cert, monkeypatch):
    certfile, keyfile = self_signed_cert
    monkeypatch.setenv("SPENDWATCH_METRICS_BASIC_AUTH", "scraper:s3cret-pass")
    monkeypatch.setenv("SPENDWATCH_METRICS_TLS_CERTFILE", certfile)
    monkeypatch.setenv("SPENDWATCH_METRICS_TLS_KEYFILE", keyfile)

    url = attach(metrics_address="127.0.0.1:0").metrics_server.url

    assert url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=ssl.create_default_context(cafile=certfile), timeout=10) as client:
        assert client.get(url, auth=("scraper", "s3cret-pass")).status_code == 200
        wrong = client.get(url, auth=("scraper", "guess"))
        anonymous = client.get(url)
    assert (wrong.status_code, anonymous.status_code) == (401, 401)
    assert "guess" not in wrong.text and "s3cret-pass" not in wrong.text + anonymous.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://"), auth=("scraper", "s3cret-pass"), timeout=5)


def test_doctor_checks_the_guarded_endpoint_without_printing_its_password(attach, self_signed_cert, monkeypatch):
    from spendwatch.cli.doctor import OK, run_checks

    certfile, keyfile = self_signed_cert
    monkeypatch.setenv("SPENDWATCH_METRICS_BASIC_AUTH", "scraper:s3cret-pass")
    monkeypatch.setenv("SPENDWATCH_METRICS_TLS_CERTFILE", certfile)
    monkeypatch.setenv("SPENDWATCH_METRICS_TLS_KEYFILE", keyfile)
    server = attach(metrics_address="127.0.0.1:0").metrics_server
    monkeypatch.setenv("SPENDWATCH_METRICS_ADDRESS", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("SPENDWATCH_LEDGER", str(runtime.current().settings.ledger))

    results = {result.name: result for result in run_checks()}

    assert results["metrics_endpoint"].status == OK, results["metrics_endpoint"]
    assert "basic auth" in results["metrics_endpoint"].summary
    assert "s3cret-pass" not in json.dumps([result.as_dict() for result in results.values()])
