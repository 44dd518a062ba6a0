"""Clocks of the rounds' app processes: one host's clock off, or every host's clock stepping across midnight.

Each worker slot (a "host": a killed app's replacement runs on the same one) reads its clock offset from a file
(``worker.py --clock``); a step rewrites the files and sends SIGUSR1 to the apps already running. The database's
clock is never moved. Budgets are in UTC, so midnight UTC ends the day.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

DAY_S = 86_400


def clock_file(round_, slot: int) -> Path:
    return round_.dir / f"clock-{slot}"


def prepare_clocks(round_) -> None:
    """The starting offsets: one host ahead (or behind) for a skew round, every clock true otherwise."""
    clock = round_.plan.clock
    for slot in range(round_.plan.workers):
        off = clock["ahead_s"] if clock["kind"] == "skew" and slot == clock["slot"] else 0.0
        clock_file(round_, slot).write_text(repr(off))


def _set_offsets(round_, offset_of) -> None:
    for slot in range(round_.plan.workers):
        path = clock_file(round_, slot)
        path.write_text(repr(offset_of(float(path.read_text()))))
    for process in round_.live_workers():
        if process.acks_path.exists():  # its SIGUSR1 handler is in place
            process.popen.send_signal(signal.SIGUSR1)


def to_just_before_midnight(round_, draw: float) -> None:
    """Step every clock to ``before_s`` seconds before the next midnight (UTC)."""
    now = time.time()
    midnight = (now // DAY_S + 1) * DAY_S
    target = midnight - round_.plan.clock["before_s"]
    _set_offsets(round_, lambda offset: target - now)


def step(round_, draw: float) -> None:
    """An NTP-like step of every clock: forward up to 60 s, or back up to 40 s."""
    delta = draw * 100.0 if draw < 0.6 else -(draw - 0.6) * 100.0
    _set_offsets(round_, lambda offset: offset + delta)
