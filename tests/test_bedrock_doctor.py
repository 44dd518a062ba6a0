"""spendwatch doctor and the Bedrock instrumentor: its entry point is checked, and another Bedrock instrumentation
beside it (which would give each call a second span with GenAI usage) is a warning."""

from __future__ import annotations

from spendwatch.cli.doctor import OK, WARN
from tests.test_doctor import checks, environ, fake_distribution  # noqa: F401 - environ is a fixture


def test_the_bedrock_instrumentor_entry_point_is_checked(environ):  # noqa: F811
    result = checks(environ)["spendwatch_bedrock"]

    assert result.status == OK, result.summary


def test_another_bedrock_instrumentation_is_a_warning(environ, tmp_path, monkeypatch):  # noqa: F811
    entry_points = "[opentelemetry_instrumentor]\nbotocore = opentelemetry.instrumentation.botocore:Instrumentor\n"
    fake_distribution(tmp_path / "site", "opentelemetry-instrumentation-botocore", "0.55b0", entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    warned = checks(environ)["other_instrumentations"]
    disabled = checks(environ | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "botocore"})["other_instrumentations"]

    # Other instrumentations installed here (another helper's test dependencies) may be named beside it.
    assert warned.status == WARN and "opentelemetry-instrumentation-botocore 0.55b0" in warned.summary
    assert "Bedrock" in warned.summary.rpartition(": ")[2]  # "... : <SDKs> calls may get two spans each"
    assert "botocore" in warned.fix.rpartition("=")[2].split(",")
    assert disabled.status == OK or "instrumentation-botocore" not in disabled.summary
