"""FOCUS 1.2 export checked column by column against the specification.

The schema table below is written from the FOCUS 1.2 specification (https://focus.finops.org/focus-specification/v1-2/,
the columns' "Content constraints": feature level, allows nulls, data type, allowed values), not from spendwatch's
code: every Mandatory column must be present in every row with its type, the Recommended and Conditional columns
spendwatch writes must have theirs, and custom columns must carry the ``x_`` prefix."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger
from spendwatch.exporter.focus import focus_rows, format_focus_csv
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.report import report_rows, total_row
from tests.api_history import generated_history, in_range, ingest_all

# column: (feature level, data type, allows nulls, allowed values or None), from the specification.
FOCUS_1_2 = {
    "BilledCost": ("Mandatory", "Decimal", False, None),
    "BillingAccountId": ("Mandatory", "String", False, None),
    "BillingAccountName": ("Mandatory", "String", True, None),
    "BillingCurrency": ("Mandatory", "Currency", False, None),
    "BillingPeriodEnd": ("Mandatory", "DateTime", False, None),
    "BillingPeriodStart": ("Mandatory", "DateTime", False, None),
    "ChargeCategory": ("Mandatory", "String", False, {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}),
    "ChargeClass": ("Mandatory", "String", True, {"Correction"}),
    "ChargeDescription": ("Mandatory", "String", True, None),
    "ChargePeriodEnd": ("Mandatory", "DateTime", False, None),
    "ChargePeriodStart": ("Mandatory", "DateTime", False, None),
    "ContractedCost": ("Mandatory", "Decimal", False, None),
    "EffectiveCost": ("Mandatory", "Decimal", False, None),
    "InvoiceIssuerName": ("Mandatory", "String", False, None),
    "ListCost": ("Mandatory", "Decimal", False, None),
    "PricingQuantity": ("Mandatory", "Decimal", True, None),
    "PricingUnit": ("Mandatory", "String", True, None),
    "ProviderName": ("Mandatory", "String", False, None),
    "PublisherName": ("Mandatory", "String", False, None),
    "ServiceCategory": (
        "Mandatory",
        "String",
        False,
        {
            "AI and Machine Learning",
            "Analytics",
            "Business Applications",
            "Compute",
            "Databases",
            "Developer Tools",
            "Multicloud",
            "Identity",
            "Integration",
            "Internet of Things",
            "Management and Governance",
            "Media",
            "Migration",
            "Mobile",
            "Networking",
            "Security",
            "Storage",
            "Web",
            "Other",
        },
    ),
    "ServiceName": ("Mandatory", "String", False, None),
    "ChargeFrequency": ("Recommended", "String", False, {"One-Time", "Recurring", "Usage-Based"}),
    "ServiceSubcategory": ("Recommended", "String", False, None),
    "ConsumedQuantity": ("Conditional", "Decimal", True, None),
    "ConsumedUnit": ("Conditional", "String", True, None),
    "PricingCategory": ("Conditional", "String", True, {"Standard", "Dynamic", "Committed", "Other"}),
    "SkuId": ("Conditional", "String", True, None),
    "Tags": ("Conditional", "KeyValue", True, None),
}
MANDATORY = {name for name, (level, *_) in FOCUS_1_2.items() if level == "Mandatory"}
# Date/Time Format: ISO 8601 in UTC, e.g. 2024-01-01T00:00:00Z.
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# Numeric Format: a plain decimal (spendwatch never writes an exponent, which some readers refuse).
DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
DAYS = 70
UTC_ZONE = ZoneInfo("UTC")


@pytest.fixture
def history(ledger):
    entries = generated_history(time.time() - 60, DAYS)
    ingest_all(ledger, entries)
    return entries


@pytest.fixture
def exported(ledger, history) -> tuple[list[dict], date, date]:
    until = datetime.now(UTC).date()
    since = until - timedelta(days=40)
    return list(csv.DictReader(io.StringIO(format_focus_csv(focus_rows(ledger, UTC_ZONE, since, until))))), since, until


def value_problem(column: str, text: str) -> str | None:
    """Why ``text`` is not a valid value of ``column`` per the table, or None."""
    _, kind, nullable, allowed = FOCUS_1_2[column]
    if text == "":
        return None if nullable else "is null"
    if allowed is not None and text not in allowed:
        return f"{text!r} is not an allowed value"
    if kind == "Decimal":
        try:
            Decimal(text)
        except InvalidOperation:
            return f"{text!r} is not a decimal"
        return None if DECIMAL.match(text) else f"{text!r} is not in numeric format"
    if kind == "DateTime":
        return None if DATE_TIME.match(text) else f"{text!r} is not an ISO 8601 UTC date/time"
    if kind == "Currency":
        return None if re.fullmatch(r"[A-Z]{3}", text) else f"{text!r} is not an ISO 4217 code"
    if kind == "KeyValue":
        parsed = json.loads(text)
        return None if isinstance(parsed, dict) else f"{text!r} is not a JSON object"
    return None


def test_every_mandatory_column_is_present(exported):
    rows, _, _ = exported
    assert rows and set(rows[0]) >= MANDATORY


def test_every_column_is_a_spec_column_or_a_custom_x_column(exported):
    rows, _, _ = exported
    assert all(column in FOCUS_1_2 or column.startswith("x_") for column in rows[0])


def test_every_value_has_its_columns_type_nullability_and_allowed_values(exported):
    rows, _, _ = exported
    problems = [
        f"row {number} {column}: {problem}"
        for number, row in enumerate(rows)
        for column in FOCUS_1_2
        if column in row and (problem := value_problem(column, row[column]))
    ]
    assert not problems, problems[:5]


def test_usage_rows_have_a_pricing_quantity_and_unit_and_a_consumed_quantity_and_unit(exported):
    # PricingQuantity MUST NOT be null for Usage; PricingUnit MUST NOT be null when PricingQuantity is not null.
    rows, _, _ = exported
    usage = [row for row in rows if row["ChargeCategory"] == "Usage"]
    assert usage and all(row["PricingQuantity"] and row["PricingUnit"] for row in usage)
    assert all(row["ConsumedQuantity"] and row["ConsumedUnit"] for row in usage)


def test_each_charge_period_is_one_day_inside_its_billing_month(exported):
    rows, since, until = exported
    for row in rows:
        start, end = (
            datetime.fromisoformat(row[c].replace("Z", "+00:00")) for c in ("ChargePeriodStart", "ChargePeriodEnd")
        )
        first, last = (
            datetime.fromisoformat(row[c].replace("Z", "+00:00")) for c in ("BillingPeriodStart", "BillingPeriodEnd")
        )
        assert end - start == timedelta(days=1) and first <= start and end <= last
        assert first.day == 1 and last.day == 1 and since <= start.date() <= until


def test_the_costs_add_up_to_the_reports_spend_and_the_quantities_to_its_tokens(ledger, exported):
    rows, since, until = exported
    total = total_row(report_rows(ledger, since, until, by="day"), "day")
    assert sum(Decimal(row["BilledCost"]) for row in rows) == pytest.approx(
        Decimal(str(total["cost_usd"])), abs=Decimal("1e-7")
    )
    assert sum(int(row["ConsumedQuantity"]) for row in rows) == total["input_tokens"] + total["output_tokens"]
    assert all(row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"] for row in rows)


def test_a_row_is_one_day_of_one_model_operation_and_category_with_its_sku_and_tags(history, exported):
    rows, _, _ = exported
    row = max(rows, key=lambda row: Decimal(row["BilledCost"]))
    start = datetime.fromisoformat(row["ChargePeriodStart"].replace("Z", "+00:00")).timestamp()
    tags = json.loads(row["Tags"])
    model = row["SkuId"].removesuffix("/tokens")
    calls = [
        r
        for r in in_range(history, start, start + 86400)
        if r.request_model == model
        and r.operation == tags["operation"]
        and r.category == tags.get("category")
        and r.outcome != "blocked"
    ]
    assert row["SkuId"] == f"{model}/tokens" and row["ConsumedUnit"] == row["PricingUnit"] == "Tokens"
    assert int(row["x_Requests"]) == len(calls)
    assert Decimal(row["BilledCost"]) == pytest.approx(
        Decimal(str(sum(r.cost_usd or 0 for r in calls))), abs=Decimal("1e-9")
    )
    assert row["ServiceCategory"] == "AI and Machine Learning" and row["BillingCurrency"] == "USD"


def test_unpriced_calls_are_counted_and_named_never_priced_at_zero(exported):
    rows, _, _ = exported
    unpriced = [row for row in rows if row["SkuId"] == "claude-unknown-model/tokens"]
    assert unpriced and all(int(row["x_UnpricedCalls"]) == int(row["x_Requests"]) > 0 for row in unpriced)
    assert all("unpriced" in row["ChargeDescription"] for row in unpriced)


def test_calls_the_guard_refused_are_no_charge(tmp_path):
    from spendwatch.exporter import LedgerEntry
    from spendwatch.instrumentation.records import UsageRecord

    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), UTC_ZONE)
    refused = UsageRecord("openai", "chat", "gpt-4o", outcome="blocked", guard_actions=(("global", "block"),))
    refused.start_time = time.time()
    ledger.ingest([LedgerEntry("refused", refused)])
    today = datetime.now(UTC).date()
    assert focus_rows(ledger, UTC_ZONE, today, today) == []
    ledger.close()
