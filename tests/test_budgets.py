"""Specification of budget status: spend in each budget's current calendar period, in the configured time zone,
within the budget's scope, against its configured or run-time limit."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import LedgerEntry, load_settings, open_ledger
from spendwatch.exporter.budgets import Budgets, LedgerConfiguration, budget_statuses, run_time_changes
from spendwatch.exporter.settings import BudgetSpec
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
_ids = itertools.count()


def at(text: str, tz: ZoneInfo = UTC) -> float:
    """Unix seconds of a wall-clock time in ``tz``, e.g. ``at("2025-03-30 23:30", BERLIN)``."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def call(when: float, cost: float | None, *, model: str = "gpt-4o-mini", category: str | None = None) -> LedgerEntry:
    record = UsageRecord("openai", "chat", model, cost_usd=cost, start_time=when, category=category)
    return LedgerEntry(f"test-{next(_ids)}", record)


def make(tmp_path, budgets: list[BudgetSpec], tz: str = "UTC", thresholds: str = "0.75,0.9,1.0"):
    """Settings with exactly these budgets, and the real SQLite ledger they name."""
    overrides = {"ledger": str(tmp_path / "ledger.db"), "timezone": tz, "thresholds": thresholds}
    settings = replace(load_settings(overrides, environ={}), budgets=tuple(budgets))
    ledger = open_ledger(settings)
    return settings, ledger


def spent(statuses, name: str, period: str) -> float:
    return next(s.spent_usd for s in statuses if (s.name, s.period) == (name, period))


GLOBAL = [BudgetSpec("global", "day", 10.0), BudgetSpec("global", "month", 100.0)]


# --- calendar periods -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "calls", "now", "expected_day", "expected_month"),
    [
        pytest.param(
            "UTC",
            [("2025-03-01 23:59:59", 1.0), ("2025-03-02 00:00:00", 2.0)],
            "2025-03-02 12:00",
            2.0,
            3.0,
            id="a new day starts at midnight",
        ),
        pytest.param(
            "UTC",
            [("2025-01-31 23:59:59", 1.0), ("2025-02-01 00:00:01", 2.0)],
            "2025-01-31 23:59:59.5",
            1.0,
            1.0,
            id="the last instant of a month",
        ),
        pytest.param(
            "UTC",
            [("2025-01-31 23:59:59", 1.0), ("2025-02-01 00:00:00", 2.0)],
            "2025-02-01 00:00:00",
            2.0,
            2.0,
            id="the first instant of the next month",
        ),
        pytest.param(
            "Europe/Berlin",
            [("2025-03-30 00:30", 1), ("2025-03-30 03:30", 2), ("2025-03-30 23:30", 4), ("2025-03-31 00:10", 8)],
            "2025-03-30 23:59",
            7.0,
            15.0,
            id="the 23-hour day of spring forward in Berlin",
        ),
        pytest.param(
            "Europe/Berlin",
            [("2025-10-26 00:30", 1), ("2025-10-26 02:30", 2), ("2025-10-26 23:30", 4), ("2025-10-27 00:00", 8)],
            "2025-10-26 12:00",
            7.0,
            15.0,
            id="the 25-hour day of fall back in Berlin",
        ),
    ],
)
def test_spend_counts_only_the_current_calendar_period(tmp_path, tz, calls, now, expected_day, expected_month):
    settings, ledger = make(tmp_path, GLOBAL, tz=tz)
    ledger.ingest(call(at(when, ZoneInfo(tz)), cost) for when, cost in calls)
    statuses = budget_statuses(ledger, settings, now=at(now, ZoneInfo(tz)))
    assert spent(statuses, "global", "day") == pytest.approx(expected_day)
    assert spent(statuses, "global", "month") == pytest.approx(expected_month)


@pytest.mark.parametrize(
    ("now", "start", "end", "hours"),
    [
        pytest.param("2025-03-30 12:00", "2025-03-30T00:00:00+01:00", "2025-03-31T00:00:00+02:00", 23, id="spring"),
        pytest.param("2025-10-26 12:00", "2025-10-26T00:00:00+02:00", "2025-10-27T00:00:00+01:00", 25, id="autumn"),
    ],
)
def test_a_day_across_a_dst_change_runs_from_local_midnight_to_local_midnight(tmp_path, now, start, end, hours):
    settings, ledger = make(tmp_path, GLOBAL[:1], tz="Europe/Berlin")
    (status,) = budget_statuses(ledger, settings, now=at(now, BERLIN))
    assert (status.period_start.isoformat(), status.period_end.isoformat()) == (start, end)
    # Subtracting aware datetimes of one zone ignores the offset change, so compare instants.
    assert status.period_end.timestamp() - status.period_start.timestamp() == timedelta(hours=hours).total_seconds()


