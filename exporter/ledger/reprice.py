"""Re-pricing: recompute what stored calls cost with a corrected price table, keeping what they cost before.

Usage::

    result = reprice(ledger, "gpt-4o-mini", since=date(2026, 11, 1), until=date(2026, 11, 27),
                     overrides=load_overrides("corrected-prices.toml"))

Which calls: successful calls whose request or response model is ``model``, on the local days ``since`` to ``until``
(both included: the ledger's ``day`` column), except costs the caller or the provider reported. Each is priced the
way the instrumentation prices a call (:meth:`PriceTable.lookup_call`: an override for either model name, then the
bundled data for the response model, then for the request model, for its provider), at the price in force on the
call's own date and at its service tier (a Batch API call at the batch price), from every unit the calls row keeps
(cache reads and writes, audio and image tokens, reasoning, and the other units: web searches, requests...). A call
the corrected table does not price is left as it was.

All in one transaction that holds the audit chain's head: for each call whose cost or price source changes, a
``repricings`` row keeps the old and new cost and source, the ``calls`` row takes the new ones, and ``totals`` and
``daily_totals`` take the difference (and one unpriced call fewer where an unpriced call got a price), so they keep
equalling a scan of ``calls`` and budgets and ``/metrics`` follow at once. A ``repriced`` event sums the run up; it
and every repricings row are chained into the audit trail. Re-pricing again with the same prices changes nothing.

``llm_cost_usd_total`` is a counter: a re-pricing that lowers costs makes it go down once, which Prometheus reads as a
counter reset (``rate()`` across that scrape is off; the totals are right).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from spendwatch.exporter.ledger import audit
from spendwatch.exporter.ledger.ledger import Ledger
from spendwatch.exporter.ledger.schema import has_no_price
from spendwatch.exporter.ledger.totals import TotalsChange
from spendwatch.instrumentation.calls import PROVIDER, REPORTED
from spendwatch.instrumentation.pricing import Price, PriceTable

__all__ = ["RepriceResult", "reprice"]

_MATCHING = """
SELECT id, ts, day, provider, model, operation, category, service, response_model, service_tier, units,
       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, input_audio_tokens, output_audio_tokens,
       input_image_tokens, output_image_tokens, reasoning_tokens, cost_usd, pricing
FROM calls
WHERE (model = ? OR response_model = ?) AND day >= ? AND day <= ? AND outcome = 'success' AND pricing NOT IN (?, ?)
ORDER BY ts, id
"""
_INSERT = """
INSERT INTO repricings (call_id, ts, event_id, old_cost_usd, new_cost_usd, old_pricing, new_pricing)
VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id
"""


@dataclass(frozen=True)
class RepriceResult:
    model: str
    since: date
    until: date
    matched: int  # successful calls of the model in the range
    repriced: int  # of those, the calls whose cost or price source changed
    unpriced: int  # of those, the calls the corrected prices do not price (left as they were)
    old_cost_usd: float  # what the re-priced calls cost before
    new_cost_usd: float  # and now
    event_id: int | None = None  # the chained ``repriced`` event (None when nothing changed, or a dry run)

    @property
    def difference_usd(self) -> float:
        return self.new_cost_usd - self.old_cost_usd


@dataclass(frozen=True, slots=True)
class _Change:
    call_id: str
    at: float  # when the call started
    day: str
    key: tuple  # the totals key: provider, model, operation, category, service
    old_cost: float | None
    new_cost: float
    old_pricing: str
    new_pricing: str


class _CallClock:
    """The price table's clock, set to each call's time in turn (calls come oldest first, so the table's cache,
    valid until the next price change, stays right)."""

    at = 0.0

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


def reprice(
    ledger: Ledger,
    model: str,
    since: date,
    until: date,
    *,
    overrides: Mapping[str, Price] | None = None,
    reason: str = "",
    dry_run: bool = False,
) -> RepriceResult:
    """Re-price ``model``'s calls from ``since`` to ``until`` (local days, both included); see the module docstring."""
    clock = _CallClock()
    table = PriceTable(overrides, clock=clock)
    with ledger.chained_transaction() as cursor:
        parameters = (model, model, since.isoformat(), until.isoformat(), REPORTED, PROVIDER)
        calls = ledger.backend.execute(cursor, _MATCHING, parameters)
        changes, unpriced = _changes(calls, table, clock)
        old = sum(change.old_cost or 0.0 for change in changes)
        new = sum(change.new_cost for change in changes)
        result = RepriceResult(model, since, until, len(calls), len(changes), unpriced, old, new)
        if not changes or dry_run:
            return result
        detail = {
            "model": model,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "calls": len(changes),
            "old_cost_usd": old,
            "new_cost_usd": new,
            "reason": reason,
        }
        event_id = ledger.chained_event(cursor, "repriced", detail, at=time.time())
        _apply(ledger, cursor, changes, event_id)
    return RepriceResult(model, since, until, len(calls), len(changes), unpriced, old, new, event_id)


def _changes(calls: list[tuple], table: PriceTable, clock: _CallClock) -> tuple[list[_Change], int]:
    changes, unpriced = [], 0
    for call_id, ts, day, provider, model, operation, category, service, response_model, tier, units, *usage in calls:
        *tokens, cost, pricing = usage
        clock.at = float(ts)
        batch = tier == "batch"
        price = table.lookup_call(response_model, model, provider, None if batch else tier, batch)
        if price is None:
            unpriced += 1
            continue
        new_cost = _cost(price, [int(count) for count in tokens], json.loads(units) if units else None)
        if new_cost != cost or price.source != pricing:
            key = (provider, model, operation, category, service)
            changes.append(_Change(call_id, float(ts), day, key, cost, new_cost, pricing, price.source))
    return changes, unpriced


def _cost(price: Price, tokens: list[int], units: dict | None) -> float:
    """What the instrumentation would have charged (calls.apply_usage): from every unit the calls row keeps."""
    input_tokens, output_tokens, cache_read, cache_write, *parts, reasoning = tokens
    if not (cache_write or any(parts) or units):
        return price.cost(input_tokens, output_tokens, cache_read, reasoning_tokens=reasoning)
    input_audio, output_audio, input_image, output_image = parts
    return price.cost(
        input_tokens,
        output_tokens,
        cache_read,
        cache_write,
        input_audio_tokens=input_audio,
        output_audio_tokens=output_audio,
        input_image_tokens=input_image,
        output_image_tokens=output_image,
        reasoning_tokens=reasoning,
        units=units,
    )


def _apply(ledger: Ledger, cursor, changes: list[_Change], event_id: int) -> None:
    backend, at = ledger.backend, time.time()
    chained, totals = [], TotalsChange(("cost_usd", "unpriced"))
    for change in changes:
        row = [change.call_id, at, event_id, change.old_cost, change.new_cost, change.old_pricing, change.new_pricing]
        ((repricing_id,),) = backend.execute(cursor, _INSERT, row)
        chained.append(("reprice", None, repricing_id, audit.repricing_content([repricing_id, *row])))
        # The difference in cost, and one unpriced call fewer where an unpriced call got a price.
        was_unpriced = has_no_price(change.old_cost, change.old_pricing)
        difference = [change.new_cost - (change.old_cost or 0.0), -int(was_unpriced)]
        totals.add(change.day, change.key, difference, at=change.at)
    query = "UPDATE calls SET cost_usd = ?, pricing = ? WHERE id = ?"
    backend.execute_many(cursor, query, [(change.new_cost, change.new_pricing, change.call_id) for change in changes])
    audit.append(backend, cursor, ledger.audit_key, chained)
    totals.apply(backend, cursor)
