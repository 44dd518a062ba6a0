"""``spendwatch leases list|release``: the guard's leases, and releasing by hand one whose journal is lost.

Registered by :func:`add_commands` from :func:`spendwatch.cli.build_parser`, in the CLI's pattern: an ``_add_``
function declares a subcommand's arguments, a ``_run_`` function does the work and returns the exit status.

A lease holds money a process committed against a budget and whose calls the ledger has not ingested yet. Past its
TTL it is kept until its owner's journal is in the ledger (see :mod:`spendwatch.exporter.recovery`); a process on
the owner's host does that within seconds. When that host is gone for good, its journal with it, nothing ever will:
``release`` hands the money back to the budget, with an audited ``lease_released`` event (the calls in that journal
are then lost to the ledger, which is why this is never automatic).

Exit status: 0 on success, 1 when a named lease was not released (unknown, or still live), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json

from spendwatch.cli._common import usage

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_LEFT = 1
_STATES = {
    "self": "this process",
    "alive": "its owner is running: it releases the lease itself",
    "waiting": "its owner died; its journal waits to be replayed by a process on this host",
    "in": "its owner's journal is in the ledger: the next drain releases it",
    "other host": "its owner ran on another host: a process there replays its journal and releases it",
}


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    """Register ``leases`` (with ``list`` and ``release``) on the CLI's subparsers."""
    command = subcommands.add_parser(
        "leases",
        help="list the budget guard's leases, or release one whose owner's journal is lost",
        description="A lease holds what a process committed against a budget until its calls are in the ledger; past "
        "its TTL it is kept until its owner's journal has been replayed.",
    )
    actions = command.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="every lease that names an owner, and where its owner's journal stands")
    listing.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    listing.set_defaults(handler=_run_list)
    release = actions.add_parser(
        "release",
        help="release leases past their TTL whose owner's journal will never be replayed, audited",
        description="Delete these leases (only those past their TTL) and record an audited lease_released event. Use "
        "it only when the owner's host and its journal are gone: the calls in that journal are then never counted.",
    )
    release.add_argument("lease_ids", nargs="+", metavar="LEASE_ID")
    release.add_argument("--reason", default="", help="why, kept with the event in the audit trail")
    release.set_defaults(handler=_run_release)
    command.set_defaults(handler=lambda args: usage(command))


def _run_list(args: argparse.Namespace) -> int:
    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.ledger.leases import held_leases
    from spendwatch.exporter.recovery import owner_states
    from spendwatch.exporter.sink import journal_directories

    settings = load_settings()
    ledger = open_ledger(settings)
    try:
        held = held_leases(ledger)
    finally:
        ledger.close()
    states = owner_states(held, journal_directories(settings.ledger))
    if args.json:
        leases = [{**_as_dict(lease), "owner_journal": state} for lease, state in zip(held, states, strict=True)]
        print(json.dumps({"leases": leases}, indent=2))
        return EXIT_OK
    if not held:
        print("no lease is held")
        return EXIT_OK
    for lease, state in zip(held, states, strict=True):
        print(_line(lease, state))
    return EXIT_OK


def _as_dict(lease) -> dict:
    keys = ("lease_id", "budget", "period", "period_start", "outstanding_usd", "owner", "expired_for_s")
    return {key: getattr(lease, key) for key in keys}


def _line(lease, state: str) -> str:
    life = f"expired {lease.expired_for_s:.0f} s ago" if lease.expired else f"live for {-lease.expired_for_s:.0f} s"
    held = f"${lease.outstanding_usd:.6f} of {lease.budget} ({lease.period} from {lease.period_start})"
    return f"{lease.lease_id}  {held}  owner {lease.owner}, {life}: {_STATES[state]}"


def _run_release(args: argparse.Namespace) -> int:
    from spendwatch.cli.commands_budget import _who
    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.ledger.leases import release_by_hand

    ledger = open_ledger(load_settings())
    try:
        released, event_id = release_by_hand(ledger, args.lease_ids, by=_who(), reason=args.reason)
    finally:
        ledger.close()
    for lease in released:
        print(f"released {lease.lease_id} (${lease.outstanding_usd:.6f} of {lease.budget}, owner {lease.owner})")
    if event_id:
        print(f"recorded in the audit trail as event {event_id}")
    left = set(args.lease_ids) - {lease.lease_id for lease in released}
    for lease_id in sorted(left):
        print(f"not released: {lease_id} (no such lease, or still live: its owner renews it)")
    return EXIT_LEFT if left else EXIT_OK