def test_a_month_ends_at_local_midnight_of_the_first_of_the_next_month(tmp_path):
    settings, ledger = make(tmp_path, GLOBAL[1:], tz="Europe/Berlin")
    (status,) = budget_statuses(ledger, settings, now=at("2024-02-29 23:00", BERLIN))
    assert status.period_start.isoformat() == "2024-02-01T00:00:00+01:00"
    assert status.period_end.isoformat() == "2024-03-01T00:00:00+01:00"


@pytest.mark.parametrize(
    ("tz", "expected_day_spend"),
    [pytest.param("UTC", 0.0, id="in UTC it was yesterday"), pytest.param("Europe/Berlin", 5.0, id="in Berlin today")],
)
def test_the_time_zone_decides_which_day_a_call_counts_in(tmp_path, tz, expected_day_spend):
    settings, ledger = make(tmp_path, GLOBAL, tz=tz)
    ledger.ingest([call(at("2025-06-10 23:30"), 5.0)])  # 01:30 on June 11 in Berlin (CEST)
    statuses = budget_statuses(ledger, settings, now=at("2025-06-11 10:00"))
    assert spent(statuses, "global", "day") == expected_day_spend
    assert spent(statuses, "global", "month") == 5.0


# --- scope ------------------------------------------------------------------------------------------------------------


def test_scoped_budgets_count_only_their_category_or_model(tmp_path):
    budgets = [
        BudgetSpec("global", "day", 100.0),
        BudgetSpec("metabolomics", "day", 10.0, category="metabolite_identification"),
        BudgetSpec("big-model", "day", 10.0, model="gpt-4o"),
        BudgetSpec("big-metabolomics", "day", 10.0, category="metabolite_identification", model="gpt-4o"),
    ]
    settings, ledger = make(tmp_path, budgets)
    noon = at("2025-05-05 12:00")
    ledger.ingest(
        [
            call(noon, 1.0, model="gpt-4o", category="metabolite_identification"),
            call(noon, 2.0, model="gpt-4o-mini", category="metabolite_identification"),
            call(noon, 4.0, model="gpt-4o", category="literature_review"),
            call(noon, 8.0, model="gpt-4o-mini"),
        ]
    )
    statuses = budget_statuses(ledger, settings, now=noon)
    assert {s.name: s.spent_usd for s in statuses} == {
        "global": 15.0,
        "metabolomics": 3.0,
        "big-model": 5.0,
        "big-metabolomics": 1.0,
    }
    both = next(s for s in statuses if s.name == "big-metabolomics")
    assert (both.category, both.model) == ("metabolite_identification", "gpt-4o")


def test_unpriced_calls_add_no_spend(tmp_path):
    settings, ledger = make(tmp_path, GLOBAL[:1])
    noon = at("2025-05-05 12:00")
    ledger.ingest([call(noon, None, model="gpt-99-ultra"), call(noon, 0.25)])
    assert spent(budget_statuses(ledger, settings, now=noon), "global", "day") == 0.25


def test_statuses_are_sorted_by_name_then_day_before_month(tmp_path):
    budgets = [
        BudgetSpec("zeta", "month", 1.0),
        BudgetSpec("alpha", "month", 1.0),
        BudgetSpec("zeta", "day", 1.0),
        BudgetSpec("alpha", "day", 1.0),
    ]
    settings, ledger = make(tmp_path, budgets)
    statuses = budget_statuses(ledger, settings, now=at("2025-05-05 12:00"))
    assert [(s.name, s.period) for s in statuses] == [
        ("alpha", "day"),
        ("alpha", "month"),
        ("zeta", "day"),
        ("zeta", "month"),
    ]


def test_no_configured_budgets_means_no_statuses(tmp_path):
    settings, ledger = make(tmp_path, [])
    assert budget_statuses(ledger, settings, now=at("2025-05-05 12:00")) == []


