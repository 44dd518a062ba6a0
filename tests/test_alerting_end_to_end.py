"""The shipped alert rules and Alertmanager config, end to end, with nothing mocked.

The real openai SDK calls the local stub; spendwatch.configure() instruments it and serves /metrics; a real
Prometheus scrapes that with the rules `spendwatch assets --runbook-base URL` writes loaded; a real Alertmanager
runs the written alertmanager.yml with its placeholders pointed at this test: the webhook and Slack URLs at a local
HTTP server that keeps what is posted, the SMTP relay at a local aiosmtpd sink. A workload pushes a small daily
budget past its warning, critical and exceeded thresholds, and each page must arrive naming the budget and the share
used, with a runbook link.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiosmtpd.controller import Controller

import spendwatch
from spendwatch import runtime
from spendwatch.cli.commands_assets import write_assets
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable
from tests.conftest import FAKE_API_KEY
from tests.servers import free_port, wait_until

# Real Prometheus and Alertmanager paging: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

RUNBOOK_BASE = "https://wiki.example.org/ops/spendwatch/runbook.md"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise"}]  # the stub counts 1 word + 3 per message: 4 input tokens
INPUT_TOKENS, OUTPUT_TOKENS = 4, 133_333  # max_tokens sets the stub's reply length: each call costs ~8 cents
CALL_COST = PriceTable().lookup(MODEL).cost(INPUT_TOKENS, OUTPUT_TOKENS, 0)
# 5 calls are 80 % (warning), 6 are 96 % (critical), 7 are 112 % (exceeded).
DAILY_BUDGET = 0.50
FIRST_PAGE_TIMEOUT = 60.0  # Prometheus applies scrape and Alertmanager targets ~5 s after start
PAGE_TIMEOUT = 30.0


def percent(calls: int) -> str:
    """The used share as the alert's description prints it (Prometheus's humanizePercentage)."""
    return f"{calls * CALL_COST / DAILY_BUDGET * 100:.4g}%"


def dollars(usd: float) -> str:
    """An amount as the alerts print it: cents from $1 up, else six decimals less the zeros after the cents."""
    if usd >= 1:
        return f"${usd:.2f}"
    return "$" + re.sub(r"^(\d+\.\d{2}\d*?)0+$", r"\1", f"{usd:.6f}")


# --- where pages land ----------------------------------------------------------------------------------------------


class PostCollector:
    """A local HTTP server keeping every JSON body POSTed to it, by path: the webhook and Slack receivers' target."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: list[tuple[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with collector._lock:
                    collector._posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def posts(self, path: str) -> list[Any]:
        with self._lock:
            return [body for posted_to, body in self._posts if posted_to == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Mailbox:
    """An aiosmtpd handler keeping each delivered mail's text (all its parts, decoded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mails: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's naming
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = [message["Subject"] or ""]
        parts += [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
        with self._lock:
            self._mails.append("\n".join(parts))
        return "250 OK"

    def mails(self) -> list[str]:
        with self._lock:
            return list(self._mails)


@pytest.fixture
def collector() -> Iterator[PostCollector]:
    server = PostCollector()
    yield server
    server.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, str]]:
    """The mailbox and the ``host:port`` of an SMTP server (no auth, no TLS) delivering into it."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, f"127.0.0.1:{controller.port}"
    controller.stop()


# --- the system under test -----------------------------------------------------------------------------------------


@pytest.fixture
def exporter(tmp_path, monkeypatch):
    """spendwatch.configure() with a small daily budget and /metrics on an ephemeral port; detached afterwards."""
    for name in [name for name in os.environ if name.startswith("SPENDWATCH_")]:
        monkeypatch.delenv(name)  # the budget and the ledger are this test's, whatever the shell sets
    attached = spendwatch.configure(
        ledger=str(tmp_path / "ledger.db"), metrics_address="127.0.0.1:0", daily_budget_usd=DAILY_BUDGET
    )
    yield attached
    runtime.detach()
    OpenAIInstrumentor().uninstrument()


@pytest.fixture
def assets(tmp_path) -> Path:
    """The files ``spendwatch assets --dest DIR --runbook-base URL`` writes: the rules a pip install user loads."""
    write_assets(tmp_path / "assets", runbook_base=RUNBOOK_BASE)
    return tmp_path / "assets" / "alert_rules"


def alertmanager_config(assets: Path, collector: PostCollector, smtp_address: str) -> dict:
    """The shipped alertmanager.yml with its placeholders pointed at this test, and waits shortened to seconds."""
    config = yaml.safe_load((assets / "alertmanager.yml").read_text())
    config["global"].update(smtp_smarthost=smtp_address, smtp_require_tls=False, slack_api_url=f"{collector.url}/slack")
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{collector.url}/webhook/{receiver['name']}"
    return config


def fast_rule_files(assets: Path, directory: Path) -> list[Path]:
    """Copies of the shipped rule files with every ``for:`` cut to 1s.

    The real durations are minutes; waiting them out would make this test take half an hour. The promtool unit
    tests (alert_rules/tests/) check each alert at the edge of its real ``for:``; this test checks the path from the
    SDK to the inbox.
    """
    copies = []
    for path in [*sorted(assets.glob("*.rules.yml")), *sorted(assets.glob("*.alerts.yml"))]:
        loaded = yaml.safe_load(path.read_text())
        for group in loaded["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(loaded, sort_keys=False))
        copies.append(copy)
    return copies


@pytest.fixture
def alerting(exporter, assets, collector, mailbox, prometheus_factory, alertmanager_factory, tmp_path):
    """Alertmanager and Prometheus (rules loaded, scraping the exporter as job "spendwatch"), started and ready."""
    _, smtp_address = mailbox
    alertmanager = alertmanager_factory(alertmanager_config(assets, collector, smtp_address))
    metrics = urllib.parse.urlsplit(exporter.metrics_server.url)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.host_port]}]}]},
        "scrape_configs": [
            {"job_name": "spendwatch", "metrics_path": metrics.path, "static_configs": [{"targets": [metrics.netloc]}]}
        ],
    }
    prometheus = prometheus_factory(
        config, rule_files=fast_rule_files(assets, rules_dir), extra_args=["--rules.alert.resend-delay=1s"]
    )
    return prometheus, alertmanager


