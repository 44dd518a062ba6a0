"""Specification of ``spendwatch prices MODEL``, run as a user runs it: the console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import genai_prices
import pytest

from tests.servers import in_ci

_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
# The installed console script when there is one, else the module itself (same main()).
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]


def spendwatch(*args: str, prices_file: Path | None = None) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key != "SPENDWATCH_PRICES_FILE"}
    if prices_file is not None:
        environ["SPENDWATCH_PRICES_FILE"] = str(prices_file)
    return subprocess.run([*SPENDWATCH, *args], capture_output=True, text=True, env=environ, timeout=60)


@pytest.mark.parametrize(
    ("args", "expected_lines"),
    [
        pytest.param(
            ["gpt-4o-mini"],
            ["priced as 'gpt-4o-mini'", "input $0.15, cached input $0.075, output $0.6", "source: genai-prices"],
            id="a known model",
        ),
        pytest.param(["gpt-4o-mini-2024-07-18"], ["priced as 'gpt-4o-mini'"], id="a dated name"),
        pytest.param(["gpt-4o-mini", "--batch"], ["input $0.075", "variant: processing=batch"], id="batch"),
        pytest.param(["gpt-5", "--service-tier", "flex"], ["input $0.625", "service_tier=flex"], id="flex"),
        pytest.param(["gpt-4o-mini", "--provider", "azure.ai.openai"], ["provider: azure"], id="azure"),
        pytest.param(["gpt-5.4"], ["from 272,001 input tokens"], id="tiers"),
    ],
)
def test_prices_prints_the_price_in_force_and_exits_0(args, expected_lines):
    result = spendwatch("prices", *args)
    assert result.returncode == 0, result.stderr
    for expected in expected_lines:
        assert expected in result.stdout


def test_prices_json_is_one_object_with_per_million_prices():
    result = spendwatch("prices", "gpt-4o-mini", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "model": "gpt-4o-mini",
        "provider": "openai",
        "service_tier": None,
        "batch": False,
        "priced": True,
        "priced_as": "gpt-4o-mini",
        "source": f"genai-prices {genai_prices.__version__}",
        "usd_per_million_tokens": {"input": 0.15, "cache_read": 0.075, "output": 0.6},
        "usd_per_unit": {
            "web_search_calls": per_call("web_searches"),
            "file_search_calls": per_call("storage_searches"),
        },
        "tiers": [],
    }


def per_call(genai_unit: str, model: str = "gpt-4o-mini") -> float:
    """USD per call of a tool, from genai-prices' own data (priced per thousand calls there)."""
    model_price = genai_prices.calc_price(genai_prices.Usage(input_tokens=0), model, provider_id="openai").model_price
    return float(getattr(model_price, f"{genai_unit}_kcount") / 1000)


def test_a_model_of_an_openai_compatible_provider_is_priced_by_that_provider():
    result = spendwatch("prices", "deepseek-chat")
    assert result.returncode == 0, result.stderr
    assert "deepseek-chat (provider deepseek): priced as 'deepseek-chat'" in result.stdout
    answer = json.loads(spendwatch("prices", "deepseek-chat", "--json").stdout)
    assert (answer["priced"], answer["provider"]) == (True, "deepseek")


@pytest.mark.parametrize(
    ("args", "expected_lines"),
    [
        pytest.param(
            ["claude-sonnet-4-5", "--provider", "anthropic"],
            [
                "cache write $3.75, cache write (1 hour) $6",
                "USD per web search call: $0.01",
                "from 200,001 input tokens",
            ],
            id="cache writes, tools and tiers",
        ),
        pytest.param(["gpt-audio"], ["audio input $32, audio output $64"], id="audio"),
        pytest.param(["gpt-image-1.5"], ["image input $8", "image output $32", "cached image input $2"], id="images"),
        pytest.param(["sonar", "--provider", "perplexity"], ["USD per request: $"], id="per request"),
        pytest.param(["whisper-1"], ["USD per second of audio: $0.0001"], id="seconds of audio"),
    ],
)
def test_prices_shows_every_unit(args, expected_lines):
    result = spendwatch("prices", *args)
    assert result.returncode == 0, result.stderr
    for expected in expected_lines:
        assert expected in result.stdout


def test_every_unit_of_an_override_is_shown(tmp_path):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(
        '[models."house"]\ninput_per_mtok = 1\noutput_per_mtok = 2\ncache_write_per_mtok = 1.25\n'
        "input_audio_per_mtok = 40\nweb_search_per_call = 0.02\nper_request = 0.001\n"
    )
    result = spendwatch("prices", "house", prices_file=prices_file)
    assert result.returncode == 0, result.stderr
    assert "input $1, cached input $1, output $2, cache write $1.25, audio input $40" in result.stdout
    assert "USD per web search call: $0.02" in result.stdout and "USD per request: $0.001" in result.stdout


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["text", "json"])
def test_an_unknown_model_is_unpriced_not_free_and_exits_1(extra):
    result = spendwatch("prices", "gpt-99-ultra", *extra)
    assert result.returncode == 1
    assert "unpriced" in result.stdout and "not as free" in result.stdout


def test_an_override_file_is_named_as_the_source(tmp_path):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."my-finetune"]\ninput_per_mtok = 1.5\noutput_per_mtok = 2\n')
    result = spendwatch("prices", "my-finetune", prices_file=prices_file)
    assert result.returncode == 0, result.stderr
    assert "input $1.5, cached input $1.5, output $2" in result.stdout
    assert f"source: file {prices_file}" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no command"),
        pytest.param(["prices"], id="no model"),
        pytest.param(["prices", "gpt-4o-mini", "--provider", "nowhere"], id="unknown provider"),
        pytest.param(["no-such-command"], id="unknown command"),
    ],
)
def test_bad_usage_exits_2(args):
    assert spendwatch(*args).returncode == 2


def test_a_malformed_prices_file_prints_one_sentence_and_exits_2(tmp_path):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."x"]\ninput_per_mtok = "abc"\noutput_per_mtok = 1\n')
    result = spendwatch("prices", "gpt-4o-mini", prices_file=prices_file)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"spendwatch: SPENDWATCH_PRICES_FILE={str(prices_file)!r}: ")
    assert result.stderr.count("\n") == 1


def test_help_does_not_load_the_price_data():
    code = "import sys; from spendwatch.cli import build_parser; build_parser(); print('genai_prices' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_console_script_and_the_module_agree():
    if shutil.which("spendwatch", path=str(_VENV_SCRIPT.parent)) is None:
        (pytest.fail if in_ci() else pytest.skip)("the spendwatch console script is not installed")
    module = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "prices", "gpt-4o-mini"], capture_output=True, text=True
    )
    assert module.stdout == spendwatch("prices", "gpt-4o-mini").stdout


def test_a_prices_file_set_in_the_config_file_is_the_one_prices_shows(tmp_path):
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[models."my-finetune"]\ninput_per_mtok = 1.5\noutput_per_mtok = 2\n')
    config = tmp_path / "spendwatch.toml"
    config.write_text(f"prices_file = {str(prices_file)!r}\n")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ["SPENDWATCH_CONFIG"] = str(config)
    result = subprocess.run([*SPENDWATCH, "prices", "my-finetune"], capture_output=True, text=True, env=environ)

    assert result.returncode == 0, result.stderr
    assert f"source: file {prices_file}" in result.stdout
