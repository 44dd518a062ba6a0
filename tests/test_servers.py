"""The server fixtures start real PostgreSQL, Prometheus and Alertmanager, and the helpers behave as documented."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psycopg
import pytest

from tests.servers import free_port, http_get, require_binary, start_process, wait_until

# --- helpers -----------------------------------------------------------------------------------------------------


def test_wait_until_returns_the_first_truthy_value():
    calls = iter([None, ValueError("not yet"), 0, "ready"])

    def predicate():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(predicate, timeout=5, what="a value", interval=0) == "ready"


def test_wait_until_times_out_naming_what_and_the_last_error():
    def predicate():
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match=r"waiting for the moon; last error: ConnectionRefusedError"):
        wait_until(predicate, timeout=0.1, what="the moon")


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch):
    assert require_binary(sys.executable, "python3") == sys.executable
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="install Debian's no-such-package"):
        require_binary("spendwatch-no-such-binary", "no-such-package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install Debian's no-such-package"):
        require_binary("/nonexistent/spendwatch-no-such-binary", "no-such-package")


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(9)"
    )
    process = start_process([sys.executable, "-c", script], log_path=tmp_path / "stubborn.log")
    wait_until(lambda: "up" in process.log_tail(), timeout=10, what="the script to start")
    process.stop(timeout=0.5)
    assert process.popen.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def test_free_port_can_be_bound_on_loopback():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_free_port_gives_the_preferred_port_while_it_is_free_and_another_once_it_is_taken():
    import socket

    preferred = free_port()
    assert free_port(preferred) == preferred
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", preferred))
        taken.listen()
        other = free_port(preferred)
    assert other != preferred and other > 0


# --- PostgreSQL --------------------------------------------------------------------------------------------------


def test_postgres_server_accepts_writes_and_reads(postgres_server):
    assert postgres_server.startswith("postgresql://postgres@127.0.0.1:")
    assert postgres_server.endswith("/spendwatch_test")
    with psycopg.connect(postgres_server) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (id serial PRIMARY KEY, usd numeric NOT NULL)")
        conn.execute("INSERT INTO probe (usd) VALUES (%s), (%s)", (0.25, 1.5))
        total = conn.execute("SELECT sum(usd) FROM probe").fetchone()[0]
        conn.rollback()
    assert float(total) == pytest.approx(1.75)


@pytest.mark.parametrize("run", [1, 2])
def test_postgres_url_gives_each_test_a_fresh_empty_database(postgres_url, postgres_server, run):
    assert postgres_url != postgres_server
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables.fetchone()[0] == 0
        conn.execute("CREATE TABLE ledger (id int)")  # committed: the next run must not see it
        conn.execute("INSERT INTO ledger VALUES (%s)", (run,))


# --- Prometheus --------------------------------------------------------------------------------------------------

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: self
    static_configs:
      - targets: ["127.0.0.1:9090"]
"""


def test_promtool_checks_configs(promtool_binary, tmp_path):
    good = tmp_path / "prometheus.yml"
    good.write_text(PROMETHEUS_CONFIG)
    checked = subprocess.run([promtool_binary, "check", "config", str(good)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("global:\n  scrape_interval: soon\n")
    assert subprocess.run([promtool_binary, "check", "config", str(bad)], capture_output=True).returncode != 0


def test_prometheus_starts_ready_and_scrapes_itself(prometheus_factory):
    prometheus = prometheus_factory()
    assert http_get(f"{prometheus.url}/-/ready")[0] == 200
    up = wait_until(lambda: prometheus.query("up"), timeout=30, what="a first scrape of Prometheus itself")
    assert up[0]["value"][1] == "1"


def test_prometheus_sends_rule_alerts_to_alertmanager(prometheus_factory, alertmanager_factory, tmp_path):
    rules = tmp_path / "always.rules.yml"
    rules.write_text(
        textwrap.dedent("""\
        groups:
          - name: probe
            rules:
              - alert: SpendwatchProbeAlwaysFiring
                expr: vector(1)
                labels: {severity: info}
        """)
    )
    alertmanager = alertmanager_factory()
    config = {
        "global": {"evaluation_interval": "1s"},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.host_port]}]}]},
    }
    # Prometheus learns its Alertmanagers ~5 s after start, and by default resends an alert only every minute.
    prometheus = prometheus_factory(config, rule_files=[rules], extra_args=["--rules.alert.resend-delay=1s"])
    firing = wait_until(prometheus.alerts, timeout=30, what="the probe alert to fire in Prometheus")
    assert firing[0]["labels"]["alertname"] == "SpendwatchProbeAlwaysFiring"
    received = wait_until(alertmanager.alerts, timeout=30, what="the probe alert to reach Alertmanager")
    assert received[0]["labels"]["alertname"] == "SpendwatchProbeAlwaysFiring"


# --- Alertmanager ------------------------------------------------------------------------------------------------


def test_amtool_checks_configs(amtool_binary, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    checked = subprocess.run([amtool_binary, "check-config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config.write_text("route:\n  receiver: nowhere\nreceivers: []\n")
    assert subprocess.run([amtool_binary, "check-config", str(config)], capture_output=True).returncode != 0


def test_alertmanager_starts_ready_without_clustering(alertmanager_factory):
    alertmanager = alertmanager_factory()
    assert http_get(f"{alertmanager.url}/-/ready")[0] == 200
    assert alertmanager.get_json("/api/v2/status")["cluster"]["status"] == "disabled"
    assert alertmanager.alerts() == []
    alertmanager.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(alertmanager.pid, 0)
