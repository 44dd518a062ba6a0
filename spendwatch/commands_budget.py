"""``spendwatch status`` and ``spendwatch report``: where the budgets stand, and what was spent.

Registered by :func:`add_commands` from :func:`spendwatch.cli.build_parser`, in the CLI's pattern: an ``_add_``
function declares a subcommand's arguments, a ``_run_`` function does the work and returns the exit status. Both
open the ledger the settings name (``SPENDWATCH_LEDGER``, ``SPENDWATCH_CONFIG``, ...); days are calendar days in
``SPENDWATCH_TIMEZONE``. Heavy imports happen inside the handlers so ``spendwatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta

from spendwatch._cli_common import EXIT_USAGE, iso_day

__all__ = ["add_commands"]

EXIT_OK = 0

_GROUPINGS = ("day", "model", "category", "operation")
_LIGHTRAG_GROUPINGS = ("stage", "document", "mode")  # LightRAG spend, from the calls' recorded stage attributes
_FORMATS = ("table", "csv", "json")
_DEFAULT_REPORT_DAYS = 7
_STATUS_COLUMNS = (
    "budget",
    "period",
    "scope",
    "limit_usd",
    "spent_usd",
    "remaining_usd",
    "used",
    "level",
    "period_end",
)
_NO_BUDGETS = (
    "No budgets are configured. Set SPENDWATCH_DAILY_BUDGET_USD or SPENDWATCH_MONTHLY_BUDGET_USD, "
    "or add [budgets.NAME] tables to the SPENDWATCH_CONFIG file."
)


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    """Register ``status`` and ``report`` on the CLI's subparsers."""
    _add_status_command(subcommands)
    _add_report_command(subcommands)


def _open(settings):
    from spendwatch.exporter import open_ledger

    return open_ledger(settings)


# --- spendwatch status ----------------------------------------------------------------------------------------------


def _add_status_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "status",
        help="show every budget now: limit, spent, remaining, level",
        description="Show every configured budget in its current calendar period: its scope, limit, spend, "
        "what remains, the share used, the threshold level reached and when the period ends.",
    )
    command.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    command.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    import time

    from spendwatch.exporter.budgets import budget_statuses, status_as_dict
    from spendwatch.exporter.report import format_json, format_table
    from spendwatch.exporter.settings import load_settings

    settings = load_settings()
    now = time.time()
    ledger = _open(settings)
    try:
        statuses = budget_statuses(ledger, settings, now=now)
        decisions = ledger.guard_decisions()
    finally:
        ledger.close()
    if args.json:
        document = _status_document(statuses, settings, now, status_as_dict)
        document["guard"] = {"enforce": settings.enforce, "decisions": _decisions_document(decisions)}
        print(format_json(document))
        return EXIT_OK
    print(_NO_BUDGETS if not statuses else format_table([_status_line(s) for s in statuses], _STATUS_COLUMNS))
    print(f"\nguard: enforce={settings.enforce}; decisions so far: {_decisions_text(decisions)}")
    return EXIT_OK


def _decisions_document(decisions: dict) -> dict:
    document: dict = {}
    for (budget, action), count in sorted(decisions.items()):
        document.setdefault(budget, {})[action] = count
    return document


def _decisions_text(decisions: dict) -> str:
    if not decisions:
        return "none"
    return ", ".join(f"{budget} {action}={count}" for (budget, action), count in sorted(decisions.items()))


def _status_document(statuses, settings, now: float, status_as_dict) -> dict:
    from datetime import datetime

    return {
        "now": datetime.fromtimestamp(now, settings.timezone).isoformat(),
        "timezone": settings.timezone.key,
        "budgets": [status_as_dict(status) for status in statuses],
    }