def spend(stub, calls: int) -> None:
    client = openai.OpenAI(base_url=stub.base_url, api_key=FAKE_API_KEY, max_retries=0)
    for _ in range(calls):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUTPUT_TOKENS)


# --- what a page looks like on each channel -------------------------------------------------------------------------


def firing(alerts: list[dict], alertname: str, severity: str) -> list[dict]:
    return [
        alert
        for alert in alerts
        if alert["status"] == "firing"
        and alert["labels"]["alertname"] == alertname
        and alert["labels"]["severity"] == severity
    ]


def webhook_page(collector: PostCollector, receiver: str, alertname: str, severity: str) -> Callable[[], list]:
    def find() -> list[dict]:
        return [
            a for post in collector.posts(f"/webhook/{receiver}") for a in firing(post["alerts"], alertname, severity)
        ]

    return find


def slack_page(collector: PostCollector, *needles: str) -> Callable[[], list]:
    def find() -> list[str]:
        texts = [
            f"{attachment.get('title', '')}\n{attachment.get('text', '')}"
            for post in collector.posts("/slack")
            for attachment in post.get("attachments", [])
        ]
        return [text for text in texts if all(needle in text for needle in needles)]

    return find


def mail(box: Mailbox, *needles: str) -> Callable[[], list]:
    return lambda: [text for text in box.mails() if all(needle in text for needle in needles)]


def inhibited_warning(alertmanager) -> list[dict]:
    return [
        alert
        for alert in alertmanager.alerts()
        if alert["labels"].get("alertname") == "LLMBudgetUsageHigh"
        and alert["labels"].get("severity") == "warning"
        and alert["status"]["inhibitedBy"]
    ]


# --- the test ------------------------------------------------------------------------------------------------------


def test_a_budget_pages_at_warning_critical_and_exceeded_and_the_critical_holds_back_the_warning(
    stub, exporter, alerting, collector, mailbox
):
    prometheus, alertmanager = alerting
    box, _ = mailbox

    # 80 %: the warning page, on the webhook, in Slack and by mail, naming the budget and the share used.
    spend(stub, 5)
    assert stub.usage_log[0].input_tokens == INPUT_TOKENS and stub.usage_log[0].output_tokens == OUTPUT_TOKENS
    (warning, *_) = wait_until(
        webhook_page(collector, "spendwatch-warning", "LLMBudgetUsageHigh", "warning"),
        FIRST_PAGE_TIMEOUT,
        "the warning page at the webhook",
    )
    assert warning["labels"] | {"budget": "global", "period": "day"} == warning["labels"]
    spent_of_limit = f"Budget global has spent {dollars(5 * CALL_COST)} of its {dollars(DAILY_BUDGET)} limit per day"
    assert spent_of_limit in warning["annotations"]["description"]
    assert f"({percent(5)} used), past its warning threshold of 75%" in warning["annotations"]["description"]
    assert warning["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#llmbudgetusagehigh"
    wait_until(mail(box, "LLMBudgetUsageHigh", "Budget global", percent(5)), PAGE_TIMEOUT, "the warning mail")
    in_slack = slack_page(collector, "LLMBudgetUsageHigh", "global", percent(5), f"<{RUNBOOK_BASE}#llmbudgetusagehigh|")
    wait_until(in_slack, PAGE_TIMEOUT, "the warning in Slack, with a runbook link")

    # 96 %: the critical page; Alertmanager now holds back the warning of the same budget and period.
    spend(stub, 1)
    (critical, *_) = wait_until(
        webhook_page(collector, "spendwatch-critical", "LLMBudgetUsageHigh", "critical"),
        PAGE_TIMEOUT,
        "the critical page at the webhook",
    )
    assert f"({percent(6)} used), past its critical threshold of 90%" in critical["annotations"]["description"]
    wait_until(mail(box, "LLMBudgetUsageHigh", "critical", percent(6)), PAGE_TIMEOUT, "the critical mail")
    (held_back,) = wait_until(lambda: inhibited_warning(alertmanager), PAGE_TIMEOUT, "the warning to be inhibited")
    assert held_back["status"]["state"] == "suppressed"

    # 112 %: the budget is exhausted.
    spend(stub, 1)
    (exhausted, *_) = wait_until(
        webhook_page(collector, "spendwatch-critical", "LLMBudgetExhausted", "critical"),
        PAGE_TIMEOUT,
        "the exhausted page at the webhook",
    )
    assert f"{percent(7)} of its" in exhausted["annotations"]["description"]
    assert exhausted["labels"]["budget"] == "global"
    wait_until(mail(box, "LLMBudgetExhausted", "Budget global", percent(7)), PAGE_TIMEOUT, "the exhausted mail")

    # What Prometheus saw is what the ledger says.
    (used,) = prometheus.query("budget_period:llm_budget_used_ratio:max")
    assert float(used["value"][1]) == pytest.approx(7 * CALL_COST / DAILY_BUDGET)
