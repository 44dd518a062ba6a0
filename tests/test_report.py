"""Specification of spend reports (``until`` included), the recent trend, the month-end projection, and the
table/CSV/JSON formats."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import LedgerEntry, load_settings, open_ledger
from spendwatch.exporter.report import (
    NOT_ENOUGH_HISTORY,
    format_csv,
    format_json,
    format_table,
    format_usd,
    report_columns,
    report_rows,
    total_row,
    trend,
)
from spendwatch.instrumentation.records import UsageRecord

UTC = ZoneInfo("UTC")
_ids = itertools.count()


def at(text: str, tz: ZoneInfo = UTC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def call(when: float, cost: float | None = 1.0, **fields) -> LedgerEntry:
    record = UsageRecord("openai", fields.pop("operation", "chat"), fields.pop("model", "gpt-4o-mini"), **fields)
    record.cost_usd, record.start_time = cost, when
    return LedgerEntry(f"test-{next(_ids)}", record)


@pytest.fixture
def settings(tmp_path):
    return load_settings({"ledger": str(tmp_path / "ledger.db")}, environ={})


@pytest.fixture
def ledger(settings):
    opened = open_ledger(settings)
    yield opened
    opened.close()


def spend_per_day(ledger, first_day: str, costs: list[float]) -> None:
    """One call at noon on each day from ``first_day`` costing the given amount (none for 0)."""
    start = date.fromisoformat(first_day)
    days = [start + timedelta(days=offset) for offset, cost in enumerate(costs)]
    ledger.ingest(call(at(f"{day} 12:00"), cost) for day, cost in zip(days, costs, strict=True) if cost)


# --- report rows ------------------------------------------------------------------------------------------------------


def test_until_is_included_and_the_days_around_the_range_are_not(ledger):
    spend_per_day(ledger, "2025-04-01", [1, 2, 4, 8])
    rows = report_rows(ledger, date(2025, 4, 2), date(2025, 4, 3), by="day")
    assert [(row["day"], row["cost_usd"]) for row in rows] == [("2025-04-02", 2.0), ("2025-04-03", 4.0)]


def test_a_one_day_report_has_since_equal_to_until(ledger):
    spend_per_day(ledger, "2025-04-01", [1, 2])
    assert [row["cost_usd"] for row in report_rows(ledger, date(2025, 4, 2), date(2025, 4, 2))] == [2.0]


def test_a_row_adds_up_tokens_by_type_requests_and_unpriced_and_estimated_calls(ledger):
    noon = at("2025-04-01 12:00")
    ledger.ingest(
        [
            call(noon, 0.5, input_tokens=100, output_tokens=40, cache_read_tokens=60, reasoning_tokens=10),
            call(noon, None, model="gpt-99-ultra", input_tokens=7, output_tokens=3),
            call(noon, 0.25, estimated=True, input_tokens=20, output_tokens=5),
            call(noon, 0.0, outcome="error", error_type="RateLimitError"),
            call(noon, 0.0, outcome="blocked"),
        ]
    )
    (row,) = report_rows(ledger, date(2025, 4, 1), date(2025, 4, 1), by="day")
    assert row == {
        "day": "2025-04-01",
        "cost_usd": 0.75,
        "input_tokens": 127,
        "output_tokens": 48,
        "cache_read_tokens": 60,
        "reasoning_tokens": 10,
        "requests": 5,
        "unpriced": 1,
        "estimated": 1,
    }


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        pytest.param("day", [("2025-04-01", 7.0), ("2025-04-02", 8.0)], id="days in calendar order"),
        pytest.param("model", [("gpt-4o", 12.0), ("gpt-4o-mini", 3.0)], id="models by cost"),
        pytest.param("category", [("review", 8.0), ("metabolites", 5.0), (None, 2.0)], id="no category is None"),
        pytest.param("operation", [("chat", 11.0), ("embeddings", 4.0)], id="operations by cost"),
    ],
)
def test_rows_are_grouped_by_the_chosen_key(ledger, by, expected):
    first, second = at("2025-04-01 12:00"), at("2025-04-02 12:00")
    ledger.ingest(
        [
            call(first, 1.0, category="metabolites"),
            call(first, 2.0),
            call(first, 4.0, model="gpt-4o", category="metabolites", operation="embeddings"),
            call(second, 8.0, model="gpt-4o", category="review"),
        ]
    )
    rows = report_rows(ledger, date(2025, 4, 1), date(2025, 4, 2), by=by)
    assert [(row[by], row["cost_usd"]) for row in rows] == expected
    assert list(rows[0]) == report_columns(by)


def test_an_empty_period_has_no_rows(ledger):
    assert report_rows(ledger, date(2025, 4, 1), date(2025, 4, 30), by="model") == []


@pytest.mark.parametrize(
    ("since", "until", "by", "message"),
    [
        (date(2025, 4, 2), date(2025, 4, 1), "day", "starts on 2025-04-02 after it ends on 2025-04-01"),
        (date(2025, 4, 1), date(2025, 4, 2), "week", "cannot group a report by 'week'"),
    ],
)
def test_a_bad_range_or_grouping_is_a_value_error(ledger, since, until, by, message):
    with pytest.raises(ValueError, match=message):
        report_rows(ledger, since, until, by=by)


def test_the_total_row_adds_up_every_row(ledger):
    spend_per_day(ledger, "2025-04-01", [1, 2, 4])
    rows = report_rows(ledger, date(2025, 4, 1), date(2025, 4, 3))
    total = total_row(rows, "day")
    assert (total["day"], total["cost_usd"], total["requests"], total["input_tokens"]) == ("total", 7.0, 3, 0)


# --- trend ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("costs", "direction"),
    [
        pytest.param([1, 2, 3, 4, 5, 6, 7], "rising", id="rising"),
        pytest.param([7, 6, 5, 4, 3, 2, 1], "falling", id="falling"),
        pytest.param([5, 5, 5, 5, 5, 5, 5], "flat", id="steady"),
        pytest.param([5, 5.2, 4.8, 5.1, 4.9, 5.2, 5.1], "flat", id="noise within the 5 percent band"),
        pytest.param([10, 10.5, 11, 11.5, 12, 12.5, 13], "flat", id="a slope of 0.5/day is 4.3 percent of 11.5"),
        pytest.param([10, 10.7, 11.4, 12.1, 12.8, 13.5, 14.2], "rising", id="a slope of 0.7/day is 5.7 percent"),
        pytest.param([0, 0, 0, 0, 0, 0, 0], "flat", id="nothing spent"),
        pytest.param([0, 0, 0, 0, 0, 0, 9], "rising", id="a first expensive day"),
    ],
)
def test_trend_direction_compares_the_fitted_slope_with_the_average(ledger, settings, costs, direction):
    ledger.ingest([call(at("2025-03-01 12:00"), 1.0)])  # history before the window: its quiet days are real
    spend_per_day(ledger, "2025-04-03", costs)
    result = trend(ledger, settings, days=7, now=at("2025-04-10 09:00"))
    assert (result.first_day, result.last_day) == (date(2025, 4, 3), date(2025, 4, 9))
    assert result.daily_cost_usd == tuple(float(cost) for cost in costs)
    assert result.average_daily_usd == pytest.approx(sum(costs) / 7)
    assert result.direction == direction


def test_the_trend_leaves_out_the_unfinished_day_but_the_projection_counts_it(ledger, settings):
    spend_per_day(ledger, "2025-04-03", [2] * 7)
    ledger.ingest([call(at("2025-04-10 08:00"), 50.0)])
    result = trend(ledger, settings, days=7, now=at("2025-04-10 18:00"))
    assert result.average_daily_usd == 2.0
    assert result.month_to_date_usd == 64.0
    # Whole days after today (11th to 30th) plus the 6 hours left of today.
    assert result.remaining_days == pytest.approx(20.25)
    assert result.projected_month_usd == pytest.approx(64.0 + 2.0 * 20.25)


def test_a_trend_window_reaching_into_last_month_projects_from_this_months_spend(ledger, settings):
    spend_per_day(ledger, "2025-02-26", [3, 3, 3, 3, 3, 3])  # 26 Feb to 3 Mar
    result = trend(ledger, settings, days=3, now=at("2025-03-04 00:00"))
    assert result.daily_cost_usd == (3.0, 3.0, 3.0)
    assert result.month_to_date_usd == 9.0
    assert result.remaining_days == pytest.approx(28.0)  # all of the 4th and the 27 days after it
    assert result.projected_month_usd == pytest.approx(9.0 + 3.0 * 28)


def test_remaining_days_count_a_23_hour_dst_day_by_the_clock(tmp_path):
    settings = load_settings({"ledger": str(tmp_path / "ledger.db"), "timezone": "Europe/Berlin"}, environ={})
    ledger = open_ledger(settings)
    result = trend(ledger, settings, days=1, now=at("2025-03-30 12:00", ZoneInfo("Europe/Berlin")))
    # 12 of the day's 23 hours are left, then March 31.
    assert result.remaining_days == pytest.approx(1 + 12 / 23)


def test_a_one_day_trend_is_flat_and_fewer_days_are_an_error(ledger, settings):
    spend_per_day(ledger, "2025-04-09", [4])
    assert trend(ledger, settings, days=1, now=at("2025-04-10 00:00")).direction == "flat"
    with pytest.raises(ValueError, match="at least one complete day"):
        trend(ledger, settings, days=0, now=at("2025-04-10 00:00"))


def test_a_trend_reads_as_a_sentence_and_as_a_dict(ledger, settings):
    spend_per_day(ledger, "2025-04-03", [1, 2, 3, 4, 5, 6, 7])
    result = trend(ledger, settings, days=7, now=at("2025-04-10 00:00"))
    assert "average $4.000000/day, rising" in str(result)
    assert result.as_dict()["first_day"] == "2025-04-03"
    assert json.loads(format_json(result.as_dict()))["daily_cost_usd"] == [1, 2, 3, 4, 5, 6, 7]


def test_a_ledger_whose_calls_start_today_has_not_enough_history_for_a_trend(ledger, settings):
    ledger.ingest([call(at("2025-04-10 08:00"), 3.0)])

    result = trend(ledger, settings, days=7, now=at("2025-04-10 18:00"))

    assert result.direction == NOT_ENOUGH_HISTORY
    assert (result.average_daily_usd, result.slope_usd_per_day, result.projected_month_usd) == (None, None, None)
    assert result.month_to_date_usd == 3.0 and result.daily_cost_usd == ()
    text = str(result)
    assert "not enough history" in text and "2025-04-10" in text and "a trend needs 2 complete days" in text
    assert "/day" not in text and "month ends" not in text
    document = json.loads(format_json(result.as_dict()))
    assert document["direction"] == "not enough history" and document["projected_month_usd"] is None


def test_one_complete_day_of_history_is_not_enough_for_a_week_long_trend(ledger, settings):
    spend_per_day(ledger, "2025-04-09", [4])

    assert trend(ledger, settings, days=7, now=at("2025-04-10 09:00")).direction == NOT_ENOUGH_HISTORY
    assert trend(ledger, settings, days=1, now=at("2025-04-10 09:00")).average_daily_usd == 4.0


def test_a_trend_averages_only_the_days_the_ledger_has_when_they_are_fewer_than_asked(ledger, settings):
    spend_per_day(ledger, "2025-04-07", [2, 3, 4])

    result = trend(ledger, settings, days=7, now=at("2025-04-10 09:00"))

    assert (result.first_day, result.last_day) == (date(2025, 4, 7), date(2025, 4, 9))
    assert result.daily_cost_usd == (2.0, 3.0, 4.0)
    assert result.average_daily_usd == 3.0 and result.direction == "rising"
    window = "trend over 3 complete days (2025-04-07 to 2025-04-09, all the ledger has of the 7 days asked)"
    assert window in str(result)


def test_quiet_days_after_the_ledgers_first_call_count_as_zero(ledger, settings):
    spend_per_day(ledger, "2025-03-20", [7])

    result = trend(ledger, settings, days=7, now=at("2025-04-10 09:00"))

    assert result.daily_cost_usd == (0.0,) * 7 and result.direction == "flat"
    assert result.projected_month_usd == 0.0


def test_a_trend_shows_small_amounts_without_float_noise(ledger, settings):
    spend_per_day(ledger, "2025-04-08", [0.00013000000000000002, 0.00000002])

    text = str(trend(ledger, settings, days=2, now=at("2025-04-10 09:00")))

    assert "0.00013000000000000002" not in text and "e-0" not in text
    assert "average $0.0000650/day" in text


# --- formats ----------------------------------------------------------------------------------------------------------

ROWS = [
    {"model": "gpt-4o", "cost_usd": 1.5, "input_tokens": 1200, "category": None},
    {"model": "gpt-4o-mini", "cost_usd": 0.0001234567, "input_tokens": 7, "category": "review"},
]
COLUMNS = ["model", "cost_usd", "input_tokens", "category"]


def test_a_table_prints_money_with_six_decimals_and_right_aligns_numbers():
    assert format_table(ROWS, COLUMNS).splitlines() == [
        "model        cost_usd  input_tokens  category",
        "-----------  --------  ------------  --------",
        "gpt-4o       1.500000          1200  -",
        "gpt-4o-mini  0.000123             7  review",
    ]


def test_csv_has_a_header_and_money_to_a_billionth_of_a_dollar():
    parsed = list(csv.DictReader(io.StringIO(format_csv(ROWS, COLUMNS))))
    assert parsed[1] == {"model": "gpt-4o-mini", "cost_usd": "0.000123457", "input_tokens": "7", "category": "review"}
    assert parsed[0]["category"] == ""


def test_json_writes_dates_as_iso_text_and_infinity_as_null():
    document = {"since": date(2025, 4, 1), "ratio": math.inf, "rows": ROWS}
    rows = [ROWS[0], ROWS[1] | {"cost_usd": 0.000123457}]
    assert json.loads(format_json(document)) == {"since": "2025-04-01", "ratio": None, "rows": rows}


def test_table_cells_cannot_carry_terminal_escapes_or_stretch_the_table():
    from spendwatch.exporter.report import format_table

    rows = [{"model": "evil\x1b[2J\nname" + "x" * 500, "cost_usd": 1.0}]

    table = format_table(rows, ["model", "cost_usd"])

    assert "\x1b" not in table and len(table.splitlines()) == 3
    assert max(len(line) for line in table.splitlines()) < 100


def test_table_cells_cannot_carry_c1_controls_or_lone_surrogates():
    from spendwatch.exporter.report import format_table

    table = format_table([{"model": "evil\x9b2Jname\ud800", "cost_usd": 1.0}], ["model", "cost_usd"])

    assert "\x9b" not in table and "\ud800" not in table
    assert "evil?2Jname?" in table


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (1.5, "1.500000"),
        (0.0001234567, "0.000123"),
        (0.00013000000000000002, "0.000130"),
        (0.000015, "0.0000150"),
        (0.00000002, "0.000000020"),  # one embedding token: never 0.000000
        (0.0000000001, "0.000000000"),  # below the billionth of a dollar the machine formats keep
        (0.0, "0.000000"),
        (-4.0, "-4.000000"),
        (-0.00000002, "-0.000000020"),
    ],
)
def test_a_table_shows_money_with_enough_digits_to_tell_a_small_amount_from_zero(amount, shown):
    assert format_usd(amount) == shown


def test_a_table_of_embedding_calls_shows_their_cost():
    table = format_table([{"model": "text-embedding-3-small", "cost_usd": 0.00000004}], ["model", "cost_usd"])

    assert table.splitlines()[-1].split() == ["text-embedding-3-small", "0.000000040"]


NOISY = [{"day": "2025-04-01", "cost_usd": 0.00013000000000000002, "avoided_usd": 0.1 + 0.2, "input_tokens": 3}]


def test_csv_and_json_carry_money_without_float_noise():
    (row,) = csv.DictReader(io.StringIO(format_csv(NOISY, ["day", "cost_usd", "avoided_usd", "input_tokens"])))
    assert (row["cost_usd"], row["avoided_usd"]) == ("0.00013", "0.3")

    text = format_json({"rows": NOISY, "trend": {"daily_cost_usd": [0.1 + 0.2], "remaining_days": 0.1 + 0.2}})
    assert "0.00013000000000000002" not in text and "0.30000000000000004" in text  # remaining_days is no money
    document = json.loads(text)
    assert document["rows"][0]["cost_usd"] == 0.00013 and document["trend"]["daily_cost_usd"] == [0.3]
    assert NOISY[0]["cost_usd"] == 0.00013000000000000002  # the caller's rows keep their raw values
