"""LightRAG spend by stage, document or query mode, read from the ledger's per-call rows.

The LightRAG instrumentation puts ``spendwatch.lightrag.stage`` / ``doc_id`` / ``query_mode`` in each call's
attributes (the ``calls.attributes`` JSON column). The running totals do not carry them, so this report scans the
calls of the date range (through the ``day`` index): it is off the hot path, for ``spendwatch report --by stage``::

    rows = stage_rows(ledger, date(2025, 3, 1), date(2025, 3, 31), by="stage")   # both days included
    print(format_table(rows, stage_columns("stage")))

Cache hits (``operation="cache_hit"``) cost nothing; they are counted in ``cache_hits`` and what they avoided in
``avoided_usd``, never in ``cost_usd``. Calls without the grouping attribute are left out.
"""

from __future__ import annotations

import json
from datetime import date

__all__ = ["STAGE_GROUPINGS", "call_attributes", "stage_columns", "stage_rows"]

STAGE_GROUPINGS = {
    "stage": "spendwatch.lightrag.stage",
    "document": "spendwatch.lightrag.doc_id",
    "mode": "spendwatch.lightrag.query_mode",
}
_CACHE_HIT = "cache_hit"
_SUMMED = ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens")
_COUNTED = ("requests", "unpriced", "cache_hits")


def stage_rows(ledger, since: date, until: date, by: str = "stage") -> list[dict]:
    """LightRAG spend from ``since`` to ``until`` (both days included), one row per ``by`` value, costliest first.

    Each row: the ``by`` key, ``cost_usd`` (priced calls), ``input_tokens``, ``output_tokens``,
    ``cache_read_tokens``, ``requests`` (LLM calls, cache hits excluded), ``unpriced``, ``cache_hits`` and
    ``avoided_usd`` (what the cache hits would have cost).
    """
    attribute = STAGE_GROUPINGS.get(by)
    if attribute is None:
        raise ValueError(f"cannot group LightRAG spend by {by!r}; choose one of {', '.join(STAGE_GROUPINGS)}")
    if since > until:
        raise ValueError(f"the report starts on {since} after it ends on {until}")
    groups: dict[str, dict] = {}
    for call in ledger.calls_with_attributes(since, until):
        attributes = call_attributes(call["attributes"])
        key = attributes.get(attribute)
        if key is not None:
            _accumulate(groups.setdefault(key, _empty_row(by, key)), call, attributes)
    return sorted(groups.values(), key=lambda row: (-row["cost_usd"], -row["avoided_usd"], row[by]))


def stage_columns(by: str) -> list[str]:
    """The columns of :func:`stage_rows` for a grouping, in display order."""
    return [by, *_SUMMED, *_COUNTED, "avoided_usd"]


def call_attributes(raw) -> dict:
    """A calls row's ``attributes`` (JSON text) as a dict; an empty one when it is not a JSON object."""
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _empty_row(by: str, key: str) -> dict:
    return {by: key, "cost_usd": 0.0} | {column: 0 for column in (*_SUMMED[1:], *_COUNTED)} | {"avoided_usd": 0.0}


def _accumulate(row: dict, call: dict, attributes: dict) -> None:
    if call["operation"] == _CACHE_HIT:
        row["cache_hits"] += 1
        row["avoided_usd"] += float(attributes.get("spendwatch.lightrag.avoided_usd") or 0.0)
        return
    row["requests"] += 1
    for column in _SUMMED[1:]:
        row[column] += int(call[column] or 0)
    if call["cost_usd"] is None:
        row["unpriced"] += 1
    else:
        row["cost_usd"] += float(call["cost_usd"])
