"""The alerting half of ``spendwatch demo``: a real Prometheus and Alertmanager, pages printed as they arrive.

When ``prometheus`` and ``prometheus-alertmanager`` (or ``alertmanager``) are on PATH, :class:`AlertingDemo` starts
both on free 127.0.0.1 ports in a temporary directory, with the files shipped in the wheel (``spendwatch.alert_rules``,
what ``spendwatch assets`` writes out):

- Prometheus scrapes the demo's ``/metrics`` every second as job ``spendwatch`` (the name the rules assume),
  evaluates every second, and sends to the Alertmanager. It loads the shipped ``alert_rules/*.yml`` from a
  temporary copy in which every ``for:`` is cut to a few seconds, and only once it has scraped ``/metrics``: before
  that first scrape (~5 s after start) ``SpendwatchExporterDown`` would rightly say it sees nothing.
- Alertmanager runs the shipped ``alert_rules/alertmanager.yml`` (its routing and inhibition) with each receiver's
  email, Slack and webhook targets replaced by one webhook to a small HTTP server in this process, and the group
  waits cut to a second.

Both start and stop with :mod:`spendwatch.demo.processes`, as the tests' servers do: stopped by PID (SIGTERM, then
SIGKILL after a timeout), and sent SIGTERM if this process dies first.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spendwatch.cli.commands_assets import ALERT_RULES_PACKAGE, alert_rule_files, packaged_directory
from spendwatch.demo.processes import (
    LocalServer,
    ServerExitedError,
    ServerProcess,
    answers_ready,
    http_get,
    start_on_free_port,
    start_process,
)

__all__ = ["AlertingDemo", "Page", "alert_rules_directory", "unavailable_reason"]

DEMO_FOR = "2s"  # every rule's `for:` in the demo's copy (the shipped rules say 1m to 30m)
READY_TIMEOUT = 30.0
POLL = 0.05
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"


def alert_rules_directory() -> Path:
    """The shipped ``alert_rules/``: package data in a wheel, the repository's folder in a checkout."""
    return packaged_directory(ALERT_RULES_PACKAGE)


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("prometheus"), shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def unavailable_reason() -> str | None:
    """One line saying why the alerting demo cannot run here, or None when it can."""
    prometheus, alertmanager = _binaries()
    missing = [name for name, path in (("prometheus", prometheus), ("alertmanager", alertmanager)) if path is None]
    if missing:
        return (
            f"alerting: skipped, {' and '.join(missing)} not on PATH "
            f"(`{INSTALL_HINT}` to see the budget pages arrive too)"
        )
    try:
        import yaml  # noqa: F401 - needed to adapt the shipped files
    except ImportError:
        return "alerting: skipped, PyYAML is needed to adapt the shipped rules (pip install pyyaml)"
    return None


@dataclass(frozen=True)
class Page:
    """One alert in one webhook notification from Alertmanager."""

    at: float  # seconds since the alerting demo started
    receiver: str
    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str = ""

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "?")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    def matches(self, wanted: str | tuple[str, str]) -> bool:
        """``wanted`` is an alert name, or (alert name, severity); only firing pages match."""
        name, severity = (wanted, None) if isinstance(wanted, str) else wanted
        return self.status == "firing" and self.alertname == name and severity in (None, self.severity)

    def describe(self) -> str:
        where = " ".join(f"{key}={self.labels[key]}" for key in ("severity", "budget", "period") if key in self.labels)
        lines = [f"{self.at:+6.1f}s  PAGE to {self.receiver}: [{self.status.upper()}] {self.alertname}  {where}"]
        for key in ("summary", "description"):
            if self.annotations.get(key):
                lines.append(
                    textwrap.fill(self.annotations[key], width=116, initial_indent=" " * 10, subsequent_indent=" " * 10)
                )
        return "\n".join(lines)


@dataclass
class _Server(LocalServer):
    """Prometheus or Alertmanager as the demo started it, with the name and version it prints."""

    name: str = ""
    version: str = ""


@dataclass
class _Inbox:
    """What the demo's own threads report, for the main thread to print in order."""

    started: float = field(default_factory=time.monotonic)
    events: queue.Queue = field(default_factory=queue.Queue)
    seen: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        self.events.put(f"{self.elapsed():+6.1f}s  {text}")

    def notification(self, receiver: str, body: dict[str, Any]) -> None:
        for alert in body.get("alerts", []):
            labels, status = alert.get("labels", {}), alert.get("status", "")
            key = (status, alert.get("startsAt"), tuple(sorted(labels.items())))
            with self.lock:  # Alertmanager repeats a group's alerts whenever the group changes: print each once
                if key in self.seen:
                    continue
                self.seen.add(key)
            page = Page(self.elapsed(), receiver, status, labels, alert.get("annotations", {}), alert.get("startsAt"))
            self.events.put(page)


