"""spendwatch under ``opentelemetry-instrument``, with or without ``opentelemetry-distro``.

OpenTelemetry's ``sitecustomize`` calls ``initialize()``, which loads the instrumentors from their entry points and
then calls :func:`attach_exporter`, our ``opentelemetry_post_instrument`` hook. Two things go wrong there on their
own, and :func:`guard_opentelemetry_startup` (run from ``spendwatch-otel-startup.pth``, see ``spendwatch/_build.py``,
before ``sitecustomize``) wraps ``initialize()`` against both:

- Bad configuration is a :class:`ConfigError`, a ``SystemExit``: raised inside ``sitecustomize`` it reads as an
  interpreter crash (``Fatal Python error: init_import_site`` and a traceback). It becomes its one sentence on
  stderr and exit status 2, as in the CLI.
- When the user's OpenTelemetry set-up fails (the distro's default ``otlp`` exporter not installed, say),
  ``initialize()`` logs the error and loads neither instrumentors nor post-instrument hooks. The ledger, budgets,
  guard and ``/metrics`` must not depend on that set-up, so spendwatch then attaches by itself and says so.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import NoReturn

__all__ = ["attach_exporter", "exit_with_sentence", "guard_opentelemetry_startup"]

EXIT_USAGE = 2  # as the CLI exits on bad configuration
_logger = logging.getLogger("spendwatch")
_hook_ran = False


def attach_exporter() -> None:
    """The ``opentelemetry_post_instrument`` hook: attach the ledger, guard and ``/metrics``."""
    global _hook_ran
    _hook_ran = True
    _attach_or_exit()


def _attach_or_exit() -> None:
    from spendwatch import runtime
    from spendwatch.instrumentation.errors import ConfigError

    try:
        runtime.attach()
    except ConfigError as error:
        exit_with_sentence(error)


def exit_with_sentence(error: BaseException) -> NoReturn:
    """Stop the process at start-up with the configuration error's one sentence. ``os._exit``: a ``SystemExit`` would
    be turned into a fatal error by ``site`` while ``sitecustomize`` is still running."""
    sys.stderr.write(f"{error}\n")
    sys.stderr.flush()
    os._exit(EXIT_USAGE)


def guard_opentelemetry_startup() -> None:
    """Wrap OpenTelemetry's ``initialize()`` before ``sitecustomize`` imports it (see the module's docstring)."""
    try:
        from opentelemetry.instrumentation import auto_instrumentation
    except ImportError:
        return
    original = getattr(auto_instrumentation, "initialize", None)
    if original is None or getattr(original, "spendwatch_guarded", False):
        return

    @functools.wraps(original)
    def initialize(*args, **kwargs):
        from spendwatch.instrumentation.errors import ConfigError

        try:
            original(*args, **kwargs)
        except ConfigError as error:  # raised by an instrumentor's _instrument(), e.g. a malformed prices file
            exit_with_sentence(error)
        if not _hook_ran:
            _attach_without_opentelemetry()

    initialize.spendwatch_guarded = True
    auto_instrumentation.initialize = initialize


def _attach_without_opentelemetry() -> None:
    try:
        _attach_or_exit()
    except Exception as error:  # noqa: BLE001 - the app starts whatever spendwatch's own start-up does
        _logger.warning("spendwatch: OpenTelemetry's start-up failed, and spendwatch could not attach: %s", error)
        return
    _logger.warning(
        "spendwatch: OpenTelemetry's start-up failed (see the error above), so its exporters send nothing; "
        "spendwatch instrumented this process itself and records spend in its ledger, budgets and /metrics as usual"
    )
