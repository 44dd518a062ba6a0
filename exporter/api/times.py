"""Instants as the JSON API writes them: RFC 3339 in UTC, to the second (``2025-03-01T00:00:00Z``)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["rfc3339"]


def rfc3339(moment: float | datetime) -> str:
    """Unix seconds or an aware datetime as RFC 3339 UTC text."""
    if isinstance(moment, datetime):
        moment = moment.timestamp()
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
