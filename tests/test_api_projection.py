"""One projection of a period's end: the API's overview, ``spendwatch report --trend`` and the
``LLMBudgetExhaustionPredicted`` alert (evaluated by promtool from the shipped rule files) agree on where a budget's
period ends at a steady burn, and the overview judges the burn over the same windows as the alert's recording rules."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from spendwatch.exporter import LedgerEntry, load_settings
from spendwatch.exporter.api import overview
from spendwatch.exporter.projection import BURN_WINDOWS_S, remaining_days
from spendwatch.exporter.report import trend
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
RULES = Path(__file__).resolve().parent.parent / "alert_rules"
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC).timestamp()  # mid-month, on the hour
CALL_USD = 0.01  # a call every ten minutes: $0.06 an hour, $1.44 a day
PER_DAY = CALL_USD * 6 * 24
STEP_S = 300  # the promtool series' sample interval
HISTORY_S = 26 * 3600  # more than the alert's longest burn window, so its rate() is not cut short


@pytest.fixture
def steady(ledger):
    """Calls at :05, :15 ... :55 of every hour for the 20 days before NOW."""
    first = NOW - 20 * 86400
    entries = []
    for n in range(20 * 24 * 6):
        record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=100, output_tokens=10)
        record.cost_usd, record.start_time = CALL_USD, first + 300 + n * 600
        entries.append(LedgerEntry(f"steady-{n}", record))
    for start in range(0, len(entries), 1000):
        ledger.ingest(entries[start : start + 1000])
    return load_settings({"ledger": ledger.location, "daily_budget_usd": 2, "monthly_budget_usd": 40}, environ={})


def budgets(ledger, settings) -> dict[str, dict]:
    return {budget["period"]: budget for budget in overview(ledger, settings, now=NOW)["budgets"]}


def test_the_overview_and_report_trend_project_the_same_month_end(ledger, steady):
    month = budgets(ledger, steady)["month"]
    recent = trend(ledger, steady, days=7, now=NOW)

    expected = 14.5 * PER_DAY + PER_DAY * remaining_days(NOW, UTC, "month")
    assert recent.projected_month_usd == pytest.approx(expected, rel=1e-9)
    assert month["projected_period_end_usd"] == pytest.approx(recent.projected_month_usd, rel=1e-9)
    assert month["burn_rate_usd_per_day"] == pytest.approx(recent.average_daily_usd, rel=1e-9)


def test_the_overview_judges_a_daily_budget_on_its_last_hour(ledger, steady):
    day = budgets(ledger, steady)["day"]
    assert day["burn_window_seconds"] == 3600
    assert day["projected_period_end_usd"] == pytest.approx(0.5 * PER_DAY + 0.5 * PER_DAY, rel=1e-9)


@pytest.mark.parametrize("period", ["day", "month"])
@pytest.mark.parametrize(("limit_factor", "predicted"), [(0.995, True), (1.005, False)])
def test_the_exhaustion_alert_fires_exactly_when_the_overviews_projection_passes_the_limit(
    ledger, steady, promtool_binary, tmp_path, period, limit_factor, predicted
):
    budget = budgets(ledger, steady)[period]
    limit = budget["projected_period_end_usd"] * limit_factor
    assert budget["projected_period_end_usd"] > limit if predicted else budget["projected_period_end_usd"] < limit

    fires = _alert_expression_fires(promtool_binary, tmp_path, budget, limit)
    assert fires is predicted


def _alert_expression_fires(promtool: str, directory: Path, budget: dict, limit: float) -> bool:
    """Whether LLMBudgetExhaustionPredicted's expression, from the shipped rule files, selects the budget when its
    gauges are what spendwatch serves at NOW (promtool's clock: HISTORY_S) and it burns at the overview's rate."""
    labels = f'budget="{budget["name"]}",period="{budget["period"]}",instance="a:9464",job="spendwatch"'
    per_second = budget["burn_rate_usd_per_day"] / 86400
    steps = HISTORY_S // STEP_S
    start = budget["spent_usd"] - per_second * HISTORY_S
    seconds_left = datetime.fromisoformat(budget["period_end"].replace("Z", "+00:00")).timestamp() - NOW
    test = {
        "rule_files": [str(RULES / "spendwatch.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": f"{STEP_S}s",
                "input_series": [
                    {
                        "series": f"llm_budget_spent_usd{{{labels}}}",
                        "values": f"{start!r}+{per_second * STEP_S!r}x{steps}",
                    },
                    {"series": f"llm_budget_limit_usd{{{labels}}}", "values": f"{limit!r}x{steps}"},
                    {
                        "series": f"llm_budget_period_end_timestamp_seconds{{{labels}}}",
                        "values": f"{HISTORY_S + seconds_left!r}x{steps}",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": f"count({_exhaustion_expression()}) or vector(0)",
                        "eval_time": f"{HISTORY_S}s",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                ],
            }
        ],
    }
    path = directory / "projection.test.yml"
    path.write_text(yaml.safe_dump(test))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return True
    assert "exp: " in done.stdout + done.stderr, done.stdout + done.stderr  # a failed expectation, not a bad file
    return False


def _exhaustion_expression() -> str:
    groups = yaml.safe_load((RULES / "spendwatch.alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    return next(rule["expr"] for rule in rules if rule.get("alert") == "LLMBudgetExhaustionPredicted")


def test_the_overviews_burn_windows_are_the_alerts_recording_rule_windows():
    groups = yaml.safe_load((RULES / "spendwatch.rules.yml").read_text())["groups"]
    windows = {}
    for rule in (rule for group in groups for rule in group["rules"]):
        match = re.fullmatch(r"budget_period:llm_budget_spent_usd:rate(\d+)([hd])", rule.get("record", ""))
        if match:
            period = re.search(r'period="(\w+)"', rule["expr"]).group(1)
            windows[period] = int(match.group(1)) * {"h": 3600, "d": 86400}[match.group(2)]
    assert windows == BURN_WINDOWS_S
