"""``/api/v1/report``: the rows ``spendwatch report`` prints, for a range of days, as JSON, CSV or FOCUS CSV."""

from __future__ import annotations

from datetime import date

from spendwatch.exporter.api.params import BadRequest
from spendwatch.exporter.focus import focus_rows, format_focus_csv
from spendwatch.exporter.report import (
    ALL_GROUPINGS,
    NOT_RECORDED,
    format_csv,
    format_json,
    grouped_columns,
    grouped_rows,
    report_document,
)

__all__ = ["FORMATS", "GROUPINGS", "report"]

FORMATS = ("json", "csv", "focus")
GROUPINGS = ALL_GROUPINGS
_JSON = "application/json; charset=utf-8"
_CSV = "text/csv; charset=utf-8"


def report(ledger, settings, *, since: date, until: date, by: str, format: str) -> tuple[str, str]:  # noqa: A002
    """The report's content type and text. FOCUS rows are per day and series whatever ``by`` says."""
    if since > until:
        raise BadRequest("start", since.isoformat(), f"start {since} is after end {until}")
    if format == "focus":
        return _CSV, format_focus_csv(focus_rows(ledger, settings.timezone, since, until))
    if by in NOT_RECORDED:
        raise BadRequest("by", by, f"by={by} is not available: {NOT_RECORDED[by]}")
    rows = grouped_rows(ledger, since, until, by)
    if format == "csv":
        return _CSV, format_csv(rows, grouped_columns(by))
    return _JSON, format_json(report_document(rows, since, until, by))
