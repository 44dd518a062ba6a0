"""Specification of the JSON API over real HTTP: ``spendwatch serve`` is started by the test (stopped by its PID)
over a ledger of four months of generated history, on SQLite and on PostgreSQL, and every answer is checked against
the history itself or against ``spendwatch report`` / ``status``: overview, analytics by day and hour, reports as
JSON, CSV and FOCUS, the alert history, the OpenAPI document, 400s for bad parameters, and basic auth."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from spendwatch.demo.processes import http_get, start_on_free_port, start_process
from spendwatch.exporter import Ledger
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import load_audit_key
from tests.api_history import generated_history, in_range, ingest_all

DAYS = 120
CONFIG = """
[budgets.global]
daily_usd = 0.01
monthly_usd = 10

[budgets.search]
category = "search"
daily_usd = 0.004
"""
CREDENTIALS = ("reader", "s3cret:with-colon")
_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]
_databases = itertools.count(1)


# --- the ledger and the servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history(request, tmp_path_factory):
    """A ledger of DAYS days of generated calls up to a minute ago, and the environment that reads it."""
    directory = tmp_path_factory.mktemp("api")
    location = str(directory / "ledger.db")
    if request.param == "postgresql":
        location = _new_database(request.getfixturevalue("postgres_server"))
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ |= {"SPENDWATCH_LEDGER": location, "SPENDWATCH_CONFIG": str(directory / "spendwatch.toml")}
    environ |= {"XDG_STATE_HOME": str(directory / "state")}
    entries = generated_history(time.time() - 60, DAYS)
    ledger = Ledger(open_backend(location), ZoneInfo("UTC"), audit_key=load_audit_key(location, environ))
    try:
        ingest_all(ledger, entries)
    finally:
        ledger.close()
    (directory / "spendwatch.toml").write_text(CONFIG)
    return {"entries": entries, "environ": environ, "location": location}


def _new_database(server_url: str) -> str:
    parts = urllib.parse.urlsplit(server_url)
    name = f"api_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return parts._replace(path=f"/{name}").geturl()


def _serve(environ: dict, directory: Path):
    def start(port: int):
        command = [*SPENDWATCH, "serve", "--address", f"127.0.0.1:{port}"]
        return start_process(command, env=environ, log_path=directory / f"serve-{port}.log")

    def ready(port: int):
        return lambda: http_get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=2)[0] in (200, 401)

    return start_on_free_port(start, ready, "spendwatch serve", timeout=60)


@pytest.fixture(scope="module")
def api(history, tmp_path_factory):
    """``spendwatch serve`` over the history, without auth; ``api(path, **query)`` GETs it."""
    process, port = _serve(history["environ"], tmp_path_factory.mktemp("serve"))
    try:
        yield lambda path, **query: get(f"http://127.0.0.1:{port}{path}", query)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def guarded_port(history, tmp_path_factory):
    """A second ``spendwatch serve`` over the same ledger, with basic auth; its port."""
    environ = history["environ"] | {"SPENDWATCH_METRICS_BASIC_AUTH": ":".join(CREDENTIALS)}
    process, port = _serve(environ, tmp_path_factory.mktemp("serve-auth"))
    try:
        yield port
    finally:
        process.stop()


class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body.decode("utf-8"))


def get(url: str, query: dict | None = None, *, credentials=None, method: str = "GET") -> Answer:
    request = urllib.request.Request(url + (f"?{urllib.parse.urlencode(query)}" if query else ""), method=method)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def spendwatch(environ: dict, *args: str) -> str:
    done = subprocess.run([*SPENDWATCH, *args], capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def instant(text: str) -> float:
    assert text.endswith("Z"), f"{text} is not RFC 3339 UTC"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rounded(amount: float) -> float:
    return round(amount, 9)


# --- overview ------------------------------------------------------------------------------------------------------


def test_overview_shows_every_budget_as_spendwatch_status_does(api, history):
    answer = api("/api/v1/overview")
    status = json.loads(spendwatch(history["environ"], "status", "--json"))

    assert answer.status == 200 and answer.headers["Content-Type"] == "application/json; charset=utf-8"
    shown = {(b["name"], b["period"]): b for b in answer.json()["budgets"]}
    expected = {(b["name"], b["period"]): b for b in status["budgets"]}
    assert set(shown) == set(expected) == {("global", "day"), ("global", "month"), ("search", "day")}
    for key, budget in shown.items():
        assert budget["limit_usd"] == expected[key]["limit_usd"]
        assert budget["spent_usd"] == pytest.approx(expected[key]["spent_usd"], abs=1e-9)
        assert budget["remaining_usd"] == pytest.approx(expected[key]["remaining_usd"], abs=1e-9)
        assert budget["level"] == expected[key]["level"]
        assert budget["health"] == (expected[key]["level"] or "ok")


def test_overview_spend_is_the_histories_spend_in_the_period_and_times_are_utc(api, history):
    answer = api("/api/v1/overview").json()
    month = next(b for b in answer["budgets"] if (b["name"], b["period"]) == ("global", "month"))
    start, end = instant(month["period_start"]), instant(month["period_end"])
    spent = sum(r.cost_usd or 0.0 for r in in_range(history["entries"], start, end))

    assert month["spent_usd"] == rounded(spent)
    assert datetime.fromtimestamp(start, UTC).day == 1 and start <= instant(answer["generated_at"]) < end


def test_overview_projects_the_period_end_from_the_last_hour_or_day_of_spend(api, history):
    answer = api("/api/v1/overview").json()
    now = instant(answer["generated_at"])
    for budget in answer["budgets"]:
        window = budget["burn_window_seconds"]
        assert window == {"day": 3600, "month": 86400}[budget["period"]]
        scope = [r for r in history["entries"] if budget["category"] in (None, r.record.category)]
        recent = sum(r.cost_usd or 0.0 for r in in_range(scope, now - window - 3600, now + 1))
        left = (instant(budget["period_end"]) - now) / 86400
        # Whole hours bound the burn: at most the window plus the hour before it, at least the whole hours inside.
        inside = sum(r.cost_usd or 0.0 for r in in_range(scope, (now // 3600 - window // 3600 + 1) * 3600, now + 1))
        low, high = inside * 86400 / window, recent * 86400 / window
        assert low - 1e-9 <= budget["burn_rate_usd_per_day"] <= high + 1e-9
        assert budget["projected_period_end_usd"] == pytest.approx(
            budget["spent_usd"] + budget["burn_rate_usd_per_day"] * left, rel=1e-3, abs=1e-9
        )
        assert budget["projected_to_exceed"] == (budget["projected_period_end_usd"] > budget["limit_usd"])


# --- analytics -----------------------------------------------------------------------------------------------------


def _expected_groups(records, by: str) -> dict:
    groups = defaultdict(lambda: {"cost_usd": 0.0, "calls": 0, "input_tokens": 0, "unpriced_calls": 0})
    for r in records:
        group = groups[getattr(r, {"model": "request_model"}.get(by, by)) or None]
        group["cost_usd"] += r.cost_usd or 0.0
        group["calls"] += 1
        group["input_tokens"] += r.input_tokens
        group["unpriced_calls"] += r.cost_usd is None
    return groups


def _shown_groups(groups: list[dict], by: str) -> dict:
    return {
        g[by]: {
            "cost_usd": g["cost_usd"],
            "calls": g["calls"],
            "input_tokens": g["tokens"]["input_tokens"],
            "unpriced_calls": g["unpriced_calls"],
        }
        for g in groups
    }


def _close(shown: dict, expected: dict) -> bool:
    return set(shown) == set(expected) and all(
        shown[k]["cost_usd"] == pytest.approx(expected[k]["cost_usd"], abs=2e-9)
        and {n: v for n, v in shown[k].items() if n != "cost_usd"}
        == {n: v for n, v in expected[k].items() if n != "cost_usd"}
        for k in shown
    )


@pytest.mark.parametrize("by", ["model", "category", "operation", "provider", "service"])
def test_analytics_by_day_adds_up_each_days_calls_per_group(api, history, by):
    answer = api("/api/v1/analytics", range="30d", granularity="day", by=by)
    document = answer.json()

    assert answer.status == 200 and document["range"] == "30d" and len(document["buckets"]) == 30
    for bucket in document["buckets"]:
        start = instant(bucket["start"])
        expected = _expected_groups(in_range(history["entries"], start, start + 86400), by)
        assert _close(_shown_groups(bucket["groups"], by), expected), bucket["start"]
    everything = in_range(history["entries"], instant(document["start"]), instant(document["end"]) + 1)
    assert _close(_shown_groups(document["totals"], by), _expected_groups(everything, by))


def test_analytics_by_hour_has_every_hour_of_the_range_with_its_calls(api, history):
    document = api("/api/v1/analytics", range="48h", granularity="hour", by="model").json()

    starts = [instant(bucket["start"]) for bucket in document["buckets"]]
    assert len(starts) == 48 and all(later - earlier == 3600 for earlier, later in itertools.pairwise(starts))
    for bucket, start in zip(document["buckets"], starts, strict=True):
        expected = _expected_groups(in_range(history["entries"], start, start + 3600), "model")
        assert _close(_shown_groups(bucket["groups"], "model"), expected), bucket["start"]


def test_analytics_lists_groups_costliest_first_and_unpriced_calls_apart(api):
    totals = api("/api/v1/analytics", range="90d", by="model").json()["totals"]
    costs = [group["cost_usd"] for group in totals]

    assert costs == sorted(costs, reverse=True)
    unpriced = totals[-1]
    assert unpriced["model"] == "claude-unknown-model" and unpriced["cost_usd"] == 0
    assert unpriced["unpriced_calls"] == unpriced["calls"] > 0


# --- reports -------------------------------------------------------------------------------------------------------


def _last_month(api) -> tuple[str, str]:
    today = instant(api("/api/v1/overview").json()["generated_at"])
    until = datetime.fromtimestamp(today, UTC).date()
    return (until - timedelta(days=40)).isoformat(), until.isoformat()


@pytest.mark.parametrize("by", ["day", "model", "category", "operation", "provider", "service"])
def test_report_as_json_is_what_spendwatch_report_prints(api, history, by):
    since, until = _last_month(api)
    answer = api("/api/v1/report", start=since, end=until, by=by)
    printed = spendwatch(
        history["environ"], "report", "--since", since, "--until", until, "--by", by, "--format", "json"
    )

    assert answer.status == 200 and answer.json() == json.loads(printed)
    assert answer.json()["rows"]


@pytest.mark.parametrize("form", ["csv", "focus"])
def test_report_as_csv_and_focus_is_what_spendwatch_report_prints(api, history, form):
    since, until = _last_month(api)
    answer = api("/api/v1/report", start=since, end=until, by="model", format=form)
    printed = spendwatch(
        history["environ"], "report", "--since", since, "--until", until, "--by", "model", "--format", form
    )

    assert answer.status == 200 and answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.body.decode().rstrip("\n") == printed.rstrip("\n")
    assert len(list(csv.DictReader(io.StringIO(printed)))) >= {"csv": 3, "focus": 41 * 5}[form]


def test_report_end_defaults_to_today(api):
    since, until = _last_month(api)
    assert api("/api/v1/report", start=since).json()["until"] == until


# --- alerts --------------------------------------------------------------------------------------------------------


def test_alerts_show_the_guards_refusals_of_the_range_newest_first(api, history):
    document = api("/api/v1/alerts", range="72h").json()
    start, end = instant(document["start"]), instant(document["end"])
    # The history was ingested in batches of 2000 calls: one event per batch that had refused calls, at its last one.
    entries = history["entries"]
    batches = [entries[first : first + 2000] for first in range(0, len(entries), 2000)]
    refused = [[e.record for e in batch if e.record.outcome == "blocked"] for batch in batches]
    expected = [(max(r.start_time for r in calls), len(calls)) for calls in refused if calls]
    expected = [(at, count) for at, count in expected if start <= at < end + 1]

    shown = [(instant(alert["at"]), alert["calls"]) for alert in document["alerts"]]
    assert expected
    assert [alert["kind"] for alert in document["alerts"]] == ["guard_refused"] * len(expected)
    assert [count for _, count in shown] == [count for _, count in sorted(expected, reverse=True)]
    assert [at for at, _ in shown] == sorted((int(at) for at, _ in expected), reverse=True)


# --- bad requests, the OpenAPI document, auth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        ("/api/v1/analytics", {"range": "7"}, "range"),
        ("/api/v1/analytics", {"range": "0d"}, "range"),
        ("/api/v1/analytics", {"range": "-1d"}, "range"),
        ("/api/v1/analytics", {"range": "99999d"}, "range"),
        ("/api/v1/analytics", {"range": "1w"}, "range"),
        ("/api/v1/analytics", {"granularity": "minute"}, "granularity"),
        ("/api/v1/analytics", {"by": "colour"}, "by"),
        ("/api/v1/analytics", {"rnage": "7d"}, "rnage"),
        ("/api/v1/report", {}, "start"),
        ("/api/v1/report", {"start": "2025-02-30"}, "start"),
        ("/api/v1/report", {"start": "yesterday"}, "start"),
        ("/api/v1/report", {"start": "2025-03-02", "end": "2025-03-01"}, "start"),
        ("/api/v1/report", {"start": "2025-03-01", "format": "xml"}, "format"),
        ("/api/v1/alerts", {"range": "24"}, "range"),
        ("/api/v1/overview", {"budget": "global"}, "budget"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it_in_json(api, path, query, parameter):
    answer = api(path, **query)

    assert answer.status == 400 and answer.headers["Content-Type"] == "application/json; charset=utf-8"
    error = answer.json()["error"]
    assert error["parameter"] == parameter and error["value"] == query.get(parameter)
    assert parameter in error["message"]


def test_an_unknown_endpoint_is_a_404_pointing_at_the_openapi_document(api):
    answer = api("/api/v1/budgets")
    assert answer.status == 404 and "openapi.json" in answer.json()["error"]["message"]


def test_the_api_is_read_only(api, guarded_port):
    answer = get(f"http://127.0.0.1:{guarded_port}/api/v1/overview", credentials=CREDENTIALS, method="POST")
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD"


def test_openapi_document_lists_every_endpoint_and_the_values_the_api_takes(api):
    document = api("/api/v1/openapi.json").json()

    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        f"/api/v1/{name}" for name in ("overview", "analytics", "report", "alerts", "openapi.json")
    }
    parameters = {p["name"]: p for p in document["paths"]["/api/v1/analytics"]["get"]["parameters"]}
    for value in parameters["granularity"]["schema"]["enum"]:
        assert api("/api/v1/analytics", granularity=value).status == 200
    report = {p["name"]: p for p in document["paths"]["/api/v1/report"]["get"]["parameters"]}
    assert report["format"]["schema"]["enum"] == ["json", "csv", "focus"] and report["start"]["required"]


@pytest.mark.parametrize("credentials", [None, ("reader", "wrong"), ("someone", CREDENTIALS[1])])
def test_basic_auth_guards_the_api_as_it_guards_metrics(guarded_port, credentials):
    for path in ("/api/v1/overview", "/api/v1/analytics", "/api/v1/openapi.json", "/metrics"):
        answer = get(f"http://127.0.0.1:{guarded_port}{path}", credentials=credentials)
        assert answer.status == 401 and b"budget" not in answer.body


def test_basic_auth_admits_the_right_credentials_to_the_api_and_metrics(guarded_port, api):
    url = f"http://127.0.0.1:{guarded_port}"
    overview = get(f"{url}/api/v1/overview", credentials=CREDENTIALS)

    assert overview.status == 200

    def spent(document: dict) -> set:
        return {(b["name"], b["period"], b["spent_usd"]) for b in document["budgets"]}

    assert spent(overview.json()) == spent(api("/api/v1/overview").json())
    assert b"llm_cost_usd_total" in get(f"{url}/metrics", credentials=CREDENTIALS).body