# --- levels -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "cost", "level", "ratio"),
    [
        pytest.param(10.0, 7.0, None, 0.7, id="below warning"),
        pytest.param(10.0, 7.5, "warning", 0.75, id="at warning"),
        pytest.param(10.0, 9.5, "critical", 0.95, id="critical"),
        pytest.param(10.0, 12.0, "exceeded", 1.2, id="over the limit"),
        pytest.param(0.0, 0.0, None, 0.0, id="a zero limit, nothing spent"),
        pytest.param(0.0, 0.01, "exceeded", math.inf, id="a zero limit, something spent"),
    ],
)
def test_level_is_the_highest_threshold_reached(tmp_path, limit, cost, level, ratio):
    settings, ledger = make(tmp_path, [BudgetSpec("global", "day", limit)])
    noon = at("2025-05-05 12:00")
    ledger.ingest([call(noon, cost)] if cost else [])
    (status,) = budget_statuses(ledger, settings, now=noon)
    assert (status.level, status.used_ratio) == (level, pytest.approx(ratio))
    assert status.thresholds == {"warning": 0.75, "critical": 0.9, "exceeded": 1.0}


# --- run-time limits and the Budgets API ------------------------------------------------------------------------------


@pytest.fixture
def budgets(tmp_path):
    settings, ledger = make(tmp_path, [*GLOBAL, BudgetSpec("metabolomics", "day", 5.0, category="metabolomics")])
    noon = at("2025-05-05 12:00")
    ledger.ingest([call(noon, 4.0)])
    return Budgets(ledger, settings, clock=lambda: noon), ledger, settings


def test_a_run_time_limit_change_is_applied_and_recorded_as_an_event(budgets):
    api, ledger, _ = budgets
    status = api.set_limit("global", "day", 8.0, reason="conference week")
    assert (status.limit_usd, status.remaining_usd, status.level) == (8.0, 4.0, None)
    assert api.get("global", "day").limit_usd == 8.0
    assert api.get("global", "month").limit_usd == 100.0  # the other period keeps its configured limit
    (event,) = ledger.events("budget_limit_changed")
    assert '"reason": "conference week"' in event["detail"] and '"limit_usd": 8.0' in event["detail"]


def test_a_run_time_limit_survives_reopening_the_ledger(budgets):
    api, ledger, settings = budgets
    api.set_limit("global", "day", 4.0)
    ledger.close()
    reopened = open_ledger(settings)
    status = next(iter(budget_statuses(reopened, settings, now=at("2025-05-05 12:00"))))
    assert (status.name, status.period, status.limit_usd, status.level) == ("global", "day", 4.0, "exceeded")


def test_status_lists_every_budget_at_the_clocks_time(budgets):
    api, _, _ = budgets
    assert [(s.name, s.period, s.spent_usd) for s in api.status()] == [
        ("global", "day", 4.0),
        ("global", "month", 4.0),
        ("metabolomics", "day", 0.0),
    ]


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "ten", None, True], ids=repr)
def test_a_limit_must_be_a_finite_non_negative_number(budgets, bad):
    api, ledger, _ = budgets
    with pytest.raises(ValueError, match="must be a finite, non-negative amount of USD"):
        api.set_limit("global", "day", bad)
    assert ledger.events("budget_limit_changed") == []


@pytest.mark.parametrize(("name", "period"), [("nonesuch", "day"), ("metabolomics", "month"), ("global", "week")])
def test_only_configured_budgets_can_be_read_or_changed(budgets, name, period):
    api, ledger, _ = budgets
    with pytest.raises(KeyError, match="configured: global/day, global/month, metabolomics/day"):
        api.get(name, period)
    with pytest.raises(KeyError):
        api.set_limit(name, period, 1.0)
    assert ledger.budget_limits() == {}


# --- which limit is in force, and why ------------------------------------------------------------------------------


def test_a_status_says_whether_its_limit_is_configured_or_set_at_run_time(budgets):
    api, ledger, _ = budgets

    before = api.get("global", "day")
    after = api.set_limit("global", "day", 75.0, reason="conference week", by="alice@ops")

    assert (before.limit_usd, before.limit_source, before.configured_limit_usd) == (10.0, "config", 10.0)
    assert (after.limit_usd, after.limit_source, after.configured_limit_usd) == (75.0, "runtime", 10.0)
    assert run_time_changes(ledger)[("global", "day")] | {"at": 0} == {
        "name": "global",
        "period": "day",
        "limit_usd": 75.0,
        "reason": "conference week",
        "by": "alice@ops",
        "at": 0,
    }


