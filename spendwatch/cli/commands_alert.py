"""``spendwatch alert test``: send a clearly marked test alert to Alertmanager, to check that pages get through.

Wired into :func:`spendwatch.cli.build_parser` by ``add_commands(subcommands)``; follows that module's pattern
(``_run_<name>(args) -> int``). The alert goes to Alertmanager's v2 API (``POST /api/v2/alerts``), so it is routed,
grouped and inhibited like a real one: ``alertname="SpendwatchTestAlert"``, ``test="true"``, the chosen ``severity``
(which picks the receiver) and, with ``--budget``, a ``budget`` label. It resolves by itself a few minutes later.

Exit status: 0 when Alertmanager accepted the alert, 1 when it could not be reached or refused it, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from spendwatch.cli._common import usage

__all__ = ["add_commands", "build_test_alert"]

EXIT_OK = 0
EXIT_FAILED = 1

ALERT_NAME = "SpendwatchTestAlert"
LIFETIME = timedelta(minutes=5)
TIMEOUT_SECONDS = 10.0
_API_PATH = "/api/v2/alerts"
DEFAULT_ALERTMANAGER = "http://127.0.0.1:9093"
_RUNBOOK_URL = "alert_rules/runbook.md#spendwatchtestalert"


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    alert = subcommands.add_parser(
        "alert",
        help="check the alerting path",
        description="Commands for spendwatch's Prometheus alerts and Alertmanager routing.",
    )
    actions = alert.add_subparsers(title="commands", metavar="COMMAND")
    alert.set_defaults(handler=lambda _args: usage(alert))
    test = actions.add_parser(
        "test",
        help="send a test alert to Alertmanager",
        description='Post a test alert (alertname SpendwatchTestAlert, label test="true") to Alertmanager\'s v2 API, '
        "so it is routed like a real page of that severity. It resolves by itself after "
        f"{int(LIFETIME.total_seconds() // 60)} minutes. Exits 1 when Alertmanager cannot be reached or refuses it.",
    )
    test.add_argument(
        "--alertmanager",
        metavar="URL",
        default=DEFAULT_ALERTMANAGER,
        help=f"Alertmanager's URL (default: {DEFAULT_ALERTMANAGER}, where Debian's prometheus-alertmanager listens)",
    )
    test.add_argument("--severity", choices=("warning", "critical"), default="warning", help="default: warning")
    test.add_argument("--budget", metavar="NAME", help="add a budget label, to exercise a budget's routing")
    test.set_defaults(handler=_run_test)


def build_test_alert(severity: str, budget: str | None = None, *, now: datetime | None = None) -> dict:
    """The test alert as Alertmanager's v2 API takes it (one element of the posted list)."""
    now = now or datetime.now(UTC)
    labels = {"alertname": ALERT_NAME, "test": "true", "severity": severity}
    if budget:
        labels["budget"] = budget
    where = f" for budget {budget}" if budget else ""
    return {
        "labels": labels,
        "annotations": {
            "summary": "This is a test alert from spendwatch; no budget is in trouble.",
            "description": f"Sent by `spendwatch alert test` from {socket.gethostname()} at {_iso(now)} to check that "
            f"{severity} pages{where} reach their receivers. No action needed; it resolves by itself.",
            "runbook_url": _RUNBOOK_URL,
        },
        "startsAt": _iso(now),
        "endsAt": _iso(now + LIFETIME),
    }


def _run_test(args: argparse.Namespace) -> int:
    url = _alerts_url(args.alertmanager)
    alert = build_test_alert(args.severity, args.budget)
    request = urllib.request.Request(
        url, data=json.dumps([alert]).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()[:500]
        print(
            f"spendwatch alert test: Alertmanager at {url} refused the alert: HTTP {error.code} {detail}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        print(f"spendwatch alert test: cannot reach Alertmanager at {url}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    if status != 200:
        print(f"spendwatch alert test: Alertmanager at {url} answered HTTP {status}, not 200", file=sys.stderr)
        return EXIT_FAILED
    labels = ", ".join(f'{name}="{value}"' for name, value in alert["labels"].items())
    print(f"sent {{{labels}}} to {url}")
    print(f"summary: {alert['annotations']['summary']}")
    print(f"it resolves by itself at {alert['endsAt']}")
    return EXIT_OK


def _alerts_url(base: str) -> str:
    """``http://am:9093`` (or ``am:9093``, or the API URL itself) → ``http://am:9093/api/v2/alerts``."""
    base = base.strip()
    if "://" not in base:
        base = f"http://{base}"
    base = base.rstrip("/")
    return base if base.endswith(_API_PATH) else base + _API_PATH


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
