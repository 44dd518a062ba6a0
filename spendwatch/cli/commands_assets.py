"""``spendwatch assets``: write out the alert rules, Alertmanager config, runbook and Grafana dashboards of the wheel.

Wired into :func:`spendwatch.cli.build_parser` by ``add_commands(subcommands)``::

    spendwatch assets --dest DIR [--runbook-base URL] [--force]
    spendwatch assets --check DIR_OR_FILE

The files ship as package data of ``spendwatch.alert_rules`` and ``spendwatch.dashboards`` (the repository's
``alert_rules/`` and ``dashboards/``), and ``--dest`` writes them in that same layout, ``DIR/alert_rules/`` and
``DIR/dashboards/``, so the README's paths read the same from a pip install and from a checkout. A file already in
``DIR`` is kept unless ``--force``: it may hold your Alertmanager secrets.

Each alert's ``runbook_url`` is ``alert_rules/runbook.md#<alert>`` as shipped, a path that is no link in Slack or
mail; ``--runbook-base URL`` (where you publish runbook.md) writes the alerts from their source,
:mod:`spendwatch.alert_rules.alerts`, with that base, so each is ``URL#<alert>``. ``amtool check-config`` accepts
alertmanager.yml with its placeholders still in, so ``--check`` looks for them: a value holding ``REPLACE`` or an
``example.com`` address (a domain reserved for examples, never a real relay or inbox). It exits 1 when one is left.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

from spendwatch.alert_rules import alerts
from spendwatch.cli._common import EXIT_USAGE

__all__ = [
    "ALERT_RULES_PACKAGE",
    "DASHBOARDS_PACKAGE",
    "add_commands",
    "alert_rule_files",
    "packaged_directory",
    "placeholders",
    "write_assets",
]

EXIT_OK = 0
EXIT_PLACEHOLDERS = 1

ALERT_RULES_PACKAGE = "spendwatch.alert_rules"
DASHBOARDS_PACKAGE = "spendwatch.dashboards"
ALERTMANAGER_CONFIG = "alertmanager.yml"
# What --dest writes: (package, file-name patterns, folder under DIR).
_SHIPPED = (
    (ALERT_RULES_PACKAGE, ("*.rules.yml", "*.alerts.yml", ALERTMANAGER_CONFIG, "runbook.md"), "alert_rules"),
    (DASHBOARDS_PACKAGE, ("*.json",), "dashboards"),
)
_PLACEHOLDER = re.compile(r"REPLACE|\b(?i:example\.com)\b")


def packaged_directory(package: str) -> Path:
    """The directory holding ``package``'s files: the wheel's copy, or the repository's folder in a checkout."""
    return Path(str(resources.files(package)))


def alert_rule_files() -> list[Path]:
    """The shipped Prometheus rule files, recording rules first (the alerts read them)."""
    directory = packaged_directory(ALERT_RULES_PACKAGE)
    return [*sorted(directory.glob("*.rules.yml")), *sorted(directory.glob("*.alerts.yml"))]


def placeholders(text: str) -> list[tuple[int, str]]:
    """(line number, the line without its comment) for every value still holding a placeholder."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = _without_comment(line)
        if _PLACEHOLDER.search(value):
            found.append((number, value.strip()))
    return found


def _without_comment(line: str) -> str:
    """The line up to a YAML comment: a ``#`` at the start or after a space, outside quotes."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def write_assets(dest: Path, *, runbook_base: str | None = None, force: bool = False) -> list[tuple[Path, bool]]:
    """Write every shipped file under ``dest``; (path, written) for each, written False for a file kept as it was."""
    results = []
    for package, patterns, folder in _SHIPPED:
        source_dir = packaged_directory(package)
        target_dir = dest / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        for source in sorted({path for pattern in patterns for path in source_dir.glob(pattern)}):
            target = target_dir / source.name
            if target.exists() and not force:
                results.append((target, False))
                continue
            text = source.read_text(encoding="utf-8")
            if runbook_base and source.name == alerts.FILE_NAME:
                text = alerts.render(runbook_base)
            target.write_text(text, encoding="utf-8")
            results.append((target, True))
    return results


