"""``spendwatch doctor`` and the Anthropic instrumentor: its entry point is active, and another instrumentation of
the anthropic SDK installed beside it is a warning naming how to turn it off."""

from __future__ import annotations

from spendwatch.cli.doctor import OK, WARN
from tests.test_doctor import checks, environ, fake_distribution  # noqa: F401 - environ is a fixture


def test_the_anthropic_instrumentor_is_active_when_anthropic_is_installed(environ):  # noqa: F811
    result = checks(environ)["spendwatch_anthropic"]

    assert result.status == OK and "active for anthropic" in result.summary


def test_openllmetrys_anthropic_instrumentation_is_a_warning(environ, tmp_path, monkeypatch):  # noqa: F811
    entry_points = "[opentelemetry_instrumentor]\nanthropic = opentelemetry.instrumentation.anthropic:Instrumentor\n"
    fake_distribution(tmp_path / "site", "opentelemetry-instrumentation-anthropic", "0.47.0", entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    warned = checks(environ)["other_instrumentations"]
    disabled = checks(environ | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "anthropic"})["other_instrumentations"]

    assert warned.status == WARN and "opentelemetry-instrumentation-anthropic 0.47.0" in warned.summary
    assert "Anthropic calls may get two spans each" in warned.summary
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=anthropic" in warned.fix
    assert "anthropic" not in disabled.summary  # (another SDK's instrumentation may be installed here too)
