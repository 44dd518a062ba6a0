"""The shipped alerting files pass Prometheus's and Alertmanager's own checkers, keep the contracts in DESIGN.md, and
are what their Python sources generate (``python -m alert_rules.generate``).

``promtool test rules`` runs the unit tests in ``alert_rules/tests/`` (each alert firing after its ``for:``, silent
just before and below its threshold, with exact labels and annotations; each recording rule's output).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alert_rules.alerts import MONEY, RUNBOOK_BASE
from alert_rules.alerts import render as render_alerts
from alert_rules.generate import RENDERERS
from alert_rules.rulefile import scalar
from dashboards import promql

ALERT_RULES = Path(__file__).resolve().parent.parent / "alert_rules"
RULE_FILES = sorted(ALERT_RULES.glob("*.rules.yml")) + sorted(ALERT_RULES.glob("*.alerts.yml"))
TEST_FILES = sorted((ALERT_RULES / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ALERT_RULES / "alertmanager.yml"
RUNBOOK = ALERT_RULES / "runbook.md"

# DESIGN.md's alert names, and the severities each may carry.
ALERTS = {
    "LLMBudgetUsageHigh": {"warning", "critical"},
    "LLMBudgetExhausted": {"critical"},
    "LLMBudgetExhaustionPredicted": {"warning"},
    "LLMCostSpike": {"warning"},
    "LLMUnpricedRequests": {"warning"},
    "LLMGuardBlocking": {"warning"},
    "SpendwatchLedgerErrors": {"warning"},
    "SpendwatchRecordsDropped": {"critical"},
    "SpendwatchExporterDown": {"critical"},
}
BUDGET_ALERTS = ("LLMBudgetUsageHigh", "LLMBudgetExhausted", "LLMBudgetExhaustionPredicted")
GENERATE = "python -m alert_rules.generate"
# Recording rules over the ledger's counters: dashboards/promql.py's increase(), deduped across targets and counting
# a label set from its first call, written out.
COUNTER_RULES = {
    ":llm_cost_usd:rate30m": f"sum({promql.increase('llm_cost_usd_total', promql.COST_LABELS, '30m')}) / 1800",
    "provider_model:llm_unpriced_requests:increase1h": promql.increase(
        "llm_unpriced_requests_total", ("provider", "model"), "1h"
    ),
    "budget_action:llm_guard_decisions:increase15m": promql.increase(
        "llm_guard_decisions_total", ("budget", "action"), "15m"
    ),
}
# SPENDWATCH_THRESHOLDS' defaults, as ratios or percentages: they belong in llm_budget_threshold_ratio, not in rules.
THRESHOLD_LITERALS = {0.75, 0.9, 1.0, 75.0, 90.0, 100.0}


def _rules(kind: str) -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ALERT_RULES)


def _numbers_in(expr: str) -> list[float]:
    """Numeric literals of a PromQL expression, leaving out label matchers, ranges, offsets and names."""
    stripped = re.sub(r'\{[^}]*\}|\[[^\]]*\]|offset\s+\w+|"[^"]*"', " ", expr)
    stripped = re.sub(r"[A-Za-z_:][A-Za-z0-9_:]*", " ", stripped)
    return [float(token) for token in re.findall(r"\d+(?:\.\d*)?(?:e[+-]?\d+)?", stripped)]


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_committed_rule_file_is_what_its_source_generates(name):
    committed = (ALERT_RULES / name).read_text(encoding="utf-8")

    assert committed == RENDERERS[name](), f"alert_rules/{name} drifted from its source: run {GENERATE}"


def test_a_runbook_base_with_yaml_special_characters_stays_one_value():
    base = "https://wiki.example.org/a b: c #d"
    shipped, linked = (yaml.safe_load(text) for text in (render_alerts(), render_alerts(base)))

    for rule in (rule for group in linked["groups"] for rule in group["rules"]):
        assert rule["annotations"].pop("runbook_url") == f"{base}#{rule['alert'].lower()}"
    for rule in (rule for group in shipped["groups"] for rule in group["rules"]):
        assert rule["annotations"].pop("runbook_url") == f"{RUNBOOK_BASE}#{rule['alert'].lower()}"
    assert linked == shipped


@pytest.mark.parametrize("value", ["5m", "a: b", "a #b", "#a", "true", "Null", "5", "1.0", "-a", ":a", "a:", "{a}", ""])
def test_a_one_line_value_reads_back_as_written(value):
    assert yaml.safe_load(f"key: {scalar(value)}") == {"key": value}


def test_promtool_accepts_the_rule_files(promtool_binary):
    done = _run([promtool_binary, "check", "rules", *map(str, RULE_FILES)])

    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass(promtool_binary):
    done = _run([promtool_binary, "test", "rules", *map(str, TEST_FILES)])

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TEST_FILES), done.stdout


def test_amtool_accepts_the_alertmanager_config(amtool_binary):
    done = _run([amtool_binary, "check-config", str(ALERTMANAGER_CONFIG)])

    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "budget=global", "period=day"], "spendwatch-critical"),
        (["severity=warning", "budget=global", "period=day"], "spendwatch-warning"),
        (["severity=warning", "alertname=LLMCostSpike"], "spendwatch-warning"),
    ],
)
def test_alertmanager_routes_by_severity(amtool_binary, labels, receiver):
    argv = [amtool_binary, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
    done = _run([*argv, f"--verify.receivers={receiver}", *labels])

    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_config_uses_matchers_not_the_deprecated_match():
    text = ALERTMANAGER_CONFIG.read_text()

    assert not re.search(r"^\s*-?\s*(source_|target_)?match(_re)?:", text, re.MULTILINE)


def test_every_alert_in_design_md_exists_with_its_severities():
    found: dict[str, set[str]] = {}
    for rule in _rules("alert"):
        found.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])

    assert found == ALERTS


def test_no_alert_compares_with_a_threshold_literal():
    for rule in _rules("alert"):
        numbers = set(_numbers_in(rule["expr"]))
        assert not numbers & THRESHOLD_LITERALS, f"{rule['alert']}: threshold literal in {rule['expr']!r}"
        if rule["alert"] in BUDGET_ALERTS:
            assert numbers <= {0.0}, f"{rule['alert']}: literal in {rule['expr']!r}"


def test_usage_alerts_join_the_threshold_of_their_level():
    levels = {
        (rule["alert"], rule["labels"]["severity"]): re.findall(r'level="(\w+)"', rule["expr"])
        for rule in _rules("alert")
        if rule["alert"] in ("LLMBudgetUsageHigh", "LLMBudgetExhausted")
    }

    assert levels == {
        ("LLMBudgetUsageHigh", "warning"): ["warning"],
        ("LLMBudgetUsageHigh", "critical"): ["critical"],
        ("LLMBudgetExhausted", "critical"): ["exceeded"],
    }
    for rule in _rules("alert"):
        if "threshold_ratio" in rule["expr"]:
            assert re.search(r"on \(budget, period\) group_left", rule["expr"]), rule["expr"]


def test_every_alert_has_a_summary_description_and_runbook_section():
    anchors = {_anchor(line) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for rule in _rules("alert"):
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"], f"{rule['alert']}: summary must be static"
        assert "{{" in annotations["description"], f"{rule['alert']}: description must be templated"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "alert_rules/runbook.md"
        assert anchor == _anchor(f"## {rule['alert']}") and anchor in anchors


def test_every_dollar_amount_is_printed_by_the_one_money_template():
    for rule in _rules("alert"):
        description = rule["annotations"]["description"]
        amounts = re.findall(r"\$\{\{ with .*?\}\}(\{\{ \$usd := .*?\{\{ end \}\})\{\{ end \}\}", description)
        assert description.count("$usd :=") == len(amounts), f"{rule['alert']}: {description}"
        assert all(amount == MONEY for amount in amounts), f"{rule['alert']}: {amounts}"


def test_counter_rules_are_the_dashboards_increase_written_out():
    recorded = {rule["record"]: " ".join(rule["expr"].split()) for rule in _rules("record")}

    for record, expected in COUNTER_RULES.items():
        assert recorded[record] == " ".join(expected.split()), f"{record} drifted from dashboards/promql.py"


def test_no_rule_takes_rate_or_increase_of_a_ledger_counter_directly():
    # increase() and rate() never count what a label set holds at its first sample: its first calls.
    for rule in _rules("record") + _rules("alert"):
        assert not re.search(r"\b(rate|increase)\(llm_\w+_total\b", rule["expr"]), rule["expr"]


def test_for_durations_are_minutes_not_seconds():
    for rule in _rules("alert"):
        assert re.fullmatch(r"\d+[mh]", rule["for"]), f"{rule['alert']}: for: {rule['for']}"


def test_every_alert_and_recording_rule_has_a_unit_test():
    tested_alerts: set[str] = set()
    tested_exprs: set[str] = set()
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            tested_alerts |= {case["alertname"] for case in group.get("alert_rule_test", [])}
            tested_exprs |= {case["expr"].strip() for case in group.get("promql_expr_test", [])}

    assert tested_alerts == set(ALERTS)
    for rule in _rules("record"):
        assert rule["record"] in tested_exprs, f"no promql_expr_test for {rule['record']}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
