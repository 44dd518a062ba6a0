"""The ``spendwatch`` command line.

One subcommand per job, each made of two small functions: ``_add_<name>_command(subcommands)`` declares its
arguments and sets ``handler``, and ``_run_<name>(args) -> int`` does the work and returns the exit status. To add a
subcommand, write that pair and call the ``_add_`` function from :func:`build_parser`.

Exit status: 0 on success, 1 when the answer is "no" (an unpriced model), 2 on bad usage or bad configuration
(a :class:`ConfigError` prints its one sentence to stderr), 141 when the output's reader went away (`| head`).
Handlers import what they need when they run, so ``spendwatch --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence

from spendwatch.cli._common import EXIT_USAGE, usage
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.pricing import OPENAI_COMPATIBLE

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_NO = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program whose reader went away (`| head`)

# Modules that add their own subcommands with add_commands(subcommands).
_COMMAND_MODULES = (
    "spendwatch.cli.commands_budget",
    "spendwatch.cli.commands_serve",
    "spendwatch.cli.commands_alert",
    "spendwatch.cli.commands_audit",
    "spendwatch.cli.commands_doctor",
    "spendwatch.cli.commands_assets",
    "spendwatch.cli.commands_quarantine",
    "spendwatch.cli.commands_leases",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendwatch", description="See and cap what LLM API calls cost.")
    parser.add_argument("--version", action="version", version=f"spendwatch {_version()}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_prices_command(subcommands)
    _add_demo_command(subcommands)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(subcommands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("spendwatch")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        return usage(parser)
    try:
        status = handler(args)
        sys.stdout.flush()  # here, so a reader that went away (`| head`) is caught below and not at exit
        return status
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # As the Python docs' note on SIGPIPE advises: whatever is still buffered goes to devnull, so the flush at
        # exit raises no second error. The status is what a shell reports for a program ended by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# --- spendwatch prices MODEL --------------------------------------------------------------------------------------


def _add_prices_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "prices",
        help="show the price in force for a model and where it came from",
        description="Show every unit price in force for MODEL now (USD per million tokens of each kind, per tool "
        "call, request, second of audio...), its tiers, and its source (the bundled genai-prices data or the "
        "SPENDWATCH_PRICES_FILE overrides). Exits 1 when MODEL is unpriced.",
    )
    command.add_argument("model", metavar="MODEL", help="model name as sent to the API, e.g. gpt-4o-mini")
    command.add_argument(
        "--provider",
        type=_price_provider,
        default=OPENAI_COMPATIBLE,
        help="gen_ai.provider.name (openai, azure.ai.openai, anthropic, gcp.gemini, aws.bedrock, deepseek, groq, "
        f"mistral_ai, x_ai, openrouter...); default {OPENAI_COMPATIBLE}: OpenAI's price when OpenAI lists MODEL, "
        "else the one provider that lists it, as for an OpenAI client on an unknown host",
    )
    command.add_argument("--service-tier", metavar="TIER", help="the response's service tier, e.g. flex or priority")
    command.add_argument("--batch", action="store_true", help="price as a Batch API call")
    command.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    command.set_defaults(handler=_run_prices)


def _price_provider(text: str) -> str:
    """An argparse ``type``: a provider the bundled price data knows."""
    from spendwatch.instrumentation.pricing.bundled import provider_known

    if not provider_known(text):
        raise argparse.ArgumentTypeError(f"{text!r} is no provider the bundled price data knows")
    return text


def _run_prices(args: argparse.Namespace) -> int:
    from spendwatch.exporter.settings import load_settings

    table = load_settings().price_table()  # the prices_file of the environment or of the SPENDWATCH_CONFIG file
    options = {"provider": args.provider, "service_tier": args.service_tier, "batch": args.batch}
    details = table.details(args.model, **options)
    if args.json:
        # The provider whose price it is: the one found for openai-compatible.
        answer = {"model": args.model, **options, **details}
        print(json.dumps(answer, indent=2))
    else:
        print(table.describe(args.model, **options))
    return EXIT_OK if details["priced"] else EXIT_NO


# --- spendwatch demo ----------------------------------------------------------------------------------------------


def _add_demo_command(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "demo",
        help="run a small workload against a local OpenAI-compatible stub and show what it cost",
        description="Start a local OpenAI-compatible stub, run a workload through the real openai SDK under "
        "opentelemetry-instrument with an embedded SQLite ledger and /metrics up, and print calls, costs, "
        "budget gauges and budget status. Works offline.",
    )
    command.add_argument("--ledger", help="ledger to write (default: a fresh temporary SQLite file)")
    command.add_argument("--hold", action="store_true", help="keep /metrics up until Ctrl-C")
    command.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from spendwatch.demo.run import run_demo

    return run_demo(ledger=args.ledger, hold=args.hold)
