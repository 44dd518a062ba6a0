"""``/api/v1/alerts``: what happened in a recent range, newest first, from the ledger's alert history
(:mod:`spendwatch.exporter.ledger.history`): threshold crossings, guard refusals and degradations, ledger outages."""

from __future__ import annotations

import time

from spendwatch.exporter.api.times import rfc3339
from spendwatch.exporter.ledger.history import ALERT_KINDS, alert_events

__all__ = ["ALERT_KINDS", "alerts"]

# Detail fields that are instants (unix seconds in the ledger), written as RFC 3339 like every time in the API.
_INSTANTS = ("first_at", "last_at", "since", "until")


def alerts(ledger, *, range_s: int, now: float | None = None) -> dict:
    """The alert events of the last ``range_s`` seconds up to ``now`` (default the clock), newest first."""
    now = time.time() if now is None else now
    events = alert_events(ledger, now - range_s, now + 1)  # + 1: an event of this very second is not left out
    return {
        "start": rfc3339(now - range_s),
        "end": rfc3339(now),
        "alerts": [_shown(event) for event in events],
    }


def _shown(event: dict) -> dict:
    detail = dict(event["detail"])
    for name in _INSTANTS:
        if isinstance(detail.get(name), int | float):
            detail[name] = rfc3339(detail[name])
    return {"at": rfc3339(event["at"]), "kind": event["kind"], **detail}
