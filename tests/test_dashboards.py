"""The Grafana dashboards: the committed JSON is what the sources generate, panels follow the house rules, and every
query and template variable returns data from a real Prometheus scraping a real spendwatch exporter."""

from __future__ import annotations

import json
import re
import urllib.parse

import openai
import pytest

import spendwatch
from dashboards.generate import json_path, render, sources
from spendwatch import runtime
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from tests.conftest import FAKE_API_KEY
from tests.servers import wait_until

GENERATE = "python -m dashboards.generate"
SOURCES = sources()
# The committed JSON (a missing file fails test_committed_json_is_what_the_source_generates, not collection).
DASHBOARDS = {
    path.name.removesuffix(".dashboard.py"): json.loads(json_path(path).read_text())
    for path in SOURCES
    if json_path(path).exists()
}

# Labels of each metric, from DESIGN.md's "Prometheus metrics" table.
METRIC_LABELS = {
    "llm_cost_usd_total": {"category", "model"},
    "llm_tokens_total": {"category", "model"},
    "llm_requests_total": {"category", "model"},
    "llm_unpriced_requests_total": {"model"},
    "llm_request_duration_seconds_bucket": {"model"},
    "llm_budget_limit_usd": {"budget"},
    "llm_budget_spent_usd": {"budget"},
    "llm_budget_remaining_usd": {"budget"},
    "llm_budget_used_ratio": {"budget"},
    "llm_budget_period_end_timestamp_seconds": {"budget"},
    "llm_guard_decisions_total": {"budget"},
}

# Panels that cannot have data in the live test below, with the reason. Keep this list short.
NO_DATA_EXPECTED = {
    ("operations", "Guard decisions"): "nothing feeds llm_guard_decisions_total yet: the runtime wires no guard "
    "decision source into the collector, so the family is exposed without samples",
}

# What Grafana would substitute, for a live query: every variable's "All", and short ranges.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$budget": ".*",
    "$category": ".*",
    "$model": ".*",
    "$job": ".*",
}

MESSAGES = [{"role": "user", "content": "Summarise this genome annotation."}]


def panels(name: str) -> list[dict]:
    return [panel for panel in DASHBOARDS[name]["panels"] if panel["type"] != "row"]


def all_panels() -> list[tuple[str, dict]]:
    return [(name, panel) for name in DASHBOARDS for panel in panels(name)]


def exprs(panel: dict) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def label_variables(name: str) -> dict[str, str]:
    """{variable name: its query} for the dashboard's label_values variables."""
    return {v["name"]: v["query"] for v in DASHBOARDS[name]["templating"]["list"] if v["type"] == "query"}


# --- generated JSON and house rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_committed_json_is_what_the_source_generates(source):
    committed = json_path(source)
    assert committed.exists(), f"{committed} is missing: run `{GENERATE}`"
    assert render(source) == committed.read_text(), f"{committed.name} is out of date: run `{GENERATE}`"


def test_there_are_three_dashboards_with_unique_uids():
    assert set(DASHBOARDS) == {"budget-overview", "cost-breakdown", "operations"}
    assert len({d["uid"] for d in DASHBOARDS.values()}) == 3


def test_every_panel_uses_a_current_panel_type():
    types = {panel["type"] for name in DASHBOARDS for panel in DASHBOARDS[name]["panels"]}
    assert types <= {"timeseries", "stat", "gauge", "row"}
    assert all(not DASHBOARDS[name].get("rows") for name in DASHBOARDS), "legacy rows: use RowPanel"


def test_money_panels_are_in_usd_and_ratio_panels_in_percent():
    for name, panel in all_panels():
        unit = panel["fieldConfig"]["defaults"]["unit"]
        queries = " ".join(exprs(panel))
        if "_usd" in queries:
            assert unit == "currencyUSD", f"{name}: {panel['title']}"
        if "_ratio" in queries or " / " in queries:
            assert unit == "percentunit", f"{name}: {panel['title']}"


def test_every_panel_gives_its_thresholds_explicitly():
    for name, panel in all_panels():
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert isinstance(steps, list) and steps, f"{name}: {panel['title']} has no threshold steps"
        assert steps[0]["value"] is None, f"{name}: {panel['title']}: the base step's value must be JSON null"
        values = [step["value"] for step in steps[1:]]
        assert all(isinstance(value, int | float) for value in values), f"{name}: {panel['title']}: {values}"
        assert values == sorted(values), f"{name}: {panel['title']}: steps must increase"


