"""The kinds of fault round, each a plan drawn from a seed, and the timeline actions they combine.

Every round may also kill app processes (kill -9 at random moments, each replaced as an orchestrator would), run
``spendwatch serve`` over the ledger (and kill it too), start its apps with ``opentelemetry-instrument`` rather
than ``spendwatch.configure()``, and slow the stub's answers so more calls are on the wire when a kill lands.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.faults import clock
from tests.faults.rounds import Plan, Round
from tests.faults.tamper import TAMPERINGS

# --- timeline actions: (round, a random draw in [0, 1)) ------------------------------------------------------------


def _pg_stop(mode: str) -> Callable[[Round, float], None]:
    return lambda round_, draw: round_.postgres.stop(mode)


ACTIONS: dict[str, Callable[[Round, float], None]] = {
    "kill": Round.kill_worker,
    "kill-serve": Round.kill_serve,
    "pg-stop": _pg_stop("fast"),
    "pg-crash": _pg_stop("immediate"),
    "pg-start": lambda round_, draw: round_.postgres.ensure_running(),
    "disk-fill": lambda round_, draw: round_.disk.fill(),
    "disk-free": lambda round_, draw: round_.disk.free(),
    "dir-ro": lambda round_, draw: round_.disk.make_read_only(),
    "dir-rw": lambda round_, draw: round_.disk.make_writable(),
    "pg-disk-fill": lambda round_, draw: round_.postgres.disk.fill(),
    "pg-disk-free": lambda round_, draw: round_.postgres.disk.free(),
    "clock-to-midnight": clock.to_just_before_midnight,
    "clock-step": clock.step,
}


# --- plans ------------------------------------------------------------------------------------------------------


def _base(seed: int, kind: str, rng: random.Random, **fixed) -> Plan:
    plan = Plan(
        seed=seed,
        kind=kind,
        backend=rng.choice(("sqlite", "postgresql")),
        workers=rng.randint(2, 3),
        duration_s=rng.uniform(4.0, 8.0),
        pause_s=rng.choice((0.0, 0.002, 0.01)),
        reply_delay_s=rng.choice((0.0, 0.005, 0.03)),
        launcher=rng.choice(("configure", "instrument")),
        serve=rng.random() < 0.3,
    )
    for name, value in fixed.items():
        setattr(plan, name, value)
    return plan


def _kills(plan: Plan, rng: random.Random, low: int, high: int) -> None:
    for _ in range(rng.randint(low, high)):
        plan.events.append((rng.uniform(1.0, plan.duration_s), "kill", rng.random()))
    if plan.serve and rng.random() < 0.5:
        plan.events.append((rng.uniform(1.0, plan.duration_s), "kill-serve", rng.random()))


def _windows(
    plan: Plan, rng: random.Random, start: str, end: str, most: int, lasting_s: tuple[float, float] = (0.3, 2.5)
) -> list[tuple[float, float]]:
    """Up to ``most`` fault windows (``start`` at some moment, ``end`` a while later), one after another."""
    at, windows = rng.uniform(0.5, 2.0), []
    for _ in range(rng.randint(1, most)):
        if at >= plan.duration_s - 0.5:
            break
        lasting = rng.uniform(*lasting_s)
        until = min(at + lasting, plan.duration_s - 0.2)
        plan.events += [(at, start, rng.random()), (until, end, rng.random())]
        windows.append((at, until))
        at += lasting + rng.uniform(0.3, 1.5)
    return windows


def _kills_within(plan: Plan, rng: random.Random, windows: list[tuple[float, float]]) -> None:
    """Most windows also kill an app early inside them: its replacement starts during the outage (and must record
    what it does then)."""
    for start, end in windows:
        if rng.random() < 0.7:
            plan.events.append((rng.uniform(start, start + (end - start) / 4), "kill", rng.random()))


def _disk_windows(plan: Plan, rng: random.Random, start: str, end: str) -> None:
    """The host's disk fails for a while, once or twice. Most rounds keep $XDG_RUNTIME_DIR (a tmpfs of its own),
    where journals go meanwhile, and kill apps inside the windows; the others have none, so records wait in memory,
    and kill nobody then (records held only in a killed process's memory cannot be kept)."""
    plan.runtime_dir = rng.random() < 0.75
    plan.duration_s = rng.uniform(10.0, 16.0)  # windows outlast an app's start-up (seconds on a loaded machine)
    windows = _windows(plan, rng, start, end, 2, lasting_s=(4.0, 9.0))
    if plan.runtime_dir:
        _kills_within(plan, rng, windows)


def kill_storm(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "kill", rng)
    _kills(plan, rng, 2, 8)
    return plan


def postgres_restarts(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "pg-restart", rng, backend="postgresql")
    _kills_within(plan, rng, _windows(plan, rng, rng.choice(("pg-stop", "pg-crash")), "pg-start", 3))
    if rng.random() < 0.5:
        _kills(plan, rng, 1, 3)
    return plan


def full_disk(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "disk-full", rng, disk=True)
    _disk_windows(plan, rng, "disk-fill", "disk-free")
    return plan


def unwritable_directory(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "unwritable", rng, disk=True)
    _disk_windows(plan, rng, "dir-ro", "dir-rw")
    return plan


def postgres_full_disk(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "pg-disk-full", rng, backend="postgresql")
    _kills_within(plan, rng, _windows(plan, rng, "pg-disk-fill", "pg-disk-free", 2))
    return plan


def _guard(plan: Plan, rng: random.Random, on_ledger_error: str) -> None:
    # gpt-4o at 16 output tokens: ~$0.0002 a call; apps make ~10-20 calls a second together, so the limit is reached
    # within the round, with faults before and after.
    plan.guard = {
        "on_ledger_error": on_ledger_error,
        "daily_limit_usd": round(rng.uniform(0.008, 0.03), 4),
        "allowance_usd": round(rng.uniform(0.001, 0.004), 4) if on_ledger_error == "admit" else None,
        "lease_ttl_s": rng.choice((3, 6, 300)),
    }


def guard_block(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "guard-block", rng)
    _guard(plan, rng, "block")
    _guard_faults(plan, rng)
    return plan


def guard_admit(seed: int, rng: random.Random) -> Plan:
    plan = _base(seed, "guard-admit", rng)
    _guard(plan, rng, "admit")
    _guard_faults(plan, rng)
    return plan


def _guard_faults(plan: Plan, rng: random.Random) -> None:
    """The guard's round also loses its ledger for a while (PostgreSQL restarts, or a SQLite directory gone
    read-only) and kills processes holding leases."""
    if plan.backend == "postgresql":
        windows = _windows(plan, rng, rng.choice(("pg-stop", "pg-crash")), "pg-start", 2)
    else:
        plan.disk = True
        windows = _windows(plan, rng, "dir-ro", "dir-rw", 2)
    _kills_within(plan, rng, windows)
    _kills(plan, rng, 0, 2)


def clock_across_midnight(seed: int, rng: random.Random) -> Plan:
    """Every host's clock a few seconds before midnight, then stepping (forward, or back across it), with the guard
    on a small daily budget: neither day may end over its limit."""
    plan = _base(seed, "clock-step", rng, launcher="configure")  # the clock is set before spendwatch is imported
    _guard(plan, rng, "block")
    plan.guard["daily_limit_usd"] = round(rng.uniform(0.002, 0.006), 4)  # each day's share of the round is short
    plan.clock = {"kind": "midnight", "before_s": rng.uniform(1.0, 3.0)}
    plan.events.append((0.0, "clock-to-midnight", 0.0))
    for _ in range(rng.randint(0, 2)):
        plan.events.append((rng.uniform(1.0, plan.duration_s), "clock-step", rng.random()))
    _kills(plan, rng, 0, 2)
    return plan


def clock_skew(seed: int, rng: random.Random) -> Plan:
    """One host's clock ahead (or behind) of the others and of the database's, the guard on: its leases' expiry must
    not free the others' reservations."""
    plan = _base(seed, "clock-skew", rng, launcher="configure")
    _guard(plan, rng, "block")
    plan.guard["lease_ttl_s"] = rng.choice((6, 30, 300))
    plan.clock = {"kind": "skew", "slot": 0, "ahead_s": rng.choice((400.0, 400.0, 90.0, 3600.0, -400.0))}
    _kills(plan, rng, 0, 3)
    return plan


def tampering(seed: int, rng: random.Random) -> Plan:
    """A round with the guard on (so leases exist) and kills, then several kinds of tampering with its ledger."""
    plan = _base(seed, "tamper", rng)
    _guard(plan, rng, "block")
    plan.guard["daily_limit_usd"] = 1.0  # no refusals: every call leaves rows to tamper with
    _kills(plan, rng, 1, 3)
    plan.tamper = rng.sample(sorted(TAMPERINGS), k=rng.randint(4, 7))
    return plan


KINDS: dict[str, Callable[[int, random.Random], Plan]] = {
    "kill": kill_storm,
    "pg-restart": postgres_restarts,
    "disk-full": full_disk,
    "unwritable": unwritable_directory,
    "pg-disk-full": postgres_full_disk,
    "guard-block": guard_block,
    "guard-admit": guard_admit,
    "clock-step": clock_across_midnight,
    "clock-skew": clock_skew,
    "tamper": tampering,
}


TITLES = {
    "kill": "kill -9 storms",
    "pg-restart": "PostgreSQL restarts",
    "disk-full": "full disk (journal and ledger directory)",
    "unwritable": "unwritable directory (read-only mount)",
    "pg-disk-full": "PostgreSQL's disk full",
    "guard-block": "guard, on_ledger_error = block",
    "guard-admit": "guard, on_ledger_error = admit",
    "clock-step": "clocks stepping across midnight",
    "clock-skew": "one host's clock off (ahead or behind)",
    "tamper": "tampering, then audit verify",
}


def plan_round(seed: int, kinds: list[str]) -> Plan:
    """The round of ``seed``: its kind is ``kinds[seed % len(kinds)]`` (consecutive seeds take turns, so a run
    covers every kind), its plan drawn from the seed and the kind alone (``--seed S --kinds K`` replays it)."""
    kind = kinds[seed % len(kinds)]
    return KINDS[kind](seed, random.Random(f"{kind}-{seed}"))
