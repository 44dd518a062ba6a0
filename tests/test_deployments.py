"""The deployments users run: uvicorn and gunicorn with several workers under ``opentelemetry-instrument`` with the
default settings, and an app whose ``/metrics`` address another process holds. Real servers, started and stopped by
PID; the app's LLM calls go to the local stub through the real ``openai`` SDK."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.cli.doctor import WARN, run_checks
from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.server import DEFAULT_ADDRESS, LEDGER_HEADER, PID_HEADER, ledger_fingerprint
from spendwatch.exporter.settings import default_ledger_path
from tests.conftest import FAKE_API_KEY
from tests.servers import READY_TIMEOUT, ServerProcess, free_port, http_get, start_process, wait_until

# Real uvicorn and gunicorn with several workers: make test runs them, make test-fast does not.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REQUESTS = 9
# Far longer than a worker needs to exit: a worker that hangs at shutdown shows as a timeout, not as a slow test.
GRACEFUL_TIMEOUT_S = 300
EXIT_TIMEOUT_S = 60
APP = textwrap.dedent(
    """
    import faulthandler
    import os
    import signal

    import openai

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker's stacks, for the test's failure message

    if os.environ.get("APP_CONFIGURES_SPENDWATCH"):  # each worker attaches itself, after gunicorn forked it
        import spendwatch

        spendwatch.configure()
    client = openai.OpenAI(max_retries=0)


    def answer(path):
        if path != "/ask":
            return b"ready"
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
        return f"{os.getpid()} {reply.choices[0].message.content}".encode()


    async def asgi(scope, receive, send):
        body = answer(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


    def wsgi(environ, start_response):
        body = answer(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]


    if __name__ == "__main__":
        print("APP-RESULT", answer("/ask").decode())
    """
)


@pytest.fixture
def app_dir(tmp_path) -> Path:
    (tmp_path / "deployment_app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def environment(tmp_path, stub) -> dict[str, str]:
    """The defaults: no spendwatch setting but where state lives (the default ledger is under it)."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("SPENDWATCH_", "OTEL_"))}
    return inherited | {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "OPENAI_API_KEY": FAKE_API_KEY,
        "OPENAI_BASE_URL": stub.base_url,
        # The user's own OpenTelemetry exporters are not what this is about: none, so nothing is sent anywhere.
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }


def start_instrumented(
    argv: list[str], app_dir: Path, environment: dict[str, str], *, wrapper: str = "opentelemetry-instrument"
) -> tuple[ServerProcess, int]:
    """``opentelemetry-instrument`` + a web server on a free port, ready when it answers ``/ready``."""
    port = free_port()
    command = [*([str(BIN / wrapper)] if wrapper else []), *[part.format(port=port) for part in argv]]
    process = start_process(command, log_path=app_dir / "server.log", cwd=app_dir, env=environment)
    process.wait_ready(lambda: http_get(f"http://127.0.0.1:{port}/ready")[0] == 200, READY_TIMEOUT, argv[0])
    return process, port


def ask(port: int, times: int) -> list[int]:
    """Make ``times`` requests that each make one LLM call; the PIDs of the workers that answered."""
    pids = []
    for _ in range(times):
        status, body = http_get(f"http://127.0.0.1:{port}/ask", timeout=30)
        assert status == 200, body
        pids.append(int(body.split()[0]))
    return pids


def ledger_calls(environment: dict[str, str]) -> int:
    ledger = Ledger(open_backend(default_ledger_path(environment)), ZoneInfo("UTC"))
    try:
        return ledger.call_count()
    finally:
        ledger.close()


def successful_requests_on_metrics(url: str, ledger_location: str) -> float | None:
    """``llm_requests_total{outcome="success"}`` as served at ``url`` over this ledger; None if another serves it."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            if response.headers.get(LEDGER_HEADER) != ledger_fingerprint(ledger_location):
                return None  # another spendwatch on this machine holds the default address; ours takes it over later
            body = response.read().decode()
    except OSError:
        return None
    samples = [sample for family in text_string_to_metric_families(body) for sample in family.samples]
    return sum(s.value for s in samples if s.name == "llm_requests_total" and s.labels["outcome"] == "success")


def assert_every_call_counted_once(environment: dict[str, str], calls: int) -> None:
    default_url = f"http://{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}/metrics"
    ledger = default_ledger_path(environment)
    wait_until(lambda: ledger_calls(environment) == calls, 60, f"{calls} calls in the ledger")
    what = f"{calls} successful requests on {default_url} over {ledger}"
    wait_until(lambda: successful_requests_on_metrics(default_url, ledger) == calls, 90, what)


def warnings_among_workers(log: str) -> list[str]:
    """spendwatch's warnings in a server's log, but for those about something else on this machine that holds the
    default address (another test's app): workers leaving it to one of them over their ledger say nothing."""
    lines = [line for line in log.splitlines() if line.startswith("spendwatch:")]
    return [line for line in lines if "over another ledger" not in line and "another program" not in line]


def stop_and_wait(process: ServerProcess) -> int:
    """Stop the server the way a deploy does (SIGTERM) and wait for it to exit; its exit code."""
    process.popen.send_signal(signal.SIGTERM)
    try:
        return process.popen.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        dump_stacks(worker_pids(process.pid))
        raise
    finally:
        process.stop()  # SIGKILL if it hung


def dump_stacks(pids: set[int]) -> None:
    """Have hung workers write every thread's stack to the server's log (the app registers faulthandler)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    time.sleep(1)  # faulthandler writes from the signal handler at once; a moment for it to reach the log


def serve_and_count_every_call_once(argv: list[str], app_dir: Path, environment: dict[str, str]) -> None:
    """Serve ``REQUESTS`` LLM calls from a multi-worker server started with the default settings: each call once in
    the ledger and on the default ``/metrics``, a clean exit, and no spendwatch warning between its own workers."""
    server, port = start_instrumented(argv, app_dir, environment)
    try:
        ask(port, REQUESTS)

        assert_every_call_counted_once(environment, REQUESTS)
    finally:
        assert stop_and_wait(server) == 0
    log = server.log_path.read_text()
    assert not warnings_among_workers(log) and "Traceback" not in log, log
    assert ledger_calls(environment) == REQUESTS


def worker_pids(parent: int) -> set[int]:
    """The live (not yet exited) child processes of ``parent``."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def test_uvicorn_with_two_workers_counts_every_call_once_and_serves_them_on_metrics(app_dir, environment):
    argv = [str(BIN / "uvicorn"), "deployment_app:asgi", "--workers", "2", "--port", "{port}", "--lifespan", "off"]
    serve_and_count_every_call_once(argv, app_dir, environment)


def gunicorn(workers: int) -> list[str]:
    return [str(BIN / "gunicorn"), "deployment_app:wsgi", "--workers", str(workers), "--bind", "127.0.0.1:{port}",
            "--graceful-timeout", str(GRACEFUL_TIMEOUT_S)]  # fmt: skip


def test_gunicorn_with_three_workers_counts_every_call_once_and_serves_them_on_metrics(app_dir, environment):
    serve_and_count_every_call_once(gunicorn(3), app_dir, environment)


def test_gunicorn_workers_exit_at_once_on_a_reload_and_at_shutdown(app_dir, environment):
    server, port = start_instrumented(gunicorn(3), app_dir, environment)
    try:
        ask(port, 3)
        before = worker_pids(server.pid)
        assert len(before) == 3

        os.kill(server.pid, signal.SIGHUP)  # a reload: new workers, the old ones shut down gracefully

        what = f"the old workers to exit after a reload (the graceful timeout is {GRACEFUL_TIMEOUT_S} s)"
        try:
            wait_until(lambda: not worker_pids(server.pid) & before, EXIT_TIMEOUT_S, what)
        except TimeoutError:
            dump_stacks(worker_pids(server.pid) & before)
            raise AssertionError(server.log_tail(200)) from None
        ask(port, 3)
    finally:
        assert stop_and_wait(server) == 0, server.log_tail()
    assert "Traceback" not in server.log_path.read_text()


def metrics_pid(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.headers[PID_HEADER])
    except (OSError, TypeError, ValueError):
        return None


def test_when_the_worker_serving_metrics_is_recycled_another_takes_over(app_dir, environment):
    configured = environment | {"APP_CONFIGURES_SPENDWATCH": "1"}  # spendwatch.configure() in each worker
    argv = [*gunicorn(2), "--max-requests", "4"]
    server, port = start_instrumented(argv, app_dir, configured, wrapper="")
    default_url = f"http://{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}/metrics"
    try:
        wait_until(lambda: metrics_pid(default_url) in worker_pids(server.pid), 90, "a worker serving /metrics")
        first = metrics_pid(default_url)
        calls = 0
        while first in worker_pids(server.pid) and calls < 200:  # until gunicorn recycled the worker serving
            calls += len(ask(port, 1))

        assert_every_call_counted_once(configured, calls)
        assert metrics_pid(default_url) in worker_pids(server.pid) - {first}
    finally:
        assert stop_and_wait(server) == 0
    assert "Traceback" not in server.log_path.read_text()


def run_app(app_dir: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, str(app_dir / "deployment_app.py")]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=app_dir)


def test_an_app_whose_metrics_port_another_program_holds_runs_records_its_call_and_warns_once(
    app_dir, environment, stub
):
    busy = environment | {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{stub.port}"}  # the stub: an HTTP server

    finished = run_app(app_dir, busy)

    assert finished.returncode == 0, finished.stderr
    assert "APP-RESULT" in finished.stdout
    assert ledger_calls(busy) == 1
    (warning,) = [line for line in finished.stderr.splitlines() if "spendwatch" in line]
    assert f"SPENDWATCH_METRICS_ADDRESS=127.0.0.1:{stub.port}" in warning and "another program" in warning
    doctor = {check.name: check for check in run_checks(busy)}["metrics_endpoint"]
    assert doctor.status == WARN and "another program holds the port" in doctor.summary


def test_an_app_beside_spendwatch_serve_over_its_ledger_shows_its_calls_there_without_a_word(app_dir, environment):
    port = free_port()
    shared = environment | {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    serve = start_process([str(BIN / "spendwatch"), "serve"], log_path=app_dir / "serve.log", env=shared)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        serve.wait_ready(lambda: http_get(url)[0] == 200, READY_TIMEOUT, "spendwatch serve")

        finished = run_app(app_dir, shared)

        assert finished.returncode == 0, finished.stderr
        assert "spendwatch" not in finished.stderr
        ledger = default_ledger_path(shared)
        wait_until(lambda: successful_requests_on_metrics(url, ledger) == 1, 60, f"the app's call on {url}")
        doctor = {check.name: check for check in run_checks(shared)}["metrics_endpoint"]
        assert doctor.status == "ok" and f"served by process {serve.pid}" in doctor.summary
    finally:
        serve.stop()


def test_doctor_warns_when_the_metrics_address_shows_another_ledger(app_dir, environment):
    port = free_port()
    address = {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    other = environment | address | {"SPENDWATCH_LEDGER": str(app_dir / "other.db")}
    serve = start_process([str(BIN / "spendwatch"), "serve"], log_path=app_dir / "serve.log", env=other)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        serve.wait_ready(lambda: http_get(url)[0] == 200, READY_TIMEOUT, "spendwatch serve")

        doctor = {check.name: check for check in run_checks(environment | address)}["metrics_endpoint"]

        assert doctor.status == WARN and f"spendwatch (process {serve.pid}) over another ledger" in doctor.summary
    finally:
        serve.stop()
