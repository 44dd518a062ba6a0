"""The Grafana dashboards: the committed JSON is what the sources generate, panels follow the house rules, and every
query and template variable returns data from a real Prometheus scraping a real spendwatch exporter."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import spendwatch
from dashboards.generate import json_path, render, sources
from spendwatch import runtime
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from tests.conftest import FAKE_API_KEY
from tests.servers import free_port, http_get, start_process, wait_until

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
NO_DATA_EXPECTED: dict[tuple[str, str], str] = {}

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
        # A rate divides by Grafana's interval; only a division of one quantity by another is a ratio.
        queries = " ".join(exprs(panel)).replace("/ $__interval_ms", "")
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


# --- every query against a real Prometheus scraping two real targets over one ledger ------------------------------
#
# Prometheus scrapes two targets over one ledger, as the README allows: the app's own /metrics (spendwatch.configure
# in this process) and `spendwatch serve`. Both are scraped before any call, so every label set appears between
# scrapes, already holding its first call's cost. Every panel's query then runs at one instant with the window
# Grafana would give it, and must equal what the ledger says: counted once although it is exposed twice, first
# calls included. Two windows: one opening between two workloads (the second brings new label sets), and the last
# hour, which opens before Prometheus started (a fresh set-up).

ONE_HOUR_MS = 3_600_000
USAGE_LABELS = ("provider", "model", "operation", "category")


def snapshot(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample one target exposes now, by sample name: what the ledger says, read without Prometheus."""
    status, body = http_get(url)
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


class Growth:
    """How the ledger's totals grew between two snapshots, grouped as a panel groups them."""

    def __init__(self, before: dict, after: dict, seconds: float) -> None:
        self.before, self.after, self.seconds = before, after, seconds

    def total(self, name: str, by: tuple[str, ...] = (), **where: str) -> dict[tuple, float]:
        grown: dict[tuple, float] = {}
        for sign, samples in ((-1, self.before.get(name, [])), (1, self.after.get(name, []))):
            for labels, value in samples:
                if all(labels.get(key) == wanted for key, wanted in where.items()):
                    key = tuple(labels[label] for label in by)
                    grown[key] = grown.get(key, 0.0) + sign * value
        return grown

    def per_second(self, name: str, by: tuple[str, ...] = (), **where: str) -> dict[tuple, float]:
        return {key: value / self.seconds for key, value in self.total(name, by, **where).items()}

    def per_hour(self, name: str, by: tuple[str, ...] = ()) -> dict[tuple, float]:
        return {key: value * 3600 for key, value in self.per_second(name, by).items()}

    def now(self, name: str, by: tuple[str, ...] = (), **where: str) -> dict[tuple, float]:
        """A gauge's value now (the after snapshot), per ``by``."""
        return Growth({}, self.after, self.seconds).total(name, by, **where)


def _ratio(numerator: dict[tuple, float], denominator: dict[tuple, float]) -> dict[tuple, float]:
    return {(): numerator.get((), 0.0) / denominator[()]}


BUDGET_KEY = ("budget", "period")
COST, TOKENS, REQUESTS = "llm_cost_usd_total", "llm_tokens_total", "llm_requests_total"

