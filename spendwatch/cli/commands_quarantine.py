"""``spendwatch quarantine list|replay``: the records the ledger refused, and ingesting them again.

Registered by :func:`add_commands` from :func:`spendwatch.cli.build_parser`, in the CLI's pattern: an ``_add_``
function declares a subcommand's arguments, a ``_run_`` function does the work and returns the exit status. A record
is quarantined only when the ledger refuses one of its values (see :mod:`spendwatch.exporter.ledger.errors`); once that
cause is fixed (a column widened, a constraint dropped), ``replay`` ingests it as it was journaled, keeps an audited
event naming what it replayed, and removes it from the quarantine. The files are in the journal directories of the
ledger the settings name (``SPENDWATCH_LEDGER``, ``SPENDWATCH_CONFIG``, ...).

Exit status: 0 when nothing is left in quarantine (or ``list`` ran), 1 when some record is still refused or the ledger
cannot be written now, 2 on bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from spendwatch.cli._common import usage

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_LEFT = 1


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    """Register ``quarantine`` (with ``list`` and ``replay``) on the CLI's subparsers."""
    command = subcommands.add_parser(
        "quarantine",
        help="list or re-ingest the records the ledger refused",
        description="Records whose values the ledger refuses (by type or constraint) are set aside in the journal "
        "directory's quarantine.jsonl so they block no other call. List them, and replay them once the cause is fixed.",
    )
    actions = command.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="show every quarantined record and why the ledger refused it")
    listing.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    listing.set_defaults(handler=_run_list)
    replay = actions.add_parser(
        "replay",
        help="ingest the quarantined records into the ledger again, audited",
        description="Ingest each quarantined record as it was journaled (a record already in the ledger is not "
        "counted twice), record an audited quarantine_replayed event naming them, and remove them from the "
        "quarantine. A record the ledger still refuses stays, with its new error.",
    )
    replay.add_argument(
        "--id",
        dest="entry_ids",
        action="append",
        default=[],
        metavar="ENTRY_ID",
        help="replay only this record (repeatable); default: all",
    )
    replay.add_argument("--reason", default="", help="why, kept with the event in the audit trail")
    replay.set_defaults(handler=_run_replay)
    command.set_defaults(handler=lambda args: usage(command))


def _run_list(args: argparse.Namespace) -> int:
    from spendwatch.exporter import load_settings
    from spendwatch.exporter.quarantine import directories_of, quarantined

    items = quarantined(directories_of(load_settings().ledger))
    if args.json:
        print(json.dumps({"quarantined": [_as_dict(item) for item in items]}, indent=2))
        return EXIT_OK
    if not items:
        print("no record is in quarantine")
        return EXIT_OK
    for item in items:
        print(_line(item))
    print(f"{len(items)} records in quarantine; once the cause is fixed: spendwatch quarantine replay")
    return EXIT_OK


def _as_dict(item) -> dict:
    from spendwatch.exporter.quarantine import summary

    call = None if item.record is None else summary(item.record)
    return {
        "entry_id": item.entry_id,
        "error": item.error,
        "at": item.at,
        "file": str(item.path),
        "replayable": item.record is not None,
        "call": call,
    }


def _line(item) -> str:
    from spendwatch.exporter.mapping import printable

    when = datetime.fromtimestamp(item.at, UTC).isoformat(timespec="seconds") if item.at is not None else "?"
    if item.record is None:
        what = "not replayable (written by an earlier release)"
    else:
        record = item.record
        what = f"{printable(record.provider)} {printable(record.request_model)} {record.operation}"
    return f"{item.entry_id}  {when}  {what}: {printable(item.error, 200)}"


def _run_replay(args: argparse.Namespace) -> int:
    from spendwatch.cli.commands_budget import _who
    from spendwatch.exporter import load_settings, open_ledger
    from spendwatch.exporter.ledger import first_line
    from spendwatch.exporter.quarantine import directories_of, replay

    settings = load_settings()
    ledger = open_ledger(settings)
    try:
        result = replay(
            ledger, directories_of(settings.ledger), entry_ids=args.entry_ids, reason=args.reason, by=_who()
        )
    except Exception as error:  # noqa: BLE001 - a transient ledger error: nothing was removed, run it again later
        print(
            f"spendwatch quarantine replay: the ledger cannot be written now ({first_line(error)}); "
            "nothing was removed from the quarantine",
            file=sys.stderr,
        )
        return EXIT_LEFT
    finally:
        ledger.close()
    if not result.replayed and not result.refused:
        print("no record is in quarantine")
        return EXIT_OK
    print(
        f"replayed {len(result.replayed)} records ({result.new} new to the ledger, "
        f"{len(result.replayed) - result.new} there already)"
    )
    for entry_id, error in result.refused.items():
        print(f"still refused: {entry_id}: {error}")
    if result.event_id is not None:
        print(f"recorded in the audit trail as event {result.event_id}")
    return EXIT_LEFT if result.refused else EXIT_OK
