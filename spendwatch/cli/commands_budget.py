"""``spendwatch status``, ``spendwatch report`` and ``spendwatch budget show|set|clear``: where the budgets stand,
what was spent, and run-time limits.

Registered by :func:`add_commands` from :func:`spendwatch.cli.build_parser`, in the CLI's pattern: an ``_add_``
function declares a subcommand's arguments, a ``_run_`` function does the work and returns the exit status. They
open the ledger the settings name (``SPENDWATCH_LEDGER``, ``SPENDWATCH_CONFIG``, ...). The budgets, time zone,
thresholds and categories the apps recorded in that ledger at start-up are known without repeating their
environment; this command's own settings win where it has them (see ``LedgerConfiguration``). Heavy imports happen
inside the handlers so ``spendwatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, timedelta

from spendwatch.cli._common import EXIT_USAGE, iso_day, usage

__all__ = ["add_commands"]

EXIT_OK = 0

_GROUPINGS = ("day", "model", "category", "operation", "provider", "service")
_LIGHTRAG_GROUPINGS = ("stage", "document", "mode")  # LightRAG spend, from the calls' recorded stage attributes
_FORMATS = ("table", "csv", "json", "focus")
_DEFAULT_REPORT_DAYS = 7
_STATUS_COLUMNS = (
    "budget",
    "period",
    "scope",
    "limit_usd",
    "limit_from",
    "spent_usd",
    "remaining_usd",
    "used",
    "level",
    "period_end",
)
_NO_BUDGETS = (
    "No budgets are configured, and no app recorded any in this ledger. Set SPENDWATCH_DAILY_BUDGET_USD or "
    "SPENDWATCH_MONTHLY_BUDGET_USD, or add [budgets.NAME] tables to the SPENDWATCH_CONFIG file."
)


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    """Register ``status``, ``report`` and ``budget`` on the CLI's subparsers."""
    _add_status_command(subcommands)
    _add_report_command(subcommands)
    _add_budget_command(subcommands)


def _open(settings):
    from spendwatch.exporter import open_ledger

    return open_ledger(settings)


def _known(ledger, settings):
    """This command's settings completed with the configuration the apps recorded in ``ledger``."""
    from spendwatch.exporter.budgets import LedgerConfiguration

    return LedgerConfiguration(ledger, settings)


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

    from spendwatch.exporter.budgets import budget_statuses, run_time_changes, status_as_dict
    from spendwatch.exporter.report import format_json, format_table
    from spendwatch.exporter.settings import load_settings

    settings = load_settings()
    now = time.time()
    _say_what_dead_journals_hold(settings)
    ledger = _open(settings)
    try:
        known = _known(ledger, settings)
        settings = known.settings()
        statuses = budget_statuses(ledger, settings, now=now)
        notes = _limit_notes(statuses, known, run_time_changes(ledger))
        decisions = ledger.guard_decisions()
        assumptions = _guard_assumptions(ledger, settings) if settings.enforce == "block" else []
    finally:
        ledger.close()
    if args.json:
        document = _status_document(statuses, settings, now, status_as_dict)
        for budget, note in zip(document["budgets"], notes, strict=True):
            budget.update(note)
        document["guard"] = {"enforce": settings.enforce, "decisions": _decisions_document(decisions)}
        if assumptions:
            document["guard"]["assumptions"] = assumptions
        print(format_json(document))
        return EXIT_OK
    print(_NO_BUDGETS if not statuses else format_table([_status_line(s) for s in statuses], _STATUS_COLUMNS))
    for line in _limit_lines(statuses, notes, known):
        print(line)
    print(f"\nguard: enforce={settings.enforce}; decisions so far: {_decisions_text(decisions)}")
    if assumptions:  # the guard's bound is the true worst case except there
        print("a call's worst case rests on an assumption where:")
        print("\n".join(f"  - {note}" for note in assumptions))
    return EXIT_OK