def _status_line(status) -> dict:
    from spendwatch.exporter.budgets import describe_scope

    used = status.used_ratio
    return {
        "budget": status.name,
        "period": status.period,
        "scope": describe_scope(status),
        "limit_usd": status.limit_usd,
        "spent_usd": status.spent_usd,
        "remaining_usd": status.remaining_usd,
        "used": f"{used:.1%}" if used != float("inf") else "inf",
        "level": status.level,
        "period_end": status.period_end.isoformat(timespec="minutes"),
    }


# --- spendwatch report ----------------------------------------------------------------------------------------------


def _add_report_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "report",
        help="show spend, tokens and requests per day, model, category or operation",
        description="Show spend, tokens and requests from --since to --until (both days included; by default "
        f"the last {_DEFAULT_REPORT_DAYS} days, today included), grouped by --by.",
    )
    command.add_argument("--since", type=iso_day, metavar="YYYY-MM-DD", help="first day (default: 6 days ago)")
    command.add_argument("--until", type=iso_day, metavar="YYYY-MM-DD", help="last day, included (default: today)")
    command.add_argument(
        "--by",
        choices=_GROUPINGS + _LIGHTRAG_GROUPINGS,
        default="day",
        help="one row per ... (default: day); stage, document and mode break down LightRAG spend",
    )
    command.add_argument("--format", choices=_FORMATS, default="table", help="output format (default: table)")
    command.add_argument(
        "--trend",
        action="store_true",
        help="add the average daily cost of the last complete days, its direction and the month-end projection",
    )
    command.add_argument("--days", type=_positive_int, metavar="N", help="complete days the trend averages (default 7)")
    command.set_defaults(handler=_run_report)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days of at least 1")
    return int(text)


def _run_report(args: argparse.Namespace) -> int:
    import time

    from spendwatch.exporter.periods import local_day
    from spendwatch.exporter.report import report_rows, trend
    from spendwatch.exporter.settings import load_settings

    problem = _report_usage_problem(args)
    if problem:
        print(f"spendwatch report: {problem}", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings()
    now = time.time()
    until = args.until or local_day(now, settings.timezone)
    since = args.since or until - timedelta(days=_DEFAULT_REPORT_DAYS - 1)
    if since > until:
        print(f"spendwatch report: --since {since} is after --until {until}", file=sys.stderr)
        return EXIT_USAGE
    ledger = _open(settings)
    try:
        if args.by in _LIGHTRAG_GROUPINGS:
            from spendwatch.exporter.stage_report import stage_rows

            rows = stage_rows(ledger, since, until, by=args.by)
        else:
            rows = report_rows(ledger, since, until, by=args.by)
        recent = trend(ledger, settings, days=args.days or 7, now=now) if args.trend else None
    finally:
        ledger.close()
    print(_render_report(rows, args, since, until, recent))
    return EXIT_OK


def _report_usage_problem(args: argparse.Namespace) -> str | None:
    if args.days is not None and not args.trend:
        return "--days sets the trend's window; give it with --trend"
    if args.trend and args.format == "csv":
        return "--trend does not fit in CSV; use --format table or json"
    return None


def _render_report(rows: list[dict], args: argparse.Namespace, since: date, until: date, recent) -> str:
    from spendwatch.exporter.report import format_csv, format_json, format_table, report_columns, total_row

    if args.by in _LIGHTRAG_GROUPINGS:
        from spendwatch.exporter.stage_report import stage_columns

        columns = stage_columns(args.by)
    else:
        columns = report_columns(args.by)
    if args.format == "csv":
        return format_csv(rows, columns).rstrip("\n")
    if args.format == "json":
        document = {"since": since, "until": until, "by": args.by, "rows": rows}
        if recent is not None:
            document["trend"] = recent.as_dict()
        return format_json(document)
    heading = f"spend from {since} to {until} (both included), by {args.by}"
    totalled = rows if args.by in _LIGHTRAG_GROUPINGS else [*rows, total_row(rows, args.by)]
    table = format_table(totalled, columns) if rows else "no calls in this period"
    return "\n".join([heading, "", table] + (["", str(recent)] if recent is not None else []))
