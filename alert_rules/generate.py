"""Write the Prometheus rule files from their Python sources; ``--check`` only reports drift.

Run from the repository root::

    python -m alert_rules.generate          # regenerate the committed spendwatch.rules.yml and spendwatch.alerts.yml
    python -m alert_rules.generate --check  # exit 1, naming the files, if any is out of date

(``python alert_rules/generate.py`` works as well.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ALERT_RULES_DIR = Path(__file__).resolve().parent

if not __package__:  # run as `python alert_rules/generate.py`: the sources import `alert_rules` and `dashboards`
    sys.path.insert(0, str(ALERT_RULES_DIR.parent))

from alert_rules import alerts, recording  # noqa: E402

__all__ = ["ALERT_RULES_DIR", "RENDERERS", "main"]

# Each generated file, by name, and the function that renders its text.
RENDERERS: dict[str, Callable[[], str]] = {recording.FILE_NAME: recording.render, alerts.FILE_NAME: alerts.render}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alert_rules.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, render in RENDERERS.items():
        target, rendered = ALERT_RULES_DIR / name, render()
        if target.exists() and target.read_text(encoding="utf-8") == rendered:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(rendered, encoding="utf-8")
    for target in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {os.path.relpath(target)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