def _say_what_dead_journals_hold(settings) -> None:
    """Calls of processes that died wait in their journals until a live drainer (an app's, serve's) takes them in,
    within seconds. A read-only command does not replay them itself (it would write the ledger): it says so, on
    stderr, so its output stays what was asked for."""
    from spendwatch.exporter.recovery import waiting_in_dead_journals
    from spendwatch.exporter.sink import journal_directories

    waiting = waiting_in_dead_journals(journal_directories(settings.ledger))
    if waiting:
        print(
            f"note: {waiting} calls of processes that died wait in their journals and are not counted here yet; a "
            "running app or `spendwatch serve` takes them into the ledger within seconds",
            file=sys.stderr,
        )


def _guard_assumptions(ledger, settings) -> list[str]:
    """Where the guard's worst case is not a bound but an assumption: by its settings, and for the models seen."""
    from spendwatch.exporter.guard_bound import assumed_models, assumption_notes
    from spendwatch.exporter.guard_rules import guard_config

    config = guard_config(settings.raw.get("guard"), f"SPENDWATCH_CONFIG={settings.config_path!r}")
    seen = ((row["provider"], row["model"]) for row in ledger.totals() if row["operation"] != "embeddings")
    return assumption_notes(config) + assumed_models(seen, settings.price_table(), config)


def _limit_notes(statuses, known, changes: dict) -> list[dict]:
    """Per status: where its configured limit comes from, and the run-time change in force (None if none)."""
    return [
        {"configured_in": known.origin(status.name), "run_time_change": changes.get((status.name, status.period))}
        for status in statuses
    ]


def _limit_lines(statuses, notes: list[dict], known) -> list[str]:
    """Below the status table: each run-time limit in force, why, and how to go back to the configured one; and
    where budgets this command was not configured with come from."""
    lines: list[str] = []
    for status, note in zip(statuses, notes, strict=True):
        if status.limit_source == "runtime":
            lines.append(_limit_text(status, note["run_time_change"]))
    recorded = sorted({status.name for status in statuses if known.recorded(status.name)})
    lines += [f"{name}: configured as recorded at {known.origin(name)}" for name in recorded]
    return [""] + lines if lines else []


def _limit_text(status, change: dict | None) -> str:
    from spendwatch.exporter.mapping import printable
    from spendwatch.exporter.report import format_usd

    said = _change_text(change)
    configured = f"${format_usd(status.configured_limit_usd)}"
    return (
        f"{status.name}/{status.period}: the limit ${format_usd(status.limit_usd)} was set at run time{said}; "
        f"it wins over the configured {configured} until `spendwatch budget clear {printable(status.name, 60)} "
        f"{status.period}`"
    )


def _change_text(change: dict | None) -> str:
    """`` on 2026-12-06 10:02 UTC by alice@host ("conference week")``, as much of it as the ledger knows."""
    from datetime import UTC, datetime

    from spendwatch.exporter.mapping import printable

    if not change:
        return ""
    text = f" on {datetime.fromtimestamp(change['at'], UTC):%Y-%m-%d %H:%M} UTC"
    if change.get("by"):
        text += f" by {printable(str(change['by']), 80)}"
    if change.get("reason"):
        text += f" ({printable(str(change['reason']), 120)!r})"
    return text


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


def _limit_in_force(status) -> dict:
    """The columns that name a budget and the limit in force, shared by ``status`` and ``budget show``."""
    from spendwatch.exporter.budgets import describe_scope

    return {
        "budget": status.name,
        "period": status.period,
        "scope": describe_scope(status),
        "limit_usd": status.limit_usd,
        "limit_from": status.limit_source,
    }


def _status_line(status) -> dict:
    used = status.used_ratio
    return {
        **_limit_in_force(status),
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
        help="one row per ... (default: day); stage, document and mode break down LightRAG spend; service is not "
        "recorded yet",
    )
    command.add_argument(
        "--format",
        choices=_FORMATS,
        default="table",
        help="output format (default: table); focus writes FinOps FOCUS 1.2 CSV, one row per day and series",
    )
    command.add_argument(
        "--trend",
        action="store_true",
        help="add the average daily cost of the last complete days, its direction and the month-end projection",
    )
    command.add_argument("--days", type=_positive_int, metavar="N", help="complete days the trend averages (default 7)")
    command.add_argument(
        "--html",
        metavar="FILE",
        help="write the cost page to FILE instead (one self-contained HTML file: budgets, spend over the last 24 "
        "hours, 7 and 30 days by model, category, operation and LightRAG stage, alerts); other options do not apply",
    )
    command.set_defaults(handler=_run_report)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days of at least 1")
    return int(text)