# (dashboard, panel title) -> for each of the panel's targets: (the labels its series are told apart by, what each
# series must read, from the ledger's growth over the window). Panels missing here must return data, nothing more.
EXPECTED: dict[tuple[str, str], list[tuple[tuple[str, ...], Callable[[Growth], dict[tuple, float]]]]] = {
    ("budget-overview", "Daily budget used"): [
        (("budget",), lambda g: g.now("llm_budget_used_ratio", ("budget",), period="day"))
    ],
    ("budget-overview", "Monthly budget used"): [
        (("budget",), lambda g: g.now("llm_budget_used_ratio", ("budget",), period="month"))
    ],
    ("budget-overview", "Remaining"): [(BUDGET_KEY, lambda g: g.now("llm_budget_remaining_usd", BUDGET_KEY))],
    ("budget-overview", "Spend vs limit"): [
        (BUDGET_KEY, lambda g: g.now("llm_budget_spent_usd", BUDGET_KEY)),
        (BUDGET_KEY, lambda g: g.now("llm_budget_limit_usd", BUDGET_KEY)),
    ],
    # A fixed last hour, whatever the dashboard's window: every call of the test.
    ("budget-overview", "Burn rate ($/h)"): [((), lambda g: g.now(COST))],
    ("cost-breakdown", "Spend in range"): [((), lambda g: g.total(COST))],
    ("cost-breakdown", "Top spenders in range"): [
        (("category", "model"), lambda g: g.total(COST, ("category", "model")))
    ],
    ("cost-breakdown", "Cost by model ($/h)"): [(("model",), lambda g: g.per_hour(COST, ("model",)))],
    ("cost-breakdown", "Cost by operation ($/h)"): [(("operation",), lambda g: g.per_hour(COST, ("operation",)))],
    ("cost-breakdown", "Cost by category ($/h)"): [(("category",), lambda g: g.per_hour(COST, ("category",)))],
    ("cost-breakdown", "Tokens by type (tokens/s)"): [
        ((), lambda g, token_type=token_type: g.per_second(TOKENS, type=token_type))
        for token_type in ("input", "output", "cache_read", "reasoning")
    ],
    ("cost-breakdown", "Cached share of input tokens"): [
        ((), lambda g: _ratio(g.total(TOKENS, type="cache_read"), g.total(TOKENS, type="input")))
    ],
    ("operations", "Requests by outcome"): [(("outcome",), lambda g: g.per_second(REQUESTS, ("outcome",)))],
    ("operations", "Error ratio"): [((), lambda g: _ratio(g.total(REQUESTS, outcome="error"), g.total(REQUESTS)))],
    ("operations", "Unpriced calls in range"): [
        (("model",), lambda g: g.total("llm_unpriced_requests_total", ("model",)))
    ],
    ("operations", "Blocked calls in range"): [((), lambda g: g.total(REQUESTS, outcome="blocked"))],
    ("operations", "Guard decisions"): [
        (("budget", "action"), lambda g: g.per_second("llm_guard_decisions_total", ("budget", "action")))
    ],
    ("operations", "Ledger errors in range"): [((), lambda g: {(): 0.0})],
    ("operations", "Records dropped in range"): [((), lambda g: {(): 0.0})],
}
# Panels with one series per target by design: each target's own health.
PER_TARGET = {("operations", "Exporter up"), ("operations", "Price data age")}


@pytest.fixture
def second_target(exporter, tmp_path):
    """``spendwatch serve`` over the exporter's ledger, with its settings: a second target exposing the same totals."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("SPENDWATCH_")}
    environ |= {
        "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"),
        "SPENDWATCH_DAILY_BUDGET_USD": "1",
        "SPENDWATCH_MONTHLY_BUDGET_USD": "10",
        "SPENDWATCH_CATEGORIES": "genomics",
        "SPENDWATCH_ENFORCE": "block",
    }
    port = free_port()
    argv = [sys.executable, "-m", "spendwatch.cli", "serve", "--address", f"127.0.0.1:{port}"]
    process = start_process(argv, env=environ, log_path=tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        process.wait_ready(lambda: http_get(url)[0] == 200, 60, f"spendwatch serve at {url}")
        yield url
    finally:
        process.stop()


@pytest.fixture
def scraped(exporter, second_target, prometheus_factory):
    """A Prometheus scraping both targets every second as job spendwatch, each already scraped thrice."""
    targets = [urllib.parse.urlsplit(url).netloc for url in (exporter.metrics_server.url, second_target)]
    prometheus = prometheus_factory(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "spendwatch", "static_configs": [{"targets": targets}]}],
        }
    )
    query = 'count_over_time(spendwatch_ledger_errors_total{job="spendwatch"}[1m]) >= 3'
    wait_until(lambda: len(prometheus.query(query)) == 2, 60, "three scrapes of both targets")
    return prometheus


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
        enforce="block",
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


def run_new_label_sets(client: openai.OpenAI) -> int:
    """The workload again, plus a model, a category-and-model pair and an unpriced model it has not called yet, and
    a call the guard refuses: its first refusal and first block decision."""
    calls = run_workload(client)
    client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    with spendwatch.category("genomics"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="spendwatch-unknown-model-2", messages=MESSAGES)
    with pytest.raises(spendwatch.BudgetExceededError):  # could cost $10 of the day's $1: refused, never sent
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1_000_000)
    return calls + 4


def wait_for_calls(prometheus, calls: int) -> None:
    """Until both targets' last scrape shows ``calls`` calls."""
    query = f'sum by (instance) (llm_requests_total{{job="spendwatch"}}) == {calls}'
    wait_until(lambda: len(prometheus.query(query)) == 2, 60, f"a scrape of both targets showing {calls} calls")


