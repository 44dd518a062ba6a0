"""What the ``spendwatch`` command modules share: the usage exit status, printing help, and parsing a day."""

from __future__ import annotations

import argparse
import sys
from datetime import date

__all__ = ["EXIT_USAGE", "iso_day", "usage"]

EXIT_USAGE = 2


def usage(parser: argparse.ArgumentParser) -> int:
    """A command run without its subcommand: its help on stderr, and the usage exit status."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def iso_day(text: str) -> date:
    """An argparse ``type`` for ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date written as YYYY-MM-DD") from None