# --- the command ---------------------------------------------------------------------------------------------------


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "assets",
        help="write out the shipped alert rules, Alertmanager config and Grafana dashboards",
        description="Write the Prometheus rules, Alertmanager config, runbook (DIR/alert_rules/) and Grafana "
        "dashboards (DIR/dashboards/) shipped with spendwatch, or check an alertmanager.yml for placeholders "
        "left in. Files already in DIR are kept unless --force.",
    )
    action = command.add_mutually_exclusive_group(required=True)
    action.add_argument("--dest", metavar="DIR", type=Path, help="where to write the files")
    action.add_argument(
        "--check",
        metavar="PATH",
        type=Path,
        help="an alertmanager.yml, or a directory holding one (or alert_rules/alertmanager.yml): exit 1 when a "
        "REPLACE or example.com placeholder is left in",
    )
    command.add_argument(
        "--runbook-base",
        metavar="URL",
        help="where you publish runbook.md, e.g. https://wiki.example.org/spendwatch/runbook.md: each alert's "
        "runbook_url becomes URL#<alert> (default: the relative alert_rules/runbook.md#<alert>)",
    )
    command.add_argument("--force", action="store_true", help="overwrite files already in DIR")
    command.set_defaults(handler=_run_assets)


def _run_assets(args: argparse.Namespace) -> int:
    if args.check is not None:
        return _run_check(args.check)
    if args.runbook_base and "://" not in args.runbook_base:
        print(
            f"--runbook-base must be an absolute URL such as https://wiki.example.org/spendwatch/runbook.md, "
            f"not {args.runbook_base!r}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    results = write_assets(args.dest, runbook_base=args.runbook_base, force=args.force)
    for path, written in results:
        print(f"{'wrote' if written else 'kept (exists; --force to overwrite)'}: {path}")
    _print_next_steps(args.dest, results, args.runbook_base)
    return EXIT_OK


def _print_next_steps(dest: Path, results: list[tuple[Path, bool]], runbook_base: str | None) -> None:
    config = dest / "alert_rules" / ALERTMANAGER_CONFIG
    left = placeholders(config.read_text(encoding="utf-8"))
    if left:
        print(
            f"\n{config} has {len(left)} placeholders (REPLACE, example.com) to fill in; "
            f"`spendwatch assets --check {config}` lists them."
        )
    written_alerts = [path for path, written in results if written and path.name.endswith(".alerts.yml")]
    if runbook_base is None and written_alerts:
        # Not --force: that would also overwrite an alertmanager.yml that by then holds the user's secrets.
        print(
            "Each alert's runbook_url is the relative alert_rules/runbook.md#<alert>, which is no link in Slack or "
            f"mail: publish runbook.md, delete {written_alerts[0]} and run again with --runbook-base URL."
        )


def _run_check(path: Path) -> int:
    config = _alertmanager_config_at(path)
    if config is None:
        print(f"spendwatch assets --check: no {ALERTMANAGER_CONFIG} at {path}", file=sys.stderr)
        return EXIT_USAGE
    left = placeholders(config.read_text(encoding="utf-8"))
    for number, line in left:
        print(f"{config}:{number}: placeholder left in: {line}")
    if left:
        print(f"{len(left)} placeholders left in {config}: replace them with your relay, addresses and URLs")
        return EXIT_PLACEHOLDERS
    print(f"no placeholders left in {config}")
    return EXIT_OK


def _alertmanager_config_at(path: Path) -> Path | None:
    candidates = [path] if path.is_file() else [path / ALERTMANAGER_CONFIG, path / "alert_rules" / ALERTMANAGER_CONFIG]
    return next((candidate for candidate in candidates if candidate.is_file()), None)