def wait_for_scrapes_since(prometheus, started: float, scrapes: int) -> None:
    def query() -> str:
        since = f"{int((time.time() - started) * 1000)}ms"
        return f'count_over_time(spendwatch_ledger_errors_total{{job="spendwatch"}}[{since}]) >= {scrapes}'

    wait_until(lambda: len(prometheus.query(query())) == 2, 60, f"{scrapes} scrapes of both targets")


def substitute(expr: str, window_ms: int) -> str:
    """What Grafana would send: every variable's "All", and the window as $__range, $__interval and _ms."""
    window = f"{window_ms}ms"
    values = {"$__interval_ms": str(window_ms), "$__interval": window, "$__rate_interval": window, "$__range": window}
    values |= {"$budget": ".*", "$category": ".*", "$model": ".*", "$job": ".*"}
    expr = re.sub(r"\$\w+", lambda found: values.get(found.group(), found.group()), expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def label_values(prometheus, query: str) -> list[str]:
    """A Grafana ``label_values(metric, label)`` variable query, as Grafana runs it: the label values API."""
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
    return prometheus.get_json(f"/api/v1/label/{label}/values", **{"match[]": metric})["data"]


def read(result: list[dict], by: tuple[str, ...]) -> dict[tuple, float] | str:
    """{the series' ``by`` labels: value}, or what is wrong: two series with the same labels (counted twice)."""
    values: dict[tuple, float] = {}
    for series in result:
        key = tuple(series["metric"].get(label, "") for label in by)
        if key in values:
            return f"two series for {dict(zip(by, key, strict=True))}: {result}"
        values[key] = float(series["value"][1])
    return values


def mismatches(prometheus, at: float, window_ms: int, growth: Growth) -> list[str]:
    """Every panel query that errs, returns nothing, or reads other than the ledger, at ``at`` over the window."""
    found = []
    for name in DASHBOARDS:
        for panel in panels(name):
            key = (name, panel["title"])
            if key in NO_DATA_EXPECTED:
                continue
            expected = EXPECTED.get(key, [None] * len(panel["targets"]))
            for expr, expectation in zip(exprs(panel), expected, strict=True):
                query = substitute(expr, window_ms)
                try:
                    result = prometheus.get_json("/api/v1/query", query=query, time=f"{at:.3f}")["data"]["result"]
                except AssertionError as error:  # an HTTP 400 from a bad query, named with the panel
                    found.append(f"{name}: {panel['title']}: {error}")
                    continue
                if not result:
                    found.append(f"{name}: {panel['title']}: {query} returned no series")
                elif key in PER_TARGET and len(result) != 2:
                    found.append(f"{name}: {panel['title']}: one series per target expected: {result}")
                elif expectation is not None:
                    by, wanted = expectation
                    got, want = read(result, by), wanted(growth)
                    if got != pytest.approx(want, rel=1e-6, abs=1e-12):
                        found.append(f"{name}: {panel['title']}: {got} where the ledger says {want}")
    return found


def test_every_variable_lists_values(scraped, stub, exporter):
    client = openai.OpenAI(base_url=stub.base_url, api_key=FAKE_API_KEY, max_retries=0)
    wait_for_calls(scraped, run_workload(client))

    empty = [
        f"{name}: ${variable}: {query}"
        for name in DASHBOARDS
        for variable, query in label_variables(name).items()
        if not label_values(scraped, query)
    ]

    assert empty == []


def test_every_panel_counts_each_call_once_over_two_targets_from_a_label_sets_first_call(scraped, stub, exporter):
    client = openai.OpenAI(base_url=stub.base_url, api_key=FAKE_API_KEY, max_retries=0)
    url = exporter.metrics_server.url
    calls = run_workload(client)
    wait_for_calls(scraped, calls)
    between, started = snapshot(url), time.time()
    calls += run_new_label_sets(client)
    wait_for_calls(scraped, calls)
    wait_for_scrapes_since(scraped, started, 3)  # so that increase() of the per-process counter has samples too
    after, at = snapshot(url), time.time()
    window_ms = int((at - started) * 1000)

    since_first_workload = mismatches(scraped, at, window_ms, Growth(between, after, window_ms / 1000))
    last_hour = mismatches(scraped, at, ONE_HOUR_MS, Growth({}, after, ONE_HOUR_MS / 1000))

    assert since_first_workload == []
    assert last_hour == []


def test_the_expectations_name_real_panels():
    titles = {(name, panel["title"]) for name, panel in all_panels()}
    assert set(NO_DATA_EXPECTED) | set(EXPECTED) | PER_TARGET <= titles
