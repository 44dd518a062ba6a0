"""``spendwatch doctor``: check the installation, the ledger, prices, ``/metrics``, budgets and the clock.

Wired into :func:`spendwatch.cli.build_parser` by ``add_commands(subcommands)``; the checks themselves live in
:mod:`spendwatch.cli.doctor`. Exit status: 0 when no check fails (warnings allowed), 1 when one does, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_FAILED = 1


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "doctor",
        help="check the setup: instrumentors, ledger, prices, /metrics, budgets, clock",
        description="Check what most often goes wrong: whether spendwatch's instrumentors are active here and "
        "another OpenAI instrumentation is not, whether the ledger opens and takes writes, how old the price data "
        "is, which models were called without a price, whether /metrics answers, whether a budget is set, and the "
        "clock and time zone. Each problem comes with a one-line fix. Changes nothing. Exits 1 when a check fails.",
    )
    command.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    command.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from spendwatch.cli.doctor import FAIL, counts, iter_text, run_checks

    results = run_checks()
    failed = any(result.status == FAIL for result in results)
    if args.json:
        document = {
            "ok": not failed,
            "counts": counts(results),
            "checks": [result.as_dict() for result in results],
        }
        print(json.dumps(document, indent=2))
    else:
        print("\n".join(iter_text(results)))
    return EXIT_FAILED if failed else EXIT_OK
