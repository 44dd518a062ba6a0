"""``python -m tests.faults [--rounds N] [--seed S] [--kinds a,b]``: run seeded fault rounds, print the figures table.

Round ``i`` has seed ``S + i`` (``S`` is random unless given, and printed). Exit status 1 when any round broke a
promise; each such round is named with the command that plays it again.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys

from tests.faults.disks import can_mount
from tests.faults.kinds import KINDS
from tests.faults.rounds import REPO
from tests.faults.run import figures, run_rounds
from tests.faults.snapshot import revision_name


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
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unmount and stop all on the way out
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
