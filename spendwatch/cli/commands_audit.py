"""``spendwatch audit verify`` and ``spendwatch reprice``: is the ledger what was written, and correcting a price.

Registered by :func:`add_commands` from :func:`spendwatch.cli.build_parser`, in the CLI's pattern: an ``_add_``
function declares a subcommand's arguments, a ``_run_`` function does the work and returns the exit status. Both open
the ledger the settings name (``SPENDWATCH_LEDGER``, ``SPENDWATCH_CONFIG``, ...) with the audit key from
``SPENDWATCH_AUDIT_KEY`` or the ledger's key file (see :mod:`spendwatch.exporter.ledger.audit`).

Exit status: 0 on success (an intact audit trail), 1 when ``audit verify`` finds tampering, 2 on bad usage or bad
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys

from spendwatch.cli._common import EXIT_USAGE, iso_day, usage

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_TAMPERED = 1

_KIND_NAMES = {
    "call": "calls",
    "event": "events",
    "reprice": "repricings",
    "lease_open": "leases opened",
    "lease_close": "leases closed",
}


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    """Register ``audit`` (with ``verify``) and ``reprice`` on the CLI's subparsers."""
    _add_audit_command(subcommands)
    _add_reprice_command(subcommands)


# --- spendwatch audit verify ----------------------------------------------------------------------------------------


def _add_audit_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "audit",
        help="check the ledger's tamper-evident audit trail",
        description="The ledger chains every call row, event (budget-limit changes, start-ups, re-pricings) and "
        "re-pricing with an HMAC keyed by SPENDWATCH_AUDIT_KEY or the ledger's key file.",
    )
    actions = command.add_subparsers(title="actions", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="walk the chain; exit 1 naming the first record altered, deleted or inserted",
        description="Recompute every record's HMAC in order, check that no record or row was deleted or inserted "
        "without the key, that budget limits are their last recorded change and that the running totals add up "
        "to the calls. Exits 0 with the record count when intact, 1 naming the first problem otherwise.",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    verify.set_defaults(handler=_run_audit_verify)
    command.set_defaults(handler=lambda args: usage(command))


def _run_audit_verify(args: argparse.Namespace) -> int:
    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.ledger.audit import verify

    ledger = open_ledger(load_settings())
    try:
        verdict = verify(ledger)
    finally:
        ledger.close()
    if args.json:
        document = {
            "intact": verdict.intact,
            "records": verdict.records,
            "by_kind": {_KIND_NAMES[kind]: count for kind, count in verdict.kinds.items()},
            "head_mac": verdict.head,
            "problem": verdict.problem,
            "first_bad_record": verdict.bad_seq,
        }
        print(json.dumps(document, indent=2))
    elif verdict.intact:
        kinds = ", ".join(f"{count:,} {_KIND_NAMES[kind]}" for kind, count in verdict.kinds.items())
        head = f"; head record {verdict.records}, MAC {verdict.head}" if verdict.records else ""
        print(f"audit trail intact: {verdict.records:,} records ({kinds}){head}")
    else:
        print(f"audit trail broken: {verdict.problem}")
    return EXIT_OK if verdict.intact else EXIT_TAMPERED


# --- spendwatch reprice ---------------------------------------------------------------------------------------------


def _add_reprice_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "reprice",
        help="recompute the cost of stored calls after a price was wrong, keeping the originals",
        description="Re-price the successful calls of --model (request or response model) from --since to "
        "--until (local days, both included) with the bundled price data plus the SPENDWATCH_PRICES_FILE and "
        "--prices-file overrides (the latter wins). The old costs are kept, the change is chained into the audit "
        "trail, and budgets and /metrics reflect it at once. Running it twice changes nothing more.",
    )
    command.add_argument("--model", required=True, help="model name as sent to the API or as billed")
    command.add_argument("--since", required=True, type=iso_day, metavar="YYYY-MM-DD", help="first day")
    command.add_argument("--until", type=iso_day, metavar="YYYY-MM-DD", help="last day, included (default: today)")
    command.add_argument(
        "--prices-file", metavar="FILE", help="corrected prices (TOML or JSON, as SPENDWATCH_PRICES_FILE)"
    )
    command.add_argument("--reason", default="", help="why, kept with the change in the audit trail")
    command.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    command.set_defaults(handler=_run_reprice)


def _run_reprice(args: argparse.Namespace) -> int:
    import time

    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.ledger.reprice import reprice
    from spendwatch.exporter.periods import local_day
    from spendwatch.instrumentation.pricing import load_overrides

    settings = load_settings()
    until = args.until or local_day(time.time(), settings.timezone)
    if args.since > until:
        print(f"spendwatch reprice: --since {args.since} is after --until {until}", file=sys.stderr)
        return EXIT_USAGE
    overrides = load_overrides(settings.prices_file, settings.prices_file_label) if settings.prices_file else {}
    if args.prices_file:
        overrides |= load_overrides(args.prices_file, f"--prices-file={args.prices_file!r}")
    ledger = open_ledger(settings)
    try:
        result = reprice(
            ledger, args.model, args.since, until, overrides=overrides, reason=args.reason, dry_run=args.dry_run
        )
    finally:
        ledger.close()
    print(_describe(result, dry_run=args.dry_run))
    return EXIT_OK


def _describe(result, *, dry_run: bool) -> str:
    verb = "would re-price" if dry_run else "re-priced"
    lines = [
        f"{verb} {result.repriced:,} of {result.matched:,} successful {result.model} calls "
        f"from {result.since} to {result.until}: {result.old_cost_usd:.6f} USD -> {result.new_cost_usd:.6f} USD "
        f"({result.difference_usd:+.6f} USD)"
    ]
    if result.unpriced:
        lines.append(f"{result.unpriced:,} calls left as they were: the corrected prices do not price them")
    if result.event_id is not None:
        lines.append(f"the old costs are kept in the ledger; recorded in the audit trail as event {result.event_id}")
    return "\n".join(lines)
