"""Running seeded rounds and summing them up in the figures table (``python -m tests.faults``, tests/test_soak.py)."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from spendwatch.demo.stub import StubServer
from tests.faults.kinds import TITLES, plan_round
from tests.faults.postgres import SoakPostgres
from tests.faults.rounds import REPO, Outcome, Round
from tests.faults.snapshot import snapshot


def _cpu_seconds() -> float:
    """CPU time of this process and of the processes it started and waited for (the stub runs in this one)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_rounds(
    seeds: list[int],
    kinds: list[str],
    *,
    against: str | None = None,
    keep: bool = False,
    postgres: SoakPostgres | None = None,
    say=print,
) -> list[Outcome]:
    """Play the round of each seed, with spendwatch as in the working tree or at git revision ``against``; returns
    their outcomes (``say`` gets a line per round). PostgreSQL rounds use ``postgres``, else a cluster of their own."""
    plans = [plan_round(seed, kinds) for seed in seeds]
    base = Path(tempfile.mkdtemp(prefix="spendwatch-soak-"))
    own_postgres = postgres is None and any(plan.backend == "postgresql" for plan in plans)
    outcomes: list[Outcome] = []
    try:
        spendwatch_path = snapshot(REPO, against, base / "snapshot") if against else None
        if own_postgres:
            postgres = SoakPostgres()
        with StubServer() as stub:
            for plan in plans:
                began, cpu = time.monotonic(), _cpu_seconds()
                outcome = Round(plan, base, stub, postgres, spendwatch_path=spendwatch_path).run()
                outcomes.append(outcome)
                if outcome.passed and not keep:
                    shutil.rmtree(base / f"round-{plan.seed}", ignore_errors=True)
                verdict = "ok" if outcome.passed else "BROKEN: " + "; ".join(outcome.broken)
                result = outcome.result
                say(
                    f"seed {plan.seed}: {plan.describe()}: {result.get('acknowledged', 0)} acknowledged, "
                    f"{result.get('served', 0)} served, {time.monotonic() - began:.0f} s "
                    f"({_cpu_seconds() - cpu:.0f} s CPU): {verdict}"
                )
    finally:
        if own_postgres and postgres is not None:
            postgres.close()
        if keep or not all(outcome.passed for outcome in outcomes):
            say(f"rounds kept in {base} (logs, acknowledgements, outcome.json; calls.json of a broken round)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return outcomes


def figures(outcomes: list[Outcome]) -> str:
    """The figures table (markdown): one row per kind of fault."""
    header = (
        "| fault | rounds | acknowledged | lost | counted twice | served but missing | overshoot "
        "| tampering detected |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for kind in sorted({outcome.plan.kind for outcome in outcomes}, key=list(TITLES).index):
        mine = [outcome for outcome in outcomes if outcome.plan.kind == kind]
        results = [outcome.result for outcome in mine]

        def total(key: str, results=results) -> int:
            return sum(result.get(key, 0) for result in results)

        guarded = [outcome for outcome in mine if outcome.plan.guard]
        over = [result.get("overshoot_usd", 0.0) for result in results if "overshoot_usd" in result]
        overshoot = f"${max(over):.6f} max" if guarded and over else "—"
        if guarded:
            broken = sum(any(b.startswith("overshoot") for b in outcome.broken) for outcome in guarded)
            overshoot += f", {broken}/{len(guarded)} rounds over"
        tampered = [
            caught
            for result in results
            for how, caught in (result.get("tampering") or {}).items()
            if how != "control" and caught is not None
        ]
        caught = f"{sum(tampered)} of {len(tampered)}" if tampered else "—"
        rows.append(
            f"| {TITLES.get(kind, kind)} | {len(mine)} | {total('acknowledged'):,} | {total('lost'):,} "
            f"| {total('counted_twice'):,} | {total('served_missing'):,} | {overshoot} | {caught} |"
        )
    return "\n".join(rows)
