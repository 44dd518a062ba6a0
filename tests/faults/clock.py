"""Clocks of app processes: a host whose clock is off, or a clock stepping across a period's end (libfaketime)."""

from __future__ import annotations


def clock_environment(clock: dict | None, slot: int) -> dict[str, str]:
    """The environment that gives app process ``slot`` the round's clock (nothing when the round keeps real time)."""
    return {}
