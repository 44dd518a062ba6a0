"""Specification of ``spendwatch status`` and ``spendwatch report``, run as a user runs them: in a subprocess,
against a real SQLite ledger named by ``SPENDWATCH_LEDGER``.

Calls are written at the real current time here (a subprocess has no injectable clock); the calendar arithmetic
itself is specified with an injected ``now`` in test_budgets.py and test_report.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendwatch.exporter import LedgerEntry, load_settings, open_ledger
from spendwatch.exporter.budgets import Budgets
from spendwatch.instrumentation.records import UsageRecord
from tests.servers import free_port, http_get, start_process

_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
# The installed console script when there is one, else the module itself (same main()).
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]
_ids = itertools.count()
CONFIG = """
[budgets.global]
daily_usd = 10
monthly_usd = 200

[budgets.metabolomics]
category = "metabolite_identification"
daily_usd = 2
"""


@pytest.fixture
def environment(tmp_path):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ |= {"SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"), "XDG_STATE_HOME": str(tmp_path / "state")}
    return environ


@pytest.fixture
def configured(environment, tmp_path):
    (tmp_path / "spendwatch.toml").write_text(CONFIG)
    return environment | {"SPENDWATCH_CONFIG": str(tmp_path / "spendwatch.toml")}


def spendwatch(environ: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SPENDWATCH, *args], capture_output=True, text=True, env=environ, timeout=60)


def write_calls(environ: dict, *calls: tuple[float, float, dict]) -> None:
    """Calls of (unix time, USD, UsageRecord fields) into the ledger the environment names."""
    ledger = open_ledger(load_settings(environ=environ))
    entries = []
    for when, cost, fields in calls:
        record = UsageRecord("openai", "chat", fields.pop("model", "gpt-4o-mini"), cost_usd=cost, start_time=when)
        for name, value in fields.items():
            setattr(record, name, value)
        entries.append(LedgerEntry(f"cli-test-{next(_ids)}", record))
    ledger.ingest(entries)
    ledger.close()


# --- spendwatch status ------------------------------------------------------------------------------------------------


def test_status_shows_every_budget_with_its_spend_and_level(configured):
    write_calls(configured, (time.time(), 8.0, {}), (time.time(), 1.5, {"category": "metabolite_identification"}))
    result = spendwatch(configured, "status")
    assert result.returncode == 0, result.stderr
    table, guard = result.stdout.split("\n\n")
    header, _, *lines = table.splitlines()
    assert guard.strip() == "guard: enforce=off; decisions so far: none"
    assert header.split() == [
        "budget",
        "period",
        "scope",
        "limit_usd",
        "limit_from",
        "spent_usd",
        "remaining_usd",
        "used",
        "level",
        "period_end",
    ]
    expected = ["global", "day", "all", "calls", "10.000000", "config", "9.500000", "0.500000", "95.0%"]
    assert lines[0].split()[:9] == expected
    assert lines[0].split()[9] == "critical"
    assert [line.split()[:2] for line in lines] == [["global", "day"], ["global", "month"], ["metabolomics", "day"]]
    assert "category=metabolite_identification" in lines[2] and "75.0%" in lines[2] and "warning" in lines[2]


def test_status_json_applies_a_run_time_limit(configured):
    write_calls(configured, (time.time(), 8.0, {}))
    settings = load_settings(environ=configured)
    ledger = open_ledger(settings)
    Budgets(ledger, settings).set_limit("global", "day", 4.0, reason="test")
    ledger.close()
    result = spendwatch(configured, "status", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["timezone"] == "UTC"
    day = document["budgets"][0]
    assert (day["name"], day["period"], day["limit_usd"], day["spent_usd"]) == ("global", "day", 4.0, 8.0)
    assert (day["remaining_usd"], day["used_ratio"], day["level"]) == (-4.0, 2.0, "exceeded")
    assert day["period_end"].endswith("T00:00:00+00:00")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "No budgets are configured, and no app recorded any in this ledger. Set SPENDWATCH_DAILY_BUDGET_USD"),
        (["--json"], '"budgets": []'),
    ],
    ids=["table", "json"],
)
def test_status_without_budgets_says_so_and_exits_0(environment, extra, expected):
    result = spendwatch(environment, "status", *extra)
    assert (result.returncode, result.stderr) == (0, "")
    assert expected in result.stdout


# --- spendwatch report ------------------------------------------------------------------------------------------------


def test_report_defaults_to_the_last_7_days_by_day(environment):
    now = time.time()
    write_calls(environment, (now, 1.0, {}), (now - 6 * 86400, 2.0, {}), (now - 7 * 86400, 4.0, {}))
    result = spendwatch(environment, "report")
    assert result.returncode == 0, result.stderr
    today = datetime.now(ZoneInfo("UTC")).date()
    assert f"spend from {today - timedelta(days=6)} to {today} (both included), by day" in result.stdout
    assert [line.split()[:2] for line in result.stdout.splitlines()[4:]] == [
        [str(today - timedelta(days=6)), "2.000000"],
        [str(today), "1.000000"],
        ["total", "3.000000"],
    ]


def test_report_by_model_as_csv_includes_until(environment):
    write_calls(
        environment,
        (1743508800.0, 1.0, {}),  # 2025-04-01 12:00 UTC
        (1743595200.0, 2.0, {"model": "gpt-4o", "input_tokens": 10, "estimated": True}),  # 04-02
        (1743681600.0, 4.0, {}),  # 04-03, after --until
    )
    result = spendwatch(
        environment, "report", *["--since", "2025-04-01", "--until", "2025-04-02", "--by", "model", "--format", "csv"]
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["model"], row["cost_usd"], row["input_tokens"], row["estimated"]) for row in rows] == [
        ("gpt-4o", "2.0", "10", "1"),
        ("gpt-4o-mini", "1.0", "0", "0"),
    ]


def test_report_json_with_a_trend(environment):
    now = time.time()
    write_calls(environment, *((now - days * 86400, float(8 - days), {}) for days in range(1, 8)))
    result = spendwatch(environment, "report", "--format", "json", "--trend", "--days", "7")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["by"] == "day" and len(document["rows"]) == 6  # the default report: 6 days ago to today
    assert document["trend"]["daily_cost_usd"] == [1, 2, 3, 4, 5, 6, 7]
    assert document["trend"]["direction"] == "rising"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--since", "2025-13-01"], "'2025-13-01' is not a date written as YYYY-MM-DD", id="bad date"),
        pytest.param(["--until", "yesterday"], "'yesterday' is not a date", id="a word"),
        pytest.param(["--since", "2025-04-02", "--until", "2025-04-01"], "--since 2025-04-02 is after", id="reversed"),
        pytest.param(["--days", "3"], "--days sets the trend's window; give it with --trend", id="days alone"),
        pytest.param(["--trend", "--days", "0"], "'0' is not a whole number of days", id="zero days"),
        pytest.param(["--trend", "--format", "csv"], "--trend does not fit in CSV", id="trend in csv"),
    ],
)
def test_report_usage_errors_exit_2_with_a_clear_message(environment, args, message):
    result = spendwatch(environment, "report", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_report_by_stage_breaks_lightrag_spend_down(configured):
    stage = "spendwatch.lightrag.stage"
    write_calls(
        configured,
        (time.time(), 0.5, {"attributes": {stage: "extraction", "spendwatch.lightrag.doc_id": "doc-1"}}),
        (time.time(), 0.25, {"attributes": {stage: "answer"}}),
        (time.time(), 0.25, {"attributes": {stage: "extraction", "spendwatch.lightrag.doc_id": "doc-2"}}),
    )

    result = spendwatch(configured, "report", "--by", "stage", "--format", "json")

    assert result.returncode == 0, result.stderr
    rows = {row["stage"]: row["cost_usd"] for row in json.loads(result.stdout)["rows"]}
    assert rows == {"extraction": 0.75, "answer": 0.25}


# --- a reader that goes away ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["report"], ["report", "--format", "json"]], ids=" ".join)
def test_a_reader_that_stops_reading_ends_the_command_quietly_with_141(configured, command):
    write_calls(configured, (time.time(), 1.0, {}))
    # The read end closes before the command starts writing, as `spendwatch status | head -0` does.
    process = subprocess.Popen(
        [*SPENDWATCH, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=configured, text=True
    )
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=60)

    assert process.returncode == 141
    assert stderr == ""


# --- the configuration an app ran with, known from the ledger --------------------------------------------------------


def run_app(environ: dict, **settings: str) -> None:
    """Start and end an instrumented app (``spendwatch.configure()``) with these SPENDWATCH_* settings."""
    app_environ = environ | {"SPENDWATCH_METRICS_ADDRESS": "off"} | settings
    code = "import spendwatch; spendwatch.configure()"
    finished = subprocess.run(
        [sys.executable, "-c", code], env=app_environ, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr


def test_status_shows_the_budgets_an_app_ran_with_without_its_environment(environment):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")
    write_calls(environment, (time.time(), 2.5, {}))

    result = spendwatch(environment, "status")

    assert result.returncode == 0, result.stderr
    table, origins, _ = result.stdout.split("\n\n")
    (line,) = table.splitlines()[2:]
    assert line.split()[:7] == ["global", "day", "all", "calls", "10.000000", "config", "2.500000"]
    assert origins.startswith("global: configured as recorded at app start-up ") and "pid " in origins


def test_the_commands_own_budget_wins_over_the_one_the_app_recorded(environment):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10", SPENDWATCH_MONTHLY_BUDGET_USD="200")

    result = spendwatch(environment | {"SPENDWATCH_DAILY_BUDGET_USD": "3"}, "status", "--json")

    (budget,) = json.loads(result.stdout)["budgets"]
    assert (budget["name"], budget["period"], budget["limit_usd"]) == ("global", "day", 3.0)
    assert budget["configured_in"] == "this environment or SPENDWATCH_CONFIG"


def test_report_counts_days_in_the_time_zone_the_app_ran_with(environment):
    # Whatever the hour, one of these two zones is on another calendar day than UTC, the command's default.
    utc_today = datetime.now(ZoneInfo("UTC")).date()
    zone = next(name for name in ("Etc/GMT-14", "Etc/GMT+12") if datetime.now(ZoneInfo(name)).date() != utc_today)
    run_app(environment, SPENDWATCH_TIMEZONE=zone)

    result = spendwatch(environment, "report", "--format", "json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["until"] == datetime.now(ZoneInfo(zone)).date().isoformat()


def test_serve_exposes_the_budgets_the_app_ran_with_and_where_their_limits_come_from(environment, tmp_path):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")
    url = f"http://127.0.0.1:{free_port()}/metrics"
    argv = [*SPENDWATCH, "serve", "--address", url.removeprefix("http://").removesuffix("/metrics")]
    server = start_process(argv, log_path=tmp_path / "serve.log", env=environment)
    try:
        server.wait_ready(lambda: http_get(url)[0] == 200, 60, "spendwatch serve")
        before = scraped(url)
        assert spendwatch(environment, "budget", "set", "global", "day", "75", "--reason", "test").returncode == 0
        after = scraped(url)
    finally:
        server.stop()

    day = {"budget": "global", "period": "day"}
    assert before[("llm_budget_limit_usd", frozenset(day.items()))] == 10.0
    assert before[("spendwatch_budget_limit_source", frozenset((day | {"source": "config"}).items()))] == 1.0
    assert after[("llm_budget_limit_usd", frozenset(day.items()))] == 75.0
    assert after[("spendwatch_budget_limit_source", frozenset((day | {"source": "runtime"}).items()))] == 1.0
    assert ("spendwatch_budget_limit_source", frozenset((day | {"source": "config"}).items())) not in after


def scraped(url: str) -> dict:
    """{(sample name, its labels): value} of one scrape."""
    status, body = http_get(url)
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


# --- spendwatch budget show|set|clear ---------------------------------------------------------------------------------


def test_a_limit_set_at_run_time_wins_until_cleared_and_each_change_is_audited(environment):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")

    changed = spendwatch(environment, "budget", "set", "global", "day", "75", "--reason", "conference week")
    during = json.loads(spendwatch(environment, "status", "--json").stdout)["budgets"][0]
    shown = json.loads(spendwatch(environment, "budget", "show", "--json").stdout)["budgets"][0]
    cleared = spendwatch(environment, "budget", "clear", "global", "day", "--reason", "conference over")
    after = json.loads(spendwatch(environment, "status", "--json").stdout)["budgets"][0]

    assert changed.returncode == 0 and "until `spendwatch budget clear global day`" in changed.stdout
    assert (during["limit_usd"], during["limit_source"], during["configured_limit_usd"]) == (75.0, "runtime", 10.0)
    assert during["run_time_change"]["reason"] == "conference week" and "@" in during["run_time_change"]["by"]
    assert (shown["limit_usd"], shown["limit_from"], shown["configured_usd"]) == (75.0, "runtime", 10.0)
    assert "conference week" in shown["changed"]
    assert cleared.returncode == 0 and "configured limit is in force again" in cleared.stdout
    assert (after["limit_usd"], after["limit_source"], after["run_time_change"]) == (10.0, "config", None)
    ledger = open_ledger(load_settings(environ=environment))
    kinds = [event["kind"] for event in ledger.events() if event["kind"].startswith("budget_limit")]
    ledger.close()
    assert kinds == ["budget_limit_changed", "budget_limit_cleared"]
    assert spendwatch(environment, "audit", "verify").returncode == 0


def test_a_run_time_limit_is_named_under_the_status_table(environment):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")
    spendwatch(environment, "budget", "set", "global", "day", "75", "--reason", "conference week")

    result = spendwatch(environment, "status")

    assert "global/day: the limit $75.000000 was set at run time on " in result.stdout
    assert "('conference week'); it wins over the configured $10.000000" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["nonesuch", "day", "5"], "no budget 'nonesuch' with period 'day' is configured (configured: global/day)"),
        (["global", "month", "5"], "no budget 'global' with period 'month'"),
        (["global", "day", "-5"], "must be a finite, non-negative amount of USD"),
        (["global", "day", "lots"], "must be a finite, non-negative amount of USD"),
    ],
)
def test_budget_set_refuses_what_it_cannot_set_and_records_nothing(environment, arguments, problem):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")

    result = spendwatch(environment, "budget", "set", *arguments, "--reason", "test")

    assert result.returncode == 2 and problem in result.stderr
    ledger = open_ledger(load_settings(environ=environment))
    assert (ledger.budget_limits(), ledger.events("budget_limit_changed")) == ({}, [])
    ledger.close()


def test_budget_set_needs_a_reason(environment):
    result = spendwatch(environment, "budget", "set", "global", "day", "5")

    assert result.returncode == 2 and "--reason" in result.stderr


def test_budget_clear_without_a_run_time_limit_says_so_and_records_nothing(environment):
    run_app(environment, SPENDWATCH_DAILY_BUDGET_USD="10")

    result = spendwatch(environment, "budget", "clear", "global", "day")

    assert result.returncode == 0 and "has no run-time limit" in result.stdout
    ledger = open_ledger(load_settings(environ=environment))
    assert ledger.events("budget_limit_cleared") == []
    ledger.close()


def test_budget_show_lists_a_run_time_limit_no_budget_configures_so_it_can_be_cleared(environment):
    ledger = open_ledger(load_settings(environ=environment))
    ledger.set_budget_limit("retired", "month", 5.0, reason="old")
    ledger.close()

    (row,) = json.loads(spendwatch(environment, "budget", "show", "--json").stdout)["budgets"]
    cleared = spendwatch(environment, "budget", "clear", "retired", "month")

    assert (row["budget"], row["limit_from"], row["configured_usd"]) == ("retired", "runtime", None)
    assert "not configured" in row["configured_in"]
    assert "is cleared" in cleared.stdout


# --- a new ledger's trend, and how no category is spelled -------------------------------------------------------------


def test_report_trend_on_a_new_ledger_says_there_is_not_enough_history(environment):
    write_calls(environment, (time.time(), 0.25, {}))

    text = spendwatch(environment, "report", "--trend")
    document = json.loads(spendwatch(environment, "report", "--trend", "--format", "json").stdout)

    assert text.returncode == 0, text.stderr
    assert "trend: not enough history" in text.stdout and "/day" not in text.stdout
    assert "month to date $0.250000" in text.stdout
    assert (document["trend"]["direction"], document["trend"]["projected_month_usd"]) == ("not enough history", None)


def test_no_category_is_spelled_once_per_format(environment):
    write_calls(environment, (time.time(), 1.0, {}), (time.time(), 2.0, {"category": "review"}))

    table = spendwatch(environment, "report", "--by", "category").stdout.splitlines()
    rows = list(
        csv.DictReader(io.StringIO(spendwatch(environment, "report", "--by", "category", "--format", "csv").stdout))
    )
    document = json.loads(spendwatch(environment, "report", "--by", "category", "--format", "json").stdout)

    assert [line.split()[:2] for line in table[4:6]] == [["review", "2.000000"], ["-", "1.000000"]]
    assert [row["category"] for row in rows] == ["review", ""]
    assert [row["category"] for row in document["rows"]] == ["review", None]
