"""``spendwatch alert test`` against a real Alertmanager: the test alert arrives; no Alertmanager means exit 1."""

from __future__ import annotations

import pytest

from spendwatch import cli
from tests.servers import free_port, wait_until


@pytest.fixture
def spendwatch_cli():
    """The ``spendwatch`` command line, in-process."""
    return cli.main


def _test_alerts(alertmanager) -> list[dict]:
    return [alert for alert in alertmanager.alerts() if alert["labels"].get("alertname") == "SpendwatchTestAlert"]


def test_the_test_alert_reaches_alertmanager(spendwatch_cli, alertmanager_factory, capsys):
    alertmanager = alertmanager_factory()

    status = spendwatch_cli(
        ["alert", "test", "--alertmanager", alertmanager.url, "--severity", "critical", "--budget", "research"]
    )

    assert status == 0
    (alert,) = wait_until(lambda: _test_alerts(alertmanager), 10, "the test alert in Alertmanager")
    assert alert["labels"] == {
        "alertname": "SpendwatchTestAlert",
        "test": "true",
        "severity": "critical",
        "budget": "research",
    }
    assert "test alert" in alert["annotations"]["summary"]
    assert alert["endsAt"] > alert["startsAt"]
    out = capsys.readouterr().out
    assert f"{alertmanager.url}/api/v2/alerts" in out and 'alertname="SpendwatchTestAlert"' in out


def test_the_test_alert_is_a_warning_without_a_budget_by_default(spendwatch_cli, alertmanager_factory):
    alertmanager = alertmanager_factory()

    assert spendwatch_cli(["alert", "test", "--alertmanager", alertmanager.host_port]) == 0

    (alert,) = wait_until(lambda: _test_alerts(alertmanager), 10, "the test alert in Alertmanager")
    assert alert["labels"] == {"alertname": "SpendwatchTestAlert", "test": "true", "severity": "warning"}


def test_an_unreachable_alertmanager_exits_1_and_says_so(spendwatch_cli, capsys):
    url = f"http://127.0.0.1:{free_port()}"

    status = spendwatch_cli(["alert", "test", "--alertmanager", url])

    assert status == 1
    assert f"cannot reach Alertmanager at {url}/api/v2/alerts" in capsys.readouterr().err


def test_a_refused_alert_exits_1_with_the_http_status(spendwatch_cli, alertmanager_factory, capsys):
    alertmanager = alertmanager_factory()

    status = spendwatch_cli(["alert", "test", "--alertmanager", f"{alertmanager.url}/no-such-path"])

    assert status == 1
    assert "refused the alert: HTTP 404" in capsys.readouterr().err


def test_without_alertmanager_it_posts_to_the_local_default(spendwatch_cli, capsys):
    status = spendwatch_cli(["alert", "test"])

    captured = capsys.readouterr()
    # Whatever listens on 9093 here (usually nothing: exit 1), the alert went to the default address.
    assert "http://127.0.0.1:9093/api/v2/alerts" in captured.out + captured.err
    assert status in (0, 1)