def _run_report(args: argparse.Namespace) -> int:
    import time

    from spendwatch.exporter.periods import local_day
    from spendwatch.exporter.report import grouped_rows, trend
    from spendwatch.exporter.settings import load_settings

    problem = _report_usage_problem(args)
    if problem:
        print(f"spendwatch report: {problem}", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings()
    now = time.time()
    _say_what_dead_journals_hold(settings)
    ledger = _open(settings)
    try:
        settings = _known(ledger, settings).settings()  # the apps' time zone, unless this command sets one
        if args.html:
            return _write_html(ledger, settings, args.html, now)
        until = args.until or local_day(now, settings.timezone)
        since = args.since or until - timedelta(days=_DEFAULT_REPORT_DAYS - 1)
        if since > until:
            print(f"spendwatch report: --since {since} is after --until {until}", file=sys.stderr)
            return EXIT_USAGE
        if args.format == "focus":
            from spendwatch.exporter.focus import focus_rows, format_focus_csv

            print(format_focus_csv(focus_rows(ledger, settings.timezone, since, until)).rstrip("\n"))
            return EXIT_OK
        rows = grouped_rows(ledger, since, until, args.by)
        recent = trend(ledger, settings, days=args.days or 7, now=now) if args.trend else None
    finally:
        ledger.close()
    print(_render_report(rows, args, since, until, recent))
    return EXIT_OK


def _write_html(ledger, settings, path: str, now: float) -> int:
    from spendwatch.cli.commands_serve import _pricing_data_timestamp
    from spendwatch.exporter.page import write_page_file

    try:
        write_page_file(ledger, settings, path, now=now, prices_as_of=_pricing_data_timestamp())
    except OSError as error:
        print(f"spendwatch report: --html {path} cannot be written: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote the cost page to {path}")
    return EXIT_OK


def _report_usage_problem(args: argparse.Namespace) -> str | None:
    if args.days is not None and not args.trend:
        return "--days sets the trend's window; give it with --trend"
    if args.trend and args.format in ("csv", "focus"):
        return f"--trend does not fit in {args.format.upper()}; use --format table or json"
    if args.html and (args.trend or args.format != "table"):
        return "--html writes the cost page; give it without --format or --trend"
    return None


def _render_report(rows: list[dict], args: argparse.Namespace, since: date, until: date, recent) -> str:
    from spendwatch.exporter.report import (
        format_csv,
        format_json,
        format_table,
        grouped_columns,
        report_document,
        total_row,
    )

    columns = grouped_columns(args.by)
    if args.format == "csv":
        return format_csv(rows, columns).rstrip("\n")
    if args.format == "json":
        document = report_document(rows, since, until, args.by)
        if recent is not None:
            document["trend"] = recent.as_dict()
        return format_json(document)
    heading = f"spend from {since} to {until} (both included), by {args.by}"
    totalled = rows if args.by in _LIGHTRAG_GROUPINGS else [*rows, total_row(rows, args.by)]
    table = format_table(totalled, columns) if rows else "no calls in this period"
    return "\n".join([heading, "", table] + (["", str(recent)] if recent is not None else []))


# --- spendwatch budget show|set|clear -------------------------------------------------------------------------------

_BUDGET_COLUMNS = ("budget", "period", "scope", "limit_usd", "limit_from", "configured_usd", "configured_in", "changed")


def _add_budget_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "budget",
        help="show, set or clear run-time budget limits (kept and audited in the ledger)",
        description="A limit set here is kept in the ledger and wins over the configured one, in every app and "
        "server over that ledger, until it is cleared. Each change is an event in the ledger's audit trail, with "
        "who made it and why. Running apps' guards apply it at their next lease renewal (within five minutes).",
    )
    command.set_defaults(handler=lambda _: usage(command))
    actions = command.add_subparsers(title="actions", metavar="ACTION")
    show = actions.add_parser("show", help="every budget's limit in force, where it came from and why")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    show.set_defaults(handler=_run_budget_show)
    change = actions.add_parser("set", help="set a budget's limit from now on, over its configured one")
    _add_budget_arguments(change)
    change.add_argument("usd", metavar="USD", help="the new limit in USD, e.g. 80")
    change.add_argument("--reason", required=True, help="why, for the audit trail (e.g. the incident number)")
    change.set_defaults(handler=_run_budget_set)
    clear = actions.add_parser("clear", help="drop a run-time limit: the configured one is in force again")
    _add_budget_arguments(clear)
    clear.add_argument("--reason", default="", help="why, for the audit trail")
    clear.set_defaults(handler=_run_budget_clear)


