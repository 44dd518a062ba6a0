"""Specification of ``spendwatch doctor``: each check on a real ledger, real entry points and a real ``/metrics``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from spendwatch.cli.doctor import (
    FAIL,
    OK,
    WARN,
    DoctorContext,
    check_instrumentor,
    printable,
    run_checks,
    shown_location,
)
from spendwatch.exporter import Ledger, LedgerEntry
from spendwatch.exporter.budgets import BudgetStatus
from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.server import start_metrics_server
from spendwatch.instrumentation.pricing import PriceTable
from spendwatch.instrumentation.records import UsageRecord
from spendwatch.runtime import instrumentation_disabled
from tests.servers import free_port

SPENDWATCH = Path(sys.executable).parent / "spendwatch"
NOW = time.time()


@pytest.fixture
def environ(tmp_path) -> dict[str, str]:
    """A clean environment: a ledger path in tmp_path (not created), /metrics off, no budget."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith(("SPENDWATCH_", "OTEL_"))}
    return kept | {"SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"), "SPENDWATCH_METRICS_ADDRESS": "off"}


def record(model: str = "gpt-4o-mini", *, cost: float | None = 0.01, at: float = NOW) -> UsageRecord:
    return UsageRecord("openai", "chat", model, input_tokens=10, output_tokens=5, cost_usd=cost, start_time=at)


@pytest.fixture
def write_ledger(environ):
    """Write usage records into the environment's ledger, as an instrumented app would have."""

    def write(*records: UsageRecord) -> str:
        ledger = Ledger(open_backend(environ["SPENDWATCH_LEDGER"]), ZoneInfo("UTC"))
        try:
            ledger.ingest([LedgerEntry(f"entry-{index}", item) for index, item in enumerate(records)])
        finally:
            ledger.close()
        return environ["SPENDWATCH_LEDGER"]

    return write


def checks(environ, now: float = NOW) -> dict:
    return {result.name: result for result in run_checks(environ, now)}


def doctor(environ, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPENDWATCH), "doctor", *flags], env=environ, capture_output=True, text=True, timeout=60)


# --- the command --------------------------------------------------------------------------------------------------


def test_a_fresh_install_has_warnings_but_no_failure_and_exits_0(environ):
    finished = doctor(environ)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "warn  budgets" in finished.stdout
    assert "fix: export SPENDWATCH_DAILY_BUDGET_USD" in finished.stdout
    assert finished.stdout.rstrip().endswith("0 failures")


def test_doctor_changes_nothing_it_does_not_create_a_missing_ledger(environ):
    (ledger,) = [check for name, check in checks(environ).items() if name == "ledger"]

    assert ledger.status == WARN and "no ledger" in ledger.summary
    assert not Path(environ["SPENDWATCH_LEDGER"]).exists()


def test_json_output_has_every_check_with_its_status_and_fix(environ):
    document = json.loads(doctor(environ, "--json").stdout)

    names = [check["name"] for check in document["checks"]]
    assert names == list(checks(environ))
    assert {"configuration", "spendwatch_openai", "other_instrumentations", "ledger", "price_data"} <= set(names)
    assert {"unpriced_models", "metrics_endpoint", "budgets", "clock"} <= set(names)
    assert all(set(check) == {"name", "status", "summary", "fix"} for check in document["checks"])
    assert document["ok"] is True and document["counts"]["fail"] == 0


def test_bad_configuration_fails_naming_the_setting_and_exits_1(environ):
    finished = doctor(environ | {"SPENDWATCH_ENFORCE": "sometimes"})

    assert finished.returncode == 1
    assert "fail  configuration" in finished.stdout and "SPENDWATCH_ENFORCE='sometimes'" in finished.stdout
    assert "not checked" in finished.stdout


# --- instrumentors ------------------------------------------------------------------------------------------------


