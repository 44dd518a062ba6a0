"""`opentelemetry-instrument python app.py`, the way users start spendwatch, as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from tests.conftest import FAKE_API_KEY, OTHER_OPENAI_INSTRUMENTATION

BIN = Path(sys.executable).parent
APP = textwrap.dedent(
    """
    import openai
    client = openai.OpenAI(max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}])
    print("APP-RESULT", reply.choices[0].message.content)
    """
)


def run_instrumented(tmp_path, stub, **env) -> subprocess.CompletedProcess:
    command = _instrumented_command(APP, tmp_path)
    traced = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "spendwatch-test"}
    environment = _instrumented_environment(stub, tmp_path / "ledger.db", **{**traced, **env})
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def start_instrumented(app_source: str, tmp_path, stub, ledger, **env) -> subprocess.Popen:
    """``app_source`` run under opentelemetry-instrument with no exporters, calling ``stub`` through the openai SDK and
    recording into ``ledger``; stdin, stdout and stderr are pipes (text), for a test that talks to it."""
    return subprocess.Popen(
        _instrumented_command(app_source, tmp_path),
        env=_instrumented_environment(stub, ledger, **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _instrumented_command(app_source: str, tmp_path) -> list[str]:
    app = tmp_path / "app.py"
    app.write_text(app_source)
    return [str(BIN / "opentelemetry-instrument"), sys.executable, str(app)]


def _instrumented_environment(stub, ledger, **env) -> dict[str, str]:
    """An app's environment: the stub's URL and a key for it, no OpenTelemetry exporters unless ``env`` names one,
    the ledger at ``ledger``, no /metrics port."""
    return {
        **os.environ,
        "OPENAI_API_KEY": FAKE_API_KEY,
        "OPENAI_BASE_URL": stub.base_url,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "SPENDWATCH_LEDGER": str(ledger),
        "SPENDWATCH_METRICS_ADDRESS": "off",
        **env,
    }


def console_spans(stdout: str) -> list[dict]:
    """The console exporter prints each span as an indented JSON object."""
    spans, depth, current = [], 0, []
    for line in stdout.splitlines():
        if line.startswith("{") and depth == 0:
            current = []
        if depth or line.startswith("{"):
            current.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                spans.append(json.loads("\n".join(current)))
    return spans


def test_opentelemetry_instrument_puts_cost_on_the_span(tmp_path, stub):
    result = run_instrumented(tmp_path, stub)

    assert result.returncode == 0, result.stderr
    assert "APP-RESULT This is a test reply" in result.stdout
    (span,) = [span for span in console_spans(result.stdout) if span["name"] == "chat gpt-4o-mini"]
    assert span["kind"] == "SpanKind.CLIENT"
    assert span["attributes"]["gen_ai.usage.cost"] > 0
    assert span["attributes"]["spendwatch.pricing"].startswith("genai-prices")
    assert FAKE_API_KEY not in result.stdout + result.stderr


def test_a_malformed_price_file_stops_the_app_at_start_up_with_one_sentence(tmp_path, stub):
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.my-model\ninput_per_mtok = 1")

    result = run_instrumented(tmp_path, stub, SPENDWATCH_PRICES_FILE=str(prices))

    assert result.returncode != 0
    assert "APP-RESULT" not in result.stdout
    assert "SPENDWATCH_PRICES_FILE" in result.stderr and str(prices) in result.stderr
    assert stub.requests == []


@pytest.mark.parametrize("where", ["environment", "config file"])
def test_the_prices_file_prices_the_calls_wherever_it_is_set(tmp_path, stub, where):
    # $1,000,000 per million tokens: one dollar a token, so the cost is the token count.
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-4o-mini"]\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n')
    if where == "environment":
        env = {"SPENDWATCH_PRICES_FILE": str(prices)}
    else:
        config = tmp_path / "spendwatch.toml"
        config.write_text(f"prices_file = {str(prices)!r}\n")
        env = {"SPENDWATCH_CONFIG": str(config)}

    result = run_instrumented(tmp_path, stub, **env)

    assert result.returncode == 0, result.stderr
    (span,) = [span for span in console_spans(result.stdout) if span["name"] == "chat gpt-4o-mini"]
    (usage,) = stub.usage_log
    tokens = usage.input_tokens + usage.output_tokens
    assert span["attributes"]["gen_ai.usage.cost"] == pytest.approx(tokens)
    assert span["attributes"]["spendwatch.pricing"] == f"file {prices}"
    (total,) = ledger_in(tmp_path).totals()
    assert total["cost_usd"] == pytest.approx(tokens)


@pytest.mark.parametrize("disabled", ["spendwatch_openai"])
def test_disabling_the_instrumentor_by_name_works(tmp_path, stub, disabled):
    also_disabled = f"{disabled},{OTHER_OPENAI_INSTRUMENTATION}"  # the test extra's openai-v2 would make one too
    result = run_instrumented(tmp_path, stub, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=also_disabled)

    assert result.returncode == 0, result.stderr
    assert not [span for span in console_spans(result.stdout) if span["name"] == "chat gpt-4o-mini"]


def ledger_in(tmp_path) -> Ledger:
    return Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))


@pytest.mark.parametrize(
    "otel_env",
    [
        pytest.param({}, id="with-distro"),
        pytest.param({"OTEL_PYTHON_DISTRO": "none", "OTEL_PYTHON_CONFIGURATOR": "none"}, id="without-distro"),
        pytest.param({"OTEL_TRACES_SAMPLER": "always_off"}, id="sampled-out"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none"}, id="no-span-exporter"),
    ],
)
def test_every_call_reaches_the_ledger_once_however_the_app_is_traced(tmp_path, stub, otel_env):
    result = run_instrumented(tmp_path, stub, **otel_env)

    assert result.returncode == 0, result.stderr
    ledger = ledger_in(tmp_path)
    assert ledger.call_count() == 1
    (total,) = ledger.totals()
    (usage,) = stub.usage_log
    assert total["input_tokens"] == usage.input_tokens
    assert total["cost_usd"] > 0


def test_the_lightrag_extra_installs_the_releases_the_lightrag_instrumentor_supports():
    import tomllib

    from packaging.requirements import Requirement

    from spendwatch.instrumentation.lightrag_hku.package import _instruments

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    (extra,) = project["optional-dependencies"]["lightrag"]
    (supported,) = _instruments
    assert Requirement(extra).name == Requirement(supported).name == "lightrag-hku"
    assert Requirement(extra).specifier == Requirement(supported).specifier