def test_clearing_a_run_time_limit_puts_the_configured_one_back_and_is_recorded(budgets):
    api, ledger, _ = budgets
    api.set_limit("global", "day", 75.0, reason="conference week")

    status = api.clear_limit("global", "day", reason="conference over", by="alice@ops")

    assert (status.limit_usd, status.limit_source) == (10.0, "config")
    assert ledger.budget_limits() == {}
    assert run_time_changes(ledger) == {}
    (event,) = ledger.events("budget_limit_cleared")
    assert '"dropped_limit_usd": 75.0' in event["detail"] and '"reason": "conference over"' in event["detail"]


def test_clearing_when_there_is_no_run_time_limit_records_nothing(budgets):
    api, ledger, _ = budgets

    assert api.clear_limit("global", "day").limit_usd == 10.0
    assert ledger.events("budget_limit_cleared") == []


# --- the configuration apps recorded at start-up ---------------------------------------------------------------------


def started(ledger, budgets: list, **detail) -> None:
    """A ``configuration_started`` event as an app's start-up writes it."""
    ledger.add_event("configuration_started", {"pid": 42, "host": "app-host", "budgets": budgets, **detail})


def test_a_reader_without_budgets_knows_those_the_apps_recorded(tmp_path):
    settings, ledger = make(tmp_path, [])
    started(ledger, [["global", "day", 10.0, None, None], ["genomics", "month", 50.0, "genomics", None]])

    known = LedgerConfiguration(ledger, settings, environ={})

    assert sorted(known.settings().budgets, key=lambda spec: spec.name) == [
        BudgetSpec("genomics", "month", 50.0, category="genomics"),
        BudgetSpec("global", "day", 10.0),
    ]
    assert known.recorded("global") and known.origin("global").endswith("pid 42 on app-host")


def test_each_budget_name_takes_the_latest_start_up_that_configured_it(tmp_path):
    settings, ledger = make(tmp_path, [])
    started(ledger, [["global", "day", 10.0, None, None], ["global", "month", 200.0, None, None]])
    started(ledger, [["team", "day", 3.0, "team", None]])  # another app over the same ledger
    started(ledger, [["global", "day", 20.0, None, None]])  # global restarted with its daily limit only

    budgets = LedgerConfiguration(ledger, settings, environ={}).settings().budgets

    assert sorted(budgets, key=lambda spec: spec.name) == [
        BudgetSpec("global", "day", 20.0),
        BudgetSpec("team", "day", 3.0, category="team"),
    ]


def test_the_readers_own_budget_wins_over_the_recorded_one_of_its_name(tmp_path):
    settings, ledger = make(tmp_path, [BudgetSpec("global", "day", 5.0)])
    started(ledger, [["global", "day", 10.0, None, None], ["global", "month", 200.0, None, None]])

    known = LedgerConfiguration(ledger, settings, environ={})

    assert known.settings().budgets == (BudgetSpec("global", "day", 5.0),)
    assert not known.recorded("global")


def test_a_budget_recorded_after_the_first_read_shows_on_the_next(tmp_path):
    settings, ledger = make(tmp_path, [])
    known = LedgerConfiguration(ledger, settings, environ={})
    assert known.settings().budgets == ()

    started(ledger, [["global", "day", 10.0, None, None]])

    assert known.settings().budgets == (BudgetSpec("global", "day", 10.0),)


def test_the_apps_time_zone_thresholds_and_categories_apply_unless_the_reader_sets_them(tmp_path):
    settings, ledger = make(tmp_path, [])
    started(ledger, [], timezone="Europe/Berlin", thresholds=[0.5, 0.8, 1.0], categories=["genomics"])

    adopted = LedgerConfiguration(ledger, settings, environ={}).settings()
    own = LedgerConfiguration(ledger, settings, environ={"SPENDWATCH_TIMEZONE": "UTC"}).settings()

    assert (adopted.timezone, adopted.thresholds, adopted.categories) == (BERLIN, (0.5, 0.8, 1.0), {"genomics"})
    assert own.timezone == UTC


def test_recorded_budgets_that_do_not_read_as_budgets_are_left_out(tmp_path):
    settings, ledger = make(tmp_path, [])
    rows = [
        ["global", "week", 1.0, None, None],
        ["x", "day", -1, None, None],
        ["y", "day"],
        "z",
        ["ok", "day", 1, "", ""],
    ]
    started(ledger, rows, timezone="Mars/Olympus", thresholds="high")

    merged = LedgerConfiguration(ledger, settings, environ={}).settings()

    assert merged.budgets == (BudgetSpec("ok", "day", 1.0),)
    assert (merged.timezone, merged.thresholds) == (settings.timezone, settings.thresholds)