def fake_distribution(site: Path, name: str, version: str, entry_points: str = "") -> None:
    """A minimal installed distribution (dist-info), found by importlib.metadata once ``site`` is on sys.path."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


def test_our_instrumentors_are_active_when_their_libraries_are_installed(environ):
    results = checks(environ)

    assert results["spendwatch_openai"].status == OK
    assert "active for openai" in results["spendwatch_openai"].summary
    assert results["spendwatch_lightrag"].status == OK
    assert results["exporter_hook"].status == OK


def test_an_openai_version_outside_the_supported_range_fails(environ, tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "openai", "0.28.1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    result = checks(environ)["spendwatch_openai"]

    assert result.status == FAIL
    assert "openai 0.28.1 is installed" in result.summary and "not instrumented" in result.summary
    assert result.fix == "pip install 'openai >= 1.26.0'"


def test_an_instrumentor_disabled_the_opentelemetry_way_is_a_warning(environ):
    result = checks(environ | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask, spendwatch_openai"})[
        "spendwatch_openai"
    ]

    assert result.status == WARN and "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" in result.summary


def test_an_entry_point_that_is_not_registered_fails(environ):
    result = check_instrumentor(DoctorContext(environ, NOW), "spendwatch_nothing", "nothing")

    assert result.status == FAIL and "no opentelemetry_instrumentor entry point" in result.summary


def test_another_openai_instrumentation_is_a_warning_naming_how_to_disable_it(environ, tmp_path, monkeypatch):
    entry_points = "[opentelemetry_instrumentor]\nopenai_v2 = opentelemetry.instrumentation.openai_v2:Instrumentor\n"
    fake_distribution(tmp_path / "site", "opentelemetry-instrumentation-openai-v2", "2.1b0", entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    warned = checks(environ)["other_instrumentations"]
    disabled = checks(environ | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2"})["other_instrumentations"]

    assert warned.status == WARN and "opentelemetry-instrumentation-openai-v2 2.1b0" in warned.summary
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=openai_v2" in warned.fix
    assert disabled.status == OK


def test_openlit_installed_is_a_warning_even_without_an_entry_point(environ, tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "openlit", "1.33.0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    environ["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "openai"  # the test extra's openai-v2, out of the way

    result = checks(environ)["other_instrumentations"]

    assert result.status == WARN and "OpenLIT" in result.summary and result.fix == "pip uninstall it"


# --- ledger, prices, unpriced -------------------------------------------------------------------------------------


def test_an_existing_ledger_opens_and_the_write_test_leaves_no_trace(environ, write_ledger):
    location = write_ledger(record(), record())

    result = checks(environ)["ledger"]

    assert result.status == OK and "takes writes (2 calls recorded)" in result.summary
    backend = open_backend(location)
    assert not [key for (key,) in backend.select("SELECT key FROM spendwatch_meta") if key.startswith("doctor")]
    assert backend.select("SELECT COUNT(*) FROM events") == [(0,)]
    backend.close()


def test_a_file_that_is_not_a_ledger_fails(environ):
    Path(environ["SPENDWATCH_LEDGER"]).write_text("not a database, just text\n" * 100)

    result = checks(environ)["ledger"]

    assert result.status == FAIL and "SPENDWATCH_LEDGER" in result.summary


def test_a_postgres_ledger_the_user_cannot_write_fails_without_showing_the_password(environ, postgres_url):
    import psycopg

    Ledger(open_backend(postgres_url), ZoneInfo("UTC")).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP ROLE IF EXISTS doctor_reader")
        connection.execute("CREATE ROLE doctor_reader LOGIN PASSWORD 'hunter2-reader'")
        connection.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO doctor_reader")
    reader_url = postgres_url.replace("postgres@", "doctor_reader:hunter2-reader@")

    results = run_checks(environ | {"SPENDWATCH_LEDGER": reader_url}, NOW)

    ledger = next(result for result in results if result.name == "ledger")
    assert ledger.status == FAIL, ledger
    assert "hunter2-reader" not in json.dumps([result.as_dict() for result in results])


def test_models_called_without_a_price_are_listed_until_a_prices_file_prices_them(environ, write_ledger, tmp_path):
    write_ledger(record("my-finetune", cost=None), record("my-finetune", cost=None), record("gpt-4o-mini"))
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-finetune"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n')

    listed = checks(environ)["unpriced_models"]
    priced = checks(environ | {"SPENDWATCH_PRICES_FILE": str(prices)})["unpriced_models"]

    assert listed.status == WARN and "my-finetune (2 calls)" in listed.summary and "gpt-4o-mini" not in listed.summary
    assert "SPENDWATCH_PRICES_FILE" in listed.fix
    assert priced.status == OK and "priced now" in priced.summary


@pytest.mark.parametrize(
    ("base_url", "local"),
    [
        ("http://127.0.0.1:11434/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://10.1.2.3/v1", True),
        ("http://vllm:8000/v1", True),
        ("https://llm.corp.example.com/v1", False),
        ("https://93.184.216.34/v1", False),
    ],
)
def test_unpriced_models_served_by_a_local_openai_base_url_are_suggested_a_price_of_zero(
    base_url, local, environ, write_ledger
):
    write_ledger(record("llama3.1:8b", cost=None))

    result = checks(environ | {"OPENAI_BASE_URL": base_url})["unpriced_models"]

    assert result.status == WARN and "llama3.1:8b (1 call)" in result.summary
    assert ("input_per_mtok = 0" in result.fix) is local
    assert "SPENDWATCH_PRICES_FILE" in result.fix


def test_a_malformed_prices_file_fails(environ, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.broken\n")

    result = checks(environ | {"SPENDWATCH_PRICES_FILE": str(prices)})["price_overrides"]

    assert result.status == FAIL and "SPENDWATCH_PRICES_FILE" in result.summary


def test_price_data_older_than_half_a_year_is_a_warning(environ):
    stamp = PriceTable().data_timestamp

    fresh = checks(environ, now=stamp + 86400)["price_data"]
    stale = checks(environ, now=stamp + 400 * 86400)["price_data"]

    assert fresh.status == OK and "genai-prices" in fresh.summary
    assert stale.status == WARN and "400 days ago" in stale.summary and "pip install -U genai-prices" in stale.fix


# --- /metrics, budgets, clock -------------------------------------------------------------------------------------


@pytest.fixture
def metrics_server(environ, write_ledger):
    ledger = Ledger(open_backend(write_ledger(record())), ZoneInfo("UTC"))
    registry = CollectorRegistry()
    SpendCollector(ledger, registry=registry)
    server = start_metrics_server(registry, ("127.0.0.1", 0), basic_auth=("prometheus", "right-password"))
    yield server
    server.stop()
    ledger.close()


def test_metrics_answering_with_the_configured_credentials_is_ok(environ, metrics_server):
    address = {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{metrics_server.port}"}

    result = checks(environ | address | {"SPENDWATCH_METRICS_BASIC_AUTH": "prometheus:right-password"})

    assert result["metrics_endpoint"].status == OK, result["metrics_endpoint"]


def test_metrics_refusing_the_configured_credentials_fails_without_echoing_them(environ, metrics_server):
    address = {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{metrics_server.port}"}
    wrong = environ | address | {"SPENDWATCH_METRICS_BASIC_AUTH": "prometheus:wrong-password"}

    finished = doctor(wrong)

    assert finished.returncode == 1
    assert "fail  metrics_endpoint" in finished.stdout and "HTTP 401" in finished.stdout
    assert "wrong-password" not in finished.stdout + finished.stderr


def test_metrics_nobody_serves_is_a_warning_and_off_is_fine(environ):
    port = free_port()
    unserved = checks(environ | {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{port}"})["metrics_endpoint"]

    assert unserved.status == WARN and "spendwatch serve" in unserved.fix
    assert checks(environ)["metrics_endpoint"].status == OK


def test_another_program_on_the_metrics_port_is_a_warning(environ, stub):
    result = checks(environ | {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{stub.port}"})["metrics_endpoint"]

    assert result.status == WARN and "another program" in result.summary


def test_configured_budgets_are_listed(environ):
    result = checks(environ | {"SPENDWATCH_DAILY_BUDGET_USD": "50", "SPENDWATCH_ENFORCE": "block"})["budgets"]

    assert result.status == OK and result.summary == "global $50/day; enforce=block"


def test_budgets_an_app_recorded_in_the_ledger_are_listed_without_its_environment(environ, write_ledger):
    write_ledger(record())
    ledger = Ledger(open_backend(environ["SPENDWATCH_LEDGER"]), ZoneInfo("UTC"))
    ledger.add_event(
        "configuration_started", {"pid": 42, "host": "app", "budgets": [["global", "day", 10, None, None]]}
    )
    ledger.close()

    result = checks(environ)["budgets"]

    assert result.status == OK and result.summary == "global $10/day (recorded at an app's start-up); enforce=off"


def test_a_run_time_limit_over_the_configured_one_is_a_warning_that_says_how_to_clear_it(environ, write_ledger):
    ledger = Ledger(open_backend(write_ledger(record())), ZoneInfo("UTC"))
    ledger.set_budget_limit("global", "day", 75.0, reason="conference week")
    ledger.close()

    result = checks(environ | {"SPENDWATCH_DAILY_BUDGET_USD": "10"})["budgets"]

    assert result.status == WARN
    assert result.summary.startswith("global $75/day (set at run time; configured $10); enforce=off")
    assert "spendwatch budget show" in result.fix and "spendwatch budget clear global day" in result.fix


def budget_status(name: str, period: str, limit: float) -> BudgetStatus:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return BudgetStatus(name, period, limit, 0.0, start, start, {"warning": 0.75, "critical": 0.9, "exceeded": 1.0})


@pytest.mark.parametrize(
    ("served", "problem"),
    [
        pytest.param([("global", "day", 10.0)], None, id="ours"),
        pytest.param(
            [("global", "day", 10.0), ("other-team", "day", 5.0)],
            "it shows budget other-team/day, which is not configured here",
            id="a budget we do not know",
        ),
        pytest.param([("global", "day", 20.0)], "it shows global/day at $20, where ours is $10", id="another limit"),
        pytest.param([], "it lacks budget global/day, which is configured here", id="without our budget"),
    ],
)
def test_metrics_with_other_budgets_than_ours_is_a_warning(environ, write_ledger, served, problem):
    location = write_ledger(record())
    ledger = Ledger(open_backend(location), ZoneInfo("UTC"))
    registry = CollectorRegistry()
    statuses = [budget_status(*budget) for budget in served]
    SpendCollector(ledger, budget_statuses=lambda: statuses, registry=registry)
    server = start_metrics_server(registry, ("127.0.0.1", 0))
    try:
        address = {"SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{server.port}", "SPENDWATCH_DAILY_BUDGET_USD": "10"}
        result = checks(environ | address)["metrics_endpoint"]
    finally:
        server.stop()
        ledger.close()

    if problem is None:
        assert result.status == OK, result
    else:
        assert result.status == WARN and result.summary.endswith(f"not with our budgets: {problem}"), result


def test_calls_stamped_in_the_future_point_at_a_wrong_clock(environ, write_ledger):
    write_ledger(record(at=NOW - 60), record(at=NOW + 3600))

    result = checks(environ)["clock"]

    assert result.status == WARN and "60 minutes ahead" in result.summary and "NTP" in result.fix


def test_a_few_seconds_of_skew_is_fine(environ, write_ledger):
    write_ledger(record(at=NOW + 30))

    assert checks(environ)["clock"].status == OK


def test_a_zone_with_daylight_saving_names_the_next_change(environ):
    winter = datetime(2026, 1, 15, 12, tzinfo=UTC).timestamp()

    result = checks(environ | {"SPENDWATCH_TIMEZONE": "Europe/Berlin"}, now=winter)["clock"]

    assert result.status == OK
    assert "Europe/Berlin" in result.summary and "changes clocks on 2026-03-29" in result.summary


# --- output hygiene -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("/var/lib/spendwatch/ledger.db", "/var/lib/spendwatch/ledger.db"),
        ("postgresql://spend:pa%3Ass@db:5432/spend", "postgresql://spend:***@db:5432/spend"),
        ("postgres://spend@db/spend", "postgres://spend@db/spend"),
    ],
)
def test_ledger_locations_are_shown_without_passwords(location, shown):
    assert shown_location(location) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [("gpt-4o", "gpt-4o"), ("evil\x1b[2J\nmodel", "evil?[2J?model"), ("x" * 300, "x" * 59 + "…")],
)
def test_printable_neutralises_terminal_escapes_and_caps_length(text, shown):
    assert printable(text, 60) == shown


@pytest.mark.parametrize(("setting", "disabled"), [("", False), ("spendwatch_openai", True), ("other, *", True)])
def test_the_runtime_and_doctor_read_disabled_instrumentations_alike(setting, disabled):
    environ = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": setting}

    assert instrumentation_disabled("spendwatch_openai", environ) is disabled
    context = DoctorContext(environ=environ, now=0.0)
    assert (check_instrumentor(context, "spendwatch_openai", "openai").status == WARN) is disabled