def _add_budget_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("name", metavar="NAME", help="the budget's name, e.g. global")
    command.add_argument("period", choices=("day", "month"), help="which of its limits")


def _run_budget_show(args: argparse.Namespace) -> int:
    import time

    from spendwatch.exporter.budgets import budget_statuses, run_time_changes
    from spendwatch.exporter.report import format_json, format_table
    from spendwatch.exporter.settings import load_settings

    own = load_settings()
    ledger = _open(own)
    try:
        known = _known(ledger, own)
        statuses = budget_statuses(ledger, known.settings(), now=time.time())
        changes, in_force = run_time_changes(ledger), ledger.budget_limits()
        rows = [_budget_row(status, known.origin(status.name), changes) for status in statuses]
        shown = {(status.name, status.period) for status in statuses}
        rows += [_orphan_row(key, limit, changes) for key, limit in sorted(in_force.items()) if key not in shown]
    finally:
        ledger.close()
    if args.json:
        print(format_json({"budgets": rows}))
    else:
        print(format_table(rows, _BUDGET_COLUMNS) if rows else _NO_BUDGETS)
    return EXIT_OK


def _budget_row(status, origin: str, changes: dict) -> dict:
    change = changes.get((status.name, status.period))
    return {
        **_limit_in_force(status),
        "configured_usd": status.configured_limit_usd,
        "configured_in": origin,
        "changed": _change_text(change).strip() or None,
    }


def _orphan_row(key: tuple[str, str], limit: float, changes: dict) -> dict:
    """A run-time limit kept for a budget that nothing configures (any more): shown, so it can be cleared."""
    name, period = key
    return {
        "budget": name,
        "period": period,
        "scope": None,
        "limit_usd": limit,
        "limit_from": "runtime",
        "configured_usd": None,
        "configured_in": "not configured (no effect until a budget of this name is)",
        "changed": _change_text(changes.get(key)).strip() or None,
    }


def _run_budget_set(args: argparse.Namespace) -> int:
    from spendwatch.exporter.budgets import Budgets
    from spendwatch.exporter.report import format_usd
    from spendwatch.exporter.settings import load_settings

    own = load_settings()
    ledger = _open(own)
    try:
        budgets = Budgets(ledger, _known(ledger, own).settings())
        try:
            status = budgets.set_limit(args.name, args.period, args.usd, reason=args.reason, by=_who())
        except (KeyError, ValueError) as error:
            print(f"spendwatch budget set: {error.args[0]}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        ledger.close()
    print(
        f"{status.name}/{status.period}: the limit is ${format_usd(status.limit_usd)} from now on, over the "
        f"configured ${format_usd(status.configured_limit_usd)}, until "
        f"`spendwatch budget clear {status.name} {status.period}`"
    )
    return EXIT_OK


def _run_budget_clear(args: argparse.Namespace) -> int:
    from spendwatch.exporter.report import format_usd
    from spendwatch.exporter.settings import load_settings

    ledger = _open(load_settings())
    try:
        dropped = ledger.clear_budget_limit(args.name, args.period, reason=args.reason, by=_who())
    finally:
        ledger.close()
    if dropped is None:
        print(f"{args.name}/{args.period} has no run-time limit: its configured limit is in force")
    else:
        print(
            f"{args.name}/{args.period}: the run-time limit ${format_usd(dropped)} is cleared; the configured "
            "limit is in force again"
        )
    return EXIT_OK


def _who() -> str:
    """Who changed a limit, for the audit trail: the login and host, as far as this machine can tell."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password database
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"
