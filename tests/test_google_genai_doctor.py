"""spendwatch doctor and google-genai: its instrumentor is checked, and another google-genai instrumentation warns."""

from __future__ import annotations

from spendwatch.cli.doctor import OK, WARN
from tests.test_doctor import checks, environ, fake_distribution  # noqa: F401 - environ is a fixture


def test_the_google_genai_instrumentor_is_registered_and_its_library_supported(environ):  # noqa: F811
    result = checks(environ)["spendwatch_google_genai"]

    assert result.status == OK, result.summary


def test_the_official_google_genai_instrumentation_is_a_warning_naming_how_to_disable_it(
    environ,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    entry_points = "[opentelemetry_instrumentor]\ngoogle-genai = opentelemetry.instrumentation.google_genai:Instr\n"
    fake_distribution(tmp_path / "site", "opentelemetry-instrumentation-google-genai", "1.1b1", entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    warned = checks(environ)["other_instrumentations"]
    disabled = checks(environ | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "google-genai"})["other_instrumentations"]

    assert warned.status == WARN and "opentelemetry-instrumentation-google-genai 1.1b1" in warned.summary
    assert "Google Gen AI calls may get two spans each" in warned.summary
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=google-genai" in warned.fix
    assert "google-genai" not in disabled.summary  # (another SDK's instrumentation may be installed here)