def _webhook_server(inbox: _Inbox) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with contextlib.suppress(ValueError):
                inbox.notification(self.path.strip("/") or "webhook", json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL}, daemon=True).start()
    return server


def _api_data(url: str) -> Any:
    """The ``data`` of a Prometheus API answer, or None while there is none."""
    try:
        status, body = http_get(url, timeout=2.0)
    except OSError:
        return None
    return json.loads(body)["data"] if status == 200 else None


def _version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"version (\S+)", done.stdout + done.stderr)
    return found.group(1) if found else ""


class AlertingDemo:
    """Prometheus and Alertmanager running the shipped rules against the demo's ``/metrics``.

    ``start(metrics_url)`` returns once both servers answer; the rules load in the background after Prometheus's
    first scrape. ``wait_for_pages(wanted, timeout)`` prints every page (and progress note) as it arrives until the
    wanted ones are in; ``stop()`` stops both by PID. Also a context manager.
    """

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self._out = out
        self._inbox = _Inbox()
        self._pages: list[Page] = []
        self._servers: list[_Server] = []
        self._webhook: ThreadingHTTPServer | None = None
        self._workdir: Path | None = None
        self._keep_workdir = False
        self._stopping = threading.Event()
        self.prometheus: _Server | None = None
        self.alertmanager: _Server | None = None

    @staticmethod
    def unavailable() -> str | None:
        return unavailable_reason()

    def elapsed(self) -> float:
        """Seconds since ``start``."""
        return self._inbox.elapsed()

    def __enter__(self) -> AlertingDemo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- start -------------------------------------------------------------------------------------------------

    def start(self, metrics_url: str) -> None:
        prometheus_binary, alertmanager_binary = _binaries()
        rules = alert_rules_directory()
        if prometheus_binary is None or alertmanager_binary is None:
            raise RuntimeError(unavailable_reason() or "alerting demo unavailable")
        self._inbox = _Inbox()
        self._workdir = Path(tempfile.mkdtemp(prefix="spendwatch-demo-alerting-"))
        self._webhook = _webhook_server(self._inbox)
        webhook_url = f"http://127.0.0.1:{self._webhook.server_address[1]}"
        try:
            am_config = self._workdir / "alertmanager.yml"
            am_config.write_text(_alertmanager_config(rules / "alertmanager.yml", webhook_url))
            self.alertmanager = self._launch(
                "Alertmanager",
                alertmanager_binary,
                lambda port, data: [
                    f"--config.file={am_config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                    f"--storage.path={data}",
                ],
            )
            staged = self._workdir / "rules-staged"
            staged.mkdir()
            rule_files = _fast_rule_files(staged)
            prom_config = self._workdir / "prometheus.yml"
            prom_config.write_text(_prometheus_config(metrics_url, self.alertmanager.port, self._workdir / "rules"))
            self.prometheus = self._launch(
                "Prometheus",
                prometheus_binary,
                lambda port, data: [
                    f"--config.file={prom_config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={data}",
                    "--web.enable-lifecycle",
                    "--rules.alert.resend-delay=1s",
                ],
            )
        except Exception:
            self.stop()
            raise
        threading.Thread(target=self._load_rules_after_first_scrape, args=(rule_files,), daemon=True).start()
        names = " and ".join(path.name for path in rule_files)
        prometheus, alertmanager = self.prometheus, self.alertmanager
        self._out(
            f"alerting: Prometheus {prometheus.version} at {prometheus.url}, "
            f"Alertmanager {alertmanager.version} at {alertmanager.url}\n"
            f'  Prometheus scrapes {metrics_url} every 1s (job "spendwatch") with the shipped rules,\n'
            f"  alert_rules/{names}, from a temporary copy\n"
            f"  with every `for:` cut to {DEMO_FOR} (shipped: 1m to 30m), so that the pages come in seconds\n"
            "  Alertmanager runs the shipped alert_rules/alertmanager.yml (routing, inhibition) with its email, Slack\n"
            f"  and webhook receivers replaced by this demo's webhook ({webhook_url}), group_wait/group_interval 1s\n"
        )

    def _launch(self, name: str, binary: str, arguments: Callable[[int, Path], list[str]]) -> _Server:
        """Start ``binary`` on a free port (another one if that got taken meanwhile) and wait until it is ready."""
        workdir = self._workdir
        assert workdir is not None

        def start(port: int) -> ServerProcess:
            work = workdir / f"{name.lower()}-{port}"
            work.mkdir()
            argv = [binary, *arguments(port, work / "data")]
            return start_process(argv, log_path=work / f"{name.lower()}.log", cwd=work)

        try:
            process, port = start_on_free_port(start, answers_ready, name, READY_TIMEOUT)
        except (ServerExitedError, TimeoutError):
            self._keep_workdir = True  # for the log the error names
            raise
        server = _Server(process, port, name, _version(binary))
        self._servers.append(server)
        return server

    def _load_rules_after_first_scrape(self, rule_files: list[Path]) -> None:
        """Copy the rules where Prometheus's config points and reload it, once ``/metrics`` has been scraped and
        the Alertmanager is known (Prometheus applies both ~5 s after start)."""
        assert self.prometheus is not None
        query = urllib.parse.urlencode({"query": 'up{job="spendwatch"} == 1'})
        while not self._stopping.is_set():
            scraped = (_api_data(f"{self.prometheus.url}/api/v1/query?{query}") or {}).get("result")
            notifying = (_api_data(f"{self.prometheus.url}/api/v1/alertmanagers") or {}).get("activeAlertmanagers")
            if scraped and notifying:
                break
            time.sleep(POLL * 2)
        else:
            return
        assert self._workdir is not None
        loaded = self._workdir / "rules"
        loaded.mkdir(exist_ok=True)
        for path in rule_files:
            shutil.copy(path, loaded / path.name)
        request = urllib.request.Request(f"{self.prometheus.url}/-/reload", method="POST")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as error:
            self._inbox.note(f"Prometheus did not reload its rules: {error}")
            return
        self._inbox.note("Prometheus has scraped /metrics and loaded the rules")

    # --- pages -------------------------------------------------------------------------------------------------

    @property
    def pages(self) -> list[Page]:
        """Every page printed so far."""
        return list(self._pages)

    def wait_for_pages(self, wanted: Iterable[str | tuple[str, str]], timeout: float) -> bool:
        """Print pages and notes as they arrive until each wanted page (an alert name, or (name, severity)) has
        arrived, or ``timeout`` seconds pass (then say so). True when all of them arrived."""
        missing = [w for w in wanted if not any(page.matches(w) for page in self._pages)]
        deadline = time.monotonic() + timeout
        while True:
            self.print_arrivals()
            missing = [w for w in missing if not any(page.matches(w) for page in self._pages)]
            if not missing:
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        names = ", ".join(w if isinstance(w, str) else f"{w[0]} ({w[1]})" for w in missing)
        self._out(f"{self._inbox.elapsed():+6.1f}s  no page for {names} within {timeout:.0f}s")
        for server in self._servers:
            self._out(f"  {server.name} log ({server.process.log_path}):\n{server.process.log_tail(8)}")
        self._keep_workdir = True
        return False

    def print_arrivals(self) -> None:
        """Print what has arrived and is not printed yet."""
        while True:
            try:
                event = self._inbox.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Page):
                self._pages.append(event)
                self._out(event.describe())
            else:
                self._out(event)

    # --- stop --------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop both servers by PID and the webhook; remove the temporary directory unless something failed."""
        self._stopping.set()
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()
        if self._webhook is not None:
            self._webhook.shutdown()
            self._webhook.server_close()
            self._webhook = None
        if self._workdir is not None:
            if self._keep_workdir:
                self._out(f"alerting: configs and logs kept in {self._workdir}")
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