def test_budget_gauges_colour_at_the_default_levels():
    gauges = [panel for panel in panels("budget-overview") if panel["type"] == "gauge"]
    assert len(gauges) == 2
    for gauge in gauges:
        assert [step["value"] for step in gauge["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
            None,
            0.75,
            0.9,
            1.0,
        ]


def test_every_query_filters_by_the_dashboards_variables():
    selector = re.compile(r"\b([a-z_]+)(\{[^}]*\})?")
    for name, panel in all_panels():
        variables = set(label_variables(name))
        for expr in exprs(panel):
            for metric, matchers in selector.findall(expr):
                for label in METRIC_LABELS.get(metric, set()) & variables:
                    assert f'{label}=~"${label}"' in matchers, f"{name}: {panel['title']}: {metric} ignores ${label}"


def test_token_subsets_are_never_stacked_on_input_and_output():
    for _, panel in all_panels():
        if re.search(r'type="(cache_read|reasoning)"', " ".join(exprs(panel))):
            assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "none", panel["title"]


# --- every query against a real Prometheus scraping a real exporter ----------------------------------------------


@pytest.fixture
def exporter(tmp_path, monkeypatch, stub):
    """spendwatch attached in-process with /metrics on an ephemeral port; detached and uninstrumented afterwards."""
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)
    attached = spendwatch.configure(
        ledger=str(tmp_path / "ledger.db"),
        metrics_address="127.0.0.1:0",
        daily_budget_usd=1,
        monthly_budget_usd=10,
        categories="genomics",
    )
    yield attached
    runtime.detach()
    OpenAIInstrumentor().uninstrument()


def run_workload(client: openai.OpenAI) -> int:
    """Priced and unpriced chat, embeddings, an error, in and out of a category; returns how many calls it made."""
    with spendwatch.category("genomics"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.embeddings.create(model="text-embedding-3-small", input="an abstract about gene expression")
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="spendwatch-unknown-model", messages=MESSAGES)  # no price: unpriced
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="stub-error-500", messages=MESSAGES)
    return 5


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def label_values(prometheus, query: str) -> list[str]:
    """A Grafana ``label_values(metric, label)`` variable query, as Grafana runs it: the label values API."""
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
    return prometheus.get_json(f"/api/v1/label/{label}/values", **{"match[]": metric})["data"]


def failures(prometheus) -> list[str]:
    """Every panel query and variable query that errs or returns nothing, except those expected to be empty."""
    found = []
    for name in DASHBOARDS:
        for variable, query in label_variables(name).items():
            if not label_values(prometheus, query):
                found.append(f"{name}: variable ${variable}: {query} has no values")
        for panel in panels(name):
            if (name, panel["title"]) in NO_DATA_EXPECTED:
                continue
            for expr in exprs(panel):
                try:
                    result = prometheus.query(substitute(expr))
                except Exception as exc:  # an HTTP 400 from a bad query, named with the panel
                    found.append(f"{name}: {panel['title']}: {expr}: {exc}")
                    continue
                if not result:
                    found.append(f"{name}: {panel['title']}: {expr} returned no series")
    return found


def test_every_query_returns_data_from_a_real_exporter(exporter, stub, prometheus_factory):
    client = openai.OpenAI(base_url=stub.base_url, api_key=FAKE_API_KEY, max_retries=0)
    calls = run_workload(client)
    host_port = urllib.parse.urlsplit(exporter.metrics_server.url).netloc
    prometheus = prometheus_factory(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "spendwatch", "static_configs": [{"targets": [host_port]}]}],
        }
    )

    def scraped_calls() -> float:
        result = prometheus.query('sum(llm_requests_total{job="spendwatch"})')
        return float(result[0]["value"][1]) if result else 0.0

    # Prometheus applies scrape targets ~5 s after it starts; rate() needs two scrapes, and more calls between
    # scrapes, so that rates and latency quantiles are real numbers rather than zeros.
    wait_until(lambda: prometheus.query('count_over_time(up{job="spendwatch"}[1m]) >= 2'), 60, "two scrapes")
    calls += run_workload(client)
    wait_until(lambda: scraped_calls() == calls, 30, f"a scrape showing all {calls} calls")

    assert failures(prometheus) == []


def test_the_no_data_exemptions_name_real_panels():
    titles = {(name, panel["title"]) for name, panel in all_panels()}
    assert set(NO_DATA_EXPECTED) <= titles
