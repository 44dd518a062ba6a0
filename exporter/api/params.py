"""The JSON API's query parameters: each read and checked here, so a bad one is a 400 naming it and the value."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from datetime import date

__all__ = ["BadRequest", "Query", "parse_query"]

# A range is a whole number of hours or days: "24h", "7d". Up to about two years, so a typo cannot ask for ages.
_RANGE = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_UNIT_S = {"h": 3600, "d": 86400}
MAX_RANGE_S = 731 * 86400


class BadRequest(Exception):
    """A parameter the API cannot answer; ``str()`` says which, its value and what it takes."""

    def __init__(self, parameter: str, value: str | None, message: str) -> None:
        super().__init__(message)
        self.parameter, self.value, self.message = parameter, value, message

    def as_dict(self) -> dict:
        return {"error": {"parameter": self.parameter, "value": self.value, "message": self.message}}


class Query:
    """The parameters of one request; each accessor checks its parameter and raises :class:`BadRequest`."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def refuse_unknown(self, known: Sequence[str]) -> None:
        for name in self._values:
            if name not in known:
                expected = ", ".join(known) or "none"
                raise BadRequest(
                    name, self._values[name], f"unknown parameter {name!r} (this endpoint takes {expected})"
                )

    def range_seconds(self, name: str, default: str) -> tuple[str, int]:
        """A range like ``7d`` or ``24h``: its text and length in seconds."""
        text = self._values.get(name, default)
        match = _RANGE.match(text)
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
        if not match or seconds > MAX_RANGE_S:
            raise BadRequest(name, text, f"{name} must be a whole number of hours or days up to 731d, like 24h or 7d")
        return text, seconds

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self._values.get(name, default)
        if value not in choices:
            raise BadRequest(name, value, f"{name} must be one of {', '.join(choices)}")
        return value

    def day(self, name: str, default: date | None = None) -> date:
        text = self._values.get(name)
        if text is None:
            if default is None:
                raise BadRequest(name, None, f"{name} is required: a day as YYYY-MM-DD")
            return default
        # Only the extended form: fromisoformat also reads 20250301 and 2025-W09-6, which nobody means here.
        day = _iso_day(text) if len(text) == 10 else None
        if day is None:
            raise BadRequest(name, text, f"{name} must be a day as YYYY-MM-DD")
        return day


def _iso_day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_query(query_string: str) -> Query:
    """The parameters of a query string; a parameter given twice is a :class:`BadRequest`."""
    try:
        pairs = urllib.parse.parse_qsl(query_string, keep_blank_values=True, strict_parsing=bool(query_string))
    except ValueError:
        raise BadRequest("", query_string, "the query string is not name=value pairs joined by &") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise BadRequest(name, value, f"{name} is given more than once")
        values[name] = value
    return Query(values)