# --- the adapted configuration ------------------------------------------------------------------------------------


def _fast_rule_files(directory: Path) -> list[Path]:
    """Copies of the shipped rule files (recording rules first) with every ``for:`` cut to ``DEMO_FOR``."""
    import yaml

    copies = []
    for path in alert_rule_files():
        loaded = yaml.safe_load(path.read_text())
        for group in loaded.get("groups", []):
            for rule in group.get("rules", []):
                if "for" in rule:
                    rule["for"] = DEMO_FOR
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(loaded, sort_keys=False))
        copies.append(copy)
    return copies


def _prometheus_config(metrics_url: str, alertmanager_port: int, rules: Path) -> str:
    """Scrape ``metrics_url`` as job ``spendwatch`` every second; rules from ``rules/*.yml`` (empty at first)."""
    import yaml

    metrics = urllib.parse.urlsplit(metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [
            {
                "job_name": "spendwatch",
                "metrics_path": metrics.path or "/metrics",
                "static_configs": [{"targets": [metrics.netloc]}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _alertmanager_config(shipped: Path, webhook_url: str) -> str:
    """The shipped alertmanager.yml, each receiver a webhook to ``webhook_url/<receiver>``, the waits cut to 1s."""
    import yaml

    config = yaml.safe_load(shipped.read_text())
    for key in [key for key in config.get("global", {}) if key.startswith(("smtp_", "slack_"))]:
        del config["global"][key]  # nothing is mailed or posted to Slack from the demo
    config["route"].update(group_wait="1s", group_interval="1s")
    config["receivers"] = [
        {"name": receiver["name"], "webhook_configs": [{"url": f"{webhook_url}/{receiver['name']}"}]}
        for receiver in config["receivers"]
    ]
    return yaml.safe_dump(config, sort_keys=False)
