"""Start-up: bad configuration as one sentence, spend counted when OpenTelemetry's own start-up fails, and libraries
patched only when the app imports them. Each runs real interpreters, as users start them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from spendwatch.cli.doctor import WARN, run_checks
from tests import test_auto_instrumentation as auto_instrumentation
from tests.conftest import FAKE_API_KEY
from tests.test_auto_instrumentation import BIN, console_spans, ledger_in, run_instrumented

NOT_IMPORTED_AT_START = textwrap.dedent(
    """
    import sys
    print("IMPORTED-AT-START", sorted(name for name in ("openai", "lightrag") if name in sys.modules))
    """
)


def one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- bad configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, value, raised_by",
    [
        ("SPENDWATCH_ENFORCE", "sometimes", "the post-instrument hook"),
        ("SPENDWATCH_PRICES_FILE", "prices.toml", "the instrumentor"),
    ],
)
def test_bad_configuration_under_opentelemetry_instrument_is_one_sentence_and_exit_2(
    tmp_path, stub, setting, value, raised_by
):
    (tmp_path / "prices.toml").write_text("[models.my-model\ninput_per_mtok = 1")
    if setting == "SPENDWATCH_PRICES_FILE":
        value = str(tmp_path / value)

    result = run_instrumented(tmp_path, stub, **{setting: value})

    assert result.returncode == 2, result.stderr
    sentence = one_sentence(result.stderr)
    assert sentence.startswith(f"spendwatch: {setting}={value!r}"), sentence
    assert "APP-RESULT" not in result.stdout
    assert stub.requests == []


def test_bad_configuration_through_configure_is_one_sentence_and_a_failure(tmp_path):
    program = "import spendwatch; spendwatch.configure(enforce='sometimes', metrics_address='off')"
    environment = {**os.environ, "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db")}

    result = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True)

    assert result.returncode != 0
    assert one_sentence(result.stderr).startswith("spendwatch: enforce='sometimes'"), result.stderr


def test_bad_configuration_in_the_cli_is_one_sentence_and_exit_2(tmp_path):
    environment = {**os.environ, "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"), "SPENDWATCH_ENFORCE": "sometimes"}

    result = subprocess.run([str(BIN / "spendwatch"), "status"], env=environment, capture_output=True, text=True)

    assert result.returncode == 2
    assert one_sentence(result.stderr).startswith("spendwatch: SPENDWATCH_ENFORCE='sometimes'")


# --- OpenTelemetry's start-up fails ---------------------------------------------------------------------------------


MISSING_EXPORTER = {"OTEL_TRACES_EXPORTER": "spendwatch_test_missing_exporter"}


def test_a_failed_opentelemetry_start_up_still_counts_every_call_and_says_so(tmp_path, stub):
    # opentelemetry-distro's configurator raises for an exporter that is not installed (as for its default, otlp,
    # without opentelemetry-exporter-otlp); OpenTelemetry then loads no instrumentor and no post-instrument hook.
    result = run_instrumented(tmp_path, stub, **MISSING_EXPORTER)

    assert result.returncode == 0, result.stderr
    assert "APP-RESULT This is a test reply" in result.stdout
    assert "Failed to auto initialize OpenTelemetry" in result.stderr
    assert result.stderr.count("spendwatch: OpenTelemetry's start-up failed") == 1, result.stderr
    ledger = ledger_in(tmp_path)
    assert ledger.call_count() == 1
    (total,) = ledger.totals()
    assert total["cost_usd"] > 0


def test_doctor_warns_about_an_exporter_that_is_named_but_not_installed(tmp_path):
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("SPENDWATCH_", "OTEL_"))}
    environ |= {"SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"), "SPENDWATCH_METRICS_ADDRESS": "off"}
    environ |= MISSING_EXPORTER | {"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}

    results = {result.name: result for result in run_checks(environ)}

    exporters = results["opentelemetry_exporters"]
    assert exporters.status == WARN
    assert "OTEL_TRACES_EXPORTER=spendwatch_test_missing_exporter" in exporters.summary
    assert "OTEL_TRACES_EXPORTER=none" in exporters.fix
    assert results["opentelemetry_sdk"].status != WARN  # the test environment has the SDK and the distro


# --- lazy instrumentation -------------------------------------------------------------------------------------------


def test_a_process_that_never_imports_the_libraries_does_not_load_them(tmp_path, stub, monkeypatch):
    result = run_program(tmp_path, stub, monkeypatch, NOT_IMPORTED_AT_START)

    assert result.returncode == 0, result.stderr
    assert "IMPORTED-AT-START []" in result.stdout


def test_openai_imported_after_start_up_is_instrumented(tmp_path, stub, monkeypatch):
    result = run_program(tmp_path, stub, monkeypatch, NOT_IMPORTED_AT_START + auto_instrumentation.APP)

    assert result.returncode == 0, result.stderr
    assert "IMPORTED-AT-START []" in result.stdout
    (span,) = [span for span in console_spans(result.stdout) if span["name"] == "chat gpt-4o-mini"]
    assert span["attributes"]["gen_ai.usage.cost"] > 0
    assert ledger_in(tmp_path).call_count() == 1


def run_program(tmp_path, stub, monkeypatch, program: str) -> subprocess.CompletedProcess:
    """``run_instrumented`` (the way users start an app) with ``program`` as the app."""
    monkeypatch.setattr(auto_instrumentation, "APP", program)
    return run_instrumented(tmp_path, stub)


LAZY_CYCLE = textwrap.dedent(
    """
    import sys
    from wrapt import FunctionWrapper
    from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor
    from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor

    def patched():
        from lightrag.lightrag import LightRAG
        from openai.resources.chat.completions import Completions

        targets = ((Completions, "create"), (LightRAG, "ainsert"))
        return tuple(isinstance(vars(owner)[name], FunctionWrapper) for owner, name in targets)

    cancelled = sys.argv[1] == "uninstrumented before the import"
    instrumentors = [OpenAIInstrumentor(), LightRAGInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument()
        if cancelled:
            instrumentor.uninstrument()
    assert "openai" not in sys.modules and "lightrag" not in sys.modules
    print("ON-IMPORT", patched())
    for instrumentor in instrumentors:
        if not cancelled:
            instrumentor.uninstrument()
    print("UNINSTRUMENTED", patched())
    for instrumentor in instrumentors:
        instrumentor.instrument()  # both imported by now: patched at once
    print("INSTRUMENTED-AFTER-THE-IMPORT", patched())
    """
)


@pytest.mark.parametrize(
    "case, patched_on_import",
    [("instrumented before the import", True), ("uninstrumented before the import", False)],
)
def test_a_library_is_patched_when_imported_unless_uninstrumented_and_at_once_when_imported_already(
    case, patched_on_import
):
    environment = {**os.environ, "OPENAI_API_KEY": FAKE_API_KEY}
    command = [sys.executable, "-c", LAZY_CYCLE, case]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert f"ON-IMPORT {(patched_on_import, patched_on_import)}" in result.stdout
    assert "UNINSTRUMENTED (False, False)" in result.stdout
    assert "INSTRUMENTED-AFTER-THE-IMPORT (True, True)" in result.stdout
