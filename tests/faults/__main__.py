"""``python -m tests.faults [--rounds N] [--seed S] [--kinds a,b]``: run seeded fault rounds, print the figures table.

Round ``i`` has seed ``S + i`` (``S`` is random unless given, and printed). Exit status 1 when any round broke a
promise; each such round is named with the command that plays it again.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from spendwatch.demo.stub import StubServer
from tests.faults.disks import can_mount
from tests.faults.kinds import KINDS, TITLES, plan_round
from tests.faults.rounds import REPO, Outcome, Round
from tests.faults.snapshot import revision_name, snapshot


def run_rounds(
    seeds: list[int], kinds: list[str], *, against: str | None = None, keep: bool = False, say=print
) -> list[Outcome]:
    """Play the round of each seed, with spendwatch as in the working tree or at git revision ``against``; returns
    their outcomes (``say`` gets a line per round)."""
    plans = [plan_round(seed, kinds) for seed in seeds]
    base = Path(tempfile.mkdtemp(prefix="spendwatch-soak-"))
    postgres = None
    outcomes: list[Outcome] = []
    try:
        spendwatch_path = snapshot(REPO, against, base / "snapshot") if against else None
        if any(plan.backend == "postgresql" for plan in plans):
            from tests.faults.postgres import SoakPostgres

            postgres = SoakPostgres()
        with StubServer() as stub:
            for plan in plans:
                began = time.monotonic()
                outcome = Round(plan, base, stub, postgres, spendwatch_path=spendwatch_path).run()
                outcomes.append(outcome)
                verdict = "ok" if outcome.passed else "BROKEN: " + "; ".join(outcome.broken)
                result = outcome.result
                say(
                    f"seed {plan.seed}: {plan.describe()}: {result.get('acknowledged', 0)} acknowledged, "
                    f"{result.get('served', 0)} served, {time.monotonic() - began:.0f} s: {verdict}"
                )
    finally:
        if postgres is not None:
            postgres.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"rounds kept in {base}")
    return outcomes


def figures(outcomes: list[Outcome]) -> str:
    """The figures table (markdown): one row per kind of fault."""
    header = (
        "| fault | rounds | acknowledged | lost | counted twice | served but missing | overshoot "
        "| tampering detected |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for kind in dict.fromkeys(outcome.plan.kind for outcome in outcomes):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="the first round's seed (default: random)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument(
        "--against", metavar="REV", help="spendwatch as committed at this git revision (default: the working tree)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the rounds' directories (logs, acks, ledgers)")
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        parser.error(f"unknown fault kind {unknown[0]!r}; known: {', '.join(KINDS)}")
    if not can_mount():
        parser.error("the soak mounts small tmpfs disks and runs PostgreSQL: run it as root")
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    tested = f"spendwatch at {revision_name(REPO, args.against)}" if args.against else "the working tree"
    print(f"soak: {args.rounds} rounds from seed {first} ({', '.join(kinds)}), {tested}", flush=True)
    seeds = list(range(first, first + args.rounds))
    say = lambda line: print(line, flush=True)  # noqa: E731
    outcomes = run_rounds(seeds, kinds, against=args.against, keep=args.keep, say=say)
    print()
    print(figures(outcomes))
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if failed:
        print(f"\nsoak: {len(failed)} of {len(outcomes)} rounds broke a promise; replay one with:")
        for outcome in failed:
            options = "" if len(kinds) == len(KINDS) else f" --kinds {args.kinds}"
            options += f" --against {args.against}" if args.against else ""
            print(f"  python -m tests.faults --seed {outcome.plan.seed} --rounds 1{options}   # {outcome.plan.kind}")
        return 1
    print(f"\nsoak: all {len(outcomes)} rounds kept every promise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
