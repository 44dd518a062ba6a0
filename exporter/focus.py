"""FinOps FOCUS 1.2 rows of the ledger's spend, for finance: ``spendwatch report --format focus`` and
``/api/v1/report?format=focus``.

One row per local day and series (provider, model, operation, category) that had calls sent, read from the ledger's
per-day totals like every report::

    rows = focus_rows(ledger, settings.timezone, date(2025, 3, 1), date(2025, 3, 31))   # both days included
    print(format_focus_csv(rows))

How spendwatch's data maps onto FOCUS (https://focus.finops.org/focus-specification/v1-2/):

- The charge period is the local day, the billing period its calendar month, both as UTC instants.
- The provider (``gen_ai.provider.name``) is the provider, publisher and invoice issuer, and its API the service.
  spendwatch does not know the account a call was billed to, so the provider stands for it (``BillingAccountId``).
- The SKU is the model and its unit, tokens: ``ConsumedQuantity`` and ``PricingQuantity`` are the input and output
  tokens (cached input and reasoning output are parts of those). The ledger keeps one cost per call, not per token
  type, so there is one row per series and no unit price (those columns are conditional and left out).
- Costs are priced at list prices, so billed, effective, list and contracted cost are the same amount. Unpriced
  calls have no cost and are never $0: they are counted in ``x_UnpricedCalls`` and named in the description.
- ``Tags`` hold the attribution category and the operation. The OpenTelemetry ``service.name`` of the calling app is
  not in the ledger yet, so there is no ``service`` tag.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from spendwatch.exporter.periods import period_days
from spendwatch.instrumentation.pricing import rounded_usd

__all__ = ["FOCUS_COLUMNS", "FOCUS_VERSION", "decimal_text", "focus_rows", "format_focus_csv", "utc_text"]

FOCUS_VERSION = "1.2"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "Generative AI"
TOKENS = "Tokens"
# Display names of the providers (gen_ai.provider.name values) that have one; others show as they are named.
PROVIDER_NAMES = {
    "openai": "OpenAI",
    "azure.ai.openai": "Microsoft",
    "anthropic": "Anthropic",
    "gcp.gemini": "Google",
    "gcp.vertex_ai": "Google",
    "aws.bedrock": "Amazon Web Services",
    "deepseek": "DeepSeek",
    "groq": "Groq",
    "mistral_ai": "Mistral AI",
    "x_ai": "xAI",
}
FOCUS_COLUMNS = (
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "ServiceName",
    "ServiceCategory",
    "ServiceSubcategory",
    "SkuId",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "PricingCategory",
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "Tags",
    "x_Requests",
    "x_UnpricedCalls",
)
# The money columns, written to 1e-9 USD.
_MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")


def focus_rows(ledger, tz: ZoneInfo, since: date, until: date) -> list[dict]:
    """FOCUS rows from ``since`` to ``until`` (local days, both included), by day, then cost (highest first)."""
    if since > until:
        raise ValueError(f"the report starts on {since} after it ends on {until}")
    rows = [_row(total, tz) for total in ledger.daily_totals(since, until + timedelta(days=1)) if _sent(total)]
    return sorted(rows, key=lambda row: (row["ChargePeriodStart"], -row["BilledCost"], row["SkuId"]))


def _sent(total: dict) -> bool:
    # Calls the guard refused were never sent: nothing was consumed or charged.
    return int(total["success"]) + int(total["error"]) > 0


def _row(total: dict, tz: ZoneInfo) -> dict:
    day = date.fromisoformat(total["day"])
    month_first, month_end = period_days("month", day)
    provider = PROVIDER_NAMES.get(total["provider"], total["provider"])
    cost = rounded_usd(float(total["cost_usd"]))
    tokens = int(total["input_tokens"]) + int(total["output_tokens"])
    requests = int(total["success"]) + int(total["error"])
    # The ledger counts a refused call as unpriced too (it has no cost); here only calls that were sent count.
    unpriced = max(0, int(total["unpriced"]) - int(total["blocked"]))
    return {
        "BillingAccountId": total["provider"],
        "BillingAccountName": None,
        "BillingCurrency": "USD",
        "BillingPeriodStart": utc_text(month_first, tz),
        "BillingPeriodEnd": utc_text(month_end, tz),
        "ChargePeriodStart": utc_text(day, tz),
        "ChargePeriodEnd": utc_text(day + timedelta(days=1), tz),
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeDescription": _description(total, requests, unpriced),
        "ChargeFrequency": "Usage-Based",
        "ProviderName": provider,
        "PublisherName": provider,
        "InvoiceIssuerName": provider,
        "ServiceName": f"{provider} API",
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SkuId": f"{total['model']}/{TOKENS.lower()}",
        "ConsumedQuantity": tokens,
        "ConsumedUnit": TOKENS,
        "PricingQuantity": tokens,
        "PricingUnit": TOKENS,
        "PricingCategory": "Standard",
        "BilledCost": cost,
        "EffectiveCost": cost,
        "ListCost": cost,
        "ContractedCost": cost,
        "Tags": _tags(total),
        "x_Requests": requests,
        "x_UnpricedCalls": unpriced,
    }


def _tags(total: dict) -> dict:
    tags = {"category": total["category"], "operation": total["operation"]}
    return {key: value for key, value in tags.items() if value}


def _description(total: dict, requests: int, unpriced: int) -> str:
    text = (
        f"{requests} {total['operation']} calls to {total['model']}: {int(total['input_tokens'])} input and "
        f"{int(total['output_tokens'])} output tokens"
    )
    if unpriced:
        text += f"; {unpriced} of the calls are unpriced (the model has no known price) and not in the cost"
    return text


def utc_text(day: date, tz: ZoneInfo) -> str:
    """Local midnight of ``day`` in ``tz``, as an RFC 3339 UTC instant (``2025-03-01T00:00:00Z``)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_focus_csv(rows: Sequence[dict]) -> str:
    """FOCUS rows as CSV with a header line: no value as an empty field, Tags as a JSON object."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(FOCUS_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_ready(row) for row in rows)
    return buffer.getvalue()


def _csv_ready(row: dict) -> dict:
    ready = dict(row, Tags=json.dumps(row["Tags"]))
    for column in _MONEY:
        ready[column] = decimal_text(row[column])
    return ready


def decimal_text(amount: float) -> str:
    """Money as a plain decimal with up to 9 places: never an exponent (``2e-08``), which not every reader takes."""
    return f"{amount:.9f}".rstrip("0").rstrip(".") or "0"
