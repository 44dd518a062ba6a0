"""The HTML cost page in a real browser: Debian's headless Chromium driven by Selenium opens ``GET /`` of a
``spendwatch serve`` started by the test, and the file ``spendwatch report --html`` writes (over file://), both over a
ledger of generated history. Each page must render with no console error and no Content-Security-Policy violation,
ask nothing of the network beyond its own address, show the ledger's numbers (spend, budget ratios, counts), change
its chart when the reader picks another range or grouping (by mouse or keyboard), fit a phone's width, switch to dark
colours, and label its charts. Screenshots at phone and laptop widths, light and dark, are saved in
tests/artifacts/html_page/ (gitignored) for a person or CI to look at."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from spendwatch.demo.processes import http_get, start_on_free_port, start_process
from spendwatch.exporter import Ledger, LedgerEntry, load_settings
from spendwatch.exporter.budgets import budget_statuses
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.audit import load_audit_key
from spendwatch.exporter.ledger.history import record_threshold_crossing
from spendwatch.instrumentation.records import UsageRecord
from tests.api_history import generated_history, in_range, ingest_all
from tests.servers import require_binary

DAYS = 40
CONFIG = """
[budgets.summarise]
category = "summarise"
monthly_usd = 0.05

[budgets.global]
daily_usd = 0.01
monthly_usd = 10
"""
ARTIFACTS = Path(__file__).parent / "artifacts" / "html_page"
PHONE, LAPTOP = (390, 844), (1366, 900)
DOCUMENTS = {"paper-a.pdf": 5, "notes-b.md": 2}  # LightRAG documents and how many extract calls each had
DEGRADED = 3  # calls the guard degraded
_VENV_SCRIPT = Path(sys.executable).parent / "spendwatch"
SPENDWATCH = [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [sys.executable, "-m", "spendwatch.cli"]
# Long enough for a loaded two-core machine to draw the page; a page that never draws fails here, not hangs.
WAIT_S = 60


# --- the ledger, the server, the file, the browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A SQLite ledger of DAYS days of generated calls, LightRAG document calls, degraded calls and the threshold
    crossings the budgets reached; the environment that reads it."""
    directory = tmp_path_factory.mktemp("page")
    location = str(directory / "ledger.db")
    (directory / "spendwatch.toml").write_text(CONFIG)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ |= {"SPENDWATCH_LEDGER": location, "SPENDWATCH_CONFIG": str(directory / "spendwatch.toml")}
    environ |= {"SPENDWATCH_TIMEZONE": "UTC", "XDG_STATE_HOME": str(directory / "state")}
    now = time.time()
    entries = generated_history(now - 60, DAYS) + _lightrag_calls(now - 3 * 3600) + _degraded_calls(now - 2 * 3600)
    ledger = Ledger(open_backend(location), ZoneInfo("UTC"), audit_key=load_audit_key(location, environ))
    try:
        ingest_all(ledger, entries)
        crossings = 0
        for status in budget_statuses(ledger, load_settings(environ=environ)):
            if status.level:
                crossings += record_threshold_crossing(ledger, status, status.level, at=now - 30)
    finally:
        ledger.close()
    return {"entries": entries, "environ": environ, "directory": directory, "crossings": crossings}


def _lightrag_calls(at: float) -> list[LedgerEntry]:
    calls = []
    for document, count in DOCUMENTS.items():
        for n in range(count):
            record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=1000 + n, output_tokens=50)
            record.attributes = {"spendwatch.lightrag.stage": "extract", "spendwatch.lightrag.doc_id": document}
            record.cost_usd, record.pricing, record.start_time = 0.0003 * (n + 1), "test", at + n
            calls.append(LedgerEntry(f"lightrag-{document}-{n}", record))
    return calls


def _degraded_calls(at: float) -> list[LedgerEntry]:
    calls = []
    for n in range(DEGRADED):
        record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=200, output_tokens=10, category="summarise")
        record.guard_actions = (("summarise", "degrade"),)
        record.cost_usd, record.pricing, record.start_time = 0.0001, "test", at + n
        calls.append(LedgerEntry(f"degraded-{n}", record))
    return calls


@pytest.fixture(scope="module")
def served(history):
    """``spendwatch serve`` over the history; the page's URL."""

    def start(port: int):
        command = [*SPENDWATCH, "serve", "--address", f"127.0.0.1:{port}"]
        return start_process(command, env=history["environ"], log_path=history["directory"] / f"serve-{port}.log")

    def ready(port: int):
        return lambda: http_get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=2)[0] == 200

    process, port = start_on_free_port(start, ready, "spendwatch serve", timeout=60)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.stop()


@pytest.fixture(scope="module")
def page_file(history):
    """The file ``spendwatch report --html`` writes."""
    path = history["directory"] / "spend.html"
    assert run_cli(history["environ"], "report", "--html", str(path)) == f"wrote the cost page to {path}\n"
    return path


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with its console and network (DevTools performance) logs kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium", "chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=require_binary("chromedriver", "chromium-driver"))
    driver = webdriver.Chrome(options=options, service=service)
    # Before any page script runs, on every page: keep each CSP violation where the test can read it.
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__violations = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        },
    )
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Open ``url`` at laptop width in light mode, after emptying the logs, and wait until the page has drawn."""
    driver.get_log("browser")
    driver.get_log("performance")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": ""}]})
    driver.set_window_size(*LAPTOP)
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#totals-table tbody tr"))


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def problems(driver) -> list[str]:
    """Console messages at warning level or worse, and CSP violations."""
    logged = driver.get_log("browser")
    console = [f"{e['level']}: {e['message']}" for e in logged if e["level"] in ("SEVERE", "WARNING")]
    return console + driver.execute_script("return window.__violations")


def value(driver, selector: str) -> float:
    return float(driver.find_element(By.CSS_SELECTOR, selector).get_attribute("data-value"))


def table_rows(driver, table_id: str) -> dict[str, dict[str, float]]:
    """A table's rows by their group: each numeric cell's value by its data-field (read in one script, so a redraw
    cannot swap the table between two reads)."""
    rows = driver.execute_script(
        """return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr')).map(row => [
            row.dataset.group,
            Object.fromEntries(Array.from(row.querySelectorAll('td[data-field]')).map(
                cell => [cell.dataset.field, Number(cell.dataset.value)]))])""",
        table_id,
    )
    return dict(rows)


def wait_for_view(driver, span: str, by: str) -> None:
    """Wait until the chart's totals show ``span`` and ``by`` (the page redraws them when the reader picks)."""
    shown = "const t = document.getElementById('totals-table'); return t && [t.dataset.range, t.dataset.by]"
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(shown) == [span, by])


def screenshot(driver, name: str, size: tuple[int, int], dark: bool = False) -> Path:
    """The whole page at ``size``'s width, light or dark, saved under ARTIFACTS."""
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )
    driver.set_window_size(*size)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size[0], max(size[1], height + 120))  # + the window's own chrome, so nothing is cut
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}-{size[0]}px-{scheme}.png"
    assert driver.save_screenshot(str(path))
    return path


# --- what the ledger says ----------------------------------------------------------------------------------------


def day_start(moment: float, days_back: int) -> float:
    day = datetime.fromtimestamp(moment, UTC).date() - timedelta(days=days_back)
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def expected_groups(records, by: str) -> dict:
    groups = defaultdict(lambda: {"cost_usd": 0.0, "calls": 0, "input_tokens": 0, "unpriced_calls": 0})
    for record in records:
        key = getattr(record, {"model": "request_model"}.get(by, by)) or None
        group = groups["(none)" if key is None else key]
        group["cost_usd"] += record.cost_usd or 0.0
        group["calls"] += 1
        group["input_tokens"] += record.input_tokens
        group["unpriced_calls"] += record.cost_usd is None
    return groups


def assert_groups_shown(shown: dict, expected: dict) -> None:
    assert set(shown) == set(expected)
    for key, group in expected.items():
        assert shown[key]["cost_usd"] == pytest.approx(group["cost_usd"], abs=2e-9), key
        assert {name: shown[key][name] for name in ("calls", "input_tokens", "unpriced_calls")} == {
            name: group[name] for name in ("calls", "input_tokens", "unpriced_calls")
        }, key


def generated_at(driver) -> float:
    text = driver.execute_script("return JSON.parse(document.getElementById('spendwatch-data').textContent)")[
        "generated_at"
    ]
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_cli(environ: dict, *args: str) -> str:
    done = subprocess.run([*SPENDWATCH, *args], capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_json(environ: dict) -> dict:
    return json.loads(run_cli(environ, "status", "--json"))


# --- the served page ---------------------------------------------------------------------------------------------


def test_served_page_renders_under_its_policy_with_no_console_error_and_no_request_elsewhere(browser, served):
    open_page(browser, served)

    assert problems(browser) == []
    urls = requested_urls(browser)
    assert served in urls
    assert all(url.startswith(served) or url.startswith("data:") for url in urls), urls
    assert browser.find_element(By.ID, "summary-cost_usd").text.startswith("$")


def test_served_page_sends_a_strict_content_security_policy(served):
    with urllib.request.urlopen(served, timeout=30) as response:
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "data:"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    for source in ("script-src", "style-src"):
        assert directives[source].startswith("'sha256-") and "unsafe" not in directives[source]


def test_served_page_shows_the_ledgers_spend_counts_and_budgets(browser, served, history):
    open_page(browser, served)
    now = generated_at(browser)
    window = in_range(history["entries"], day_start(now, 29), now + 1)

    assert value(browser, "#summary-cost_usd") == pytest.approx(sum(r.cost_usd or 0.0 for r in window), abs=2e-9)
    assert value(browser, "#summary-calls") == len(window)
    assert value(browser, "#summary-unpriced_calls") == sum(r.cost_usd is None for r in window)
    refused = sum(1 for r in window if ("global", "block") in r.guard_actions)
    assert refused > 0 and value(browser, "#summary-guard_refused_calls") == refused
    assert value(browser, "#summary-guard_degraded_calls") == DEGRADED
    assert history["crossings"] > 0 and value(browser, "#summary-threshold_crossings") == history["crossings"]
    for budget in status_json(history["environ"])["budgets"]:
        card = f"[data-budget='{budget['name']}/{budget['period']}']"
        assert value(browser, f"{card} [data-field=spent_usd]") == pytest.approx(budget["spent_usd"], abs=1e-9)
        assert value(browser, f"{card} [data-field=limit_usd]") == budget["limit_usd"]
        assert value(browser, f"{card} [data-field=used_ratio]") == pytest.approx(budget["used_ratio"], rel=1e-9)
        shown_health = browser.find_element(By.CSS_SELECTOR, f"{card} [data-field=health]").text
        assert shown_health == (budget["level"] or "ok")


def test_served_page_shows_the_last_7_days_by_model_then_any_range_and_grouping_the_reader_picks(
    browser, served, history
):
    open_page(browser, served)
    now = generated_at(browser)
    week = in_range(history["entries"], day_start(now, 6), now + 1)
    assert_groups_shown(table_rows(browser, "totals-table"), expected_groups(week, "model"))

    Select(browser.find_element(By.ID, "range")).select_by_value("24h")
    Select(browser.find_element(By.ID, "group")).select_by_value("category")
    wait_for_view(browser, "24h", "category")
    first_hour = (int(now) // 3600 - 23) * 3600
    day = in_range(history["entries"], first_hour, now + 1)
    assert_groups_shown(table_rows(browser, "totals-table"), expected_groups(day, "category"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-table tbody tr")) == 24
    assert problems(browser) == []
    # The other range came from this server's own API, and from nowhere else.
    urls = requested_urls(browser)
    assert any("/api/v1/analytics?range=24h" in url for url in urls)
    assert all(url.startswith(served) or url.startswith("data:") for url in urls), urls


def test_served_page_controls_work_from_the_keyboard(browser, served):
    open_page(browser, served)
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    reached = []
    for _ in range(30):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(browser.switch_to.active_element.get_attribute("id"))
        if reached[-1] == "group":
            break
    assert "range" in reached and reached[-1] == "group"

    browser.switch_to.active_element.send_keys("o")  # the first grouping starting with "o": Operation
    wait_for_view(browser, "7d", "operation")
    assert set(table_rows(browser, "totals-table")) == {"chat", "embeddings"}


def test_served_page_lists_top_documents_unpriced_calls_and_what_happened(browser, served, history):
    open_page(browser, served)
    now = generated_at(browser)
    window = in_range(history["entries"], day_start(now, 29), now + 1)

    # Summed from the calls (seconds on a big ledger), so the served page fetches them from its API once shown.
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.ID, "documents-table"))
    documents = table_rows(browser, "documents-table")
    assert {name: row["requests"] for name, row in documents.items()} == DOCUMENTS
    assert any("/api/v1/report?by=document" in url for url in requested_urls(browser))
    unpriced = table_rows(browser, "unpriced-table")
    assert unpriced == {
        "claude-unknown-model": {
            "unpriced_calls": sum(r.request_model == "claude-unknown-model" for r in window),
            "calls": sum(r.request_model == "claude-unknown-model" for r in window),
        },
        "gpt-4o-mini": {
            "unpriced_calls": sum(r.request_model == "gpt-4o-mini" and r.cost_usd is None for r in window),
            "calls": sum(r.request_model == "gpt-4o-mini" for r in window),
        },
        "gpt-4o": {
            "unpriced_calls": sum(r.request_model == "gpt-4o" and r.cost_usd is None for r in window),
            "calls": sum(r.request_model == "gpt-4o" for r in window),
        },
    }
    crossings = browser.find_elements(By.CSS_SELECTOR, "#alerts-table tr[data-kind=threshold_crossed]")
    assert len(crossings) == history["crossings"]
    degraded = browser.find_elements(By.CSS_SELECTOR, "#alerts-table tr[data-kind=guard_degraded]")
    assert sum(int(row.get_attribute("data-calls")) for row in degraded) == DEGRADED
    assert browser.find_element(By.ID, "prices-as-of").text.startswith("genai-prices data of 20")


def test_served_page_labels_its_charts_and_controls(browser, served):
    open_page(browser, served)

    images = browser.find_elements(By.CSS_SELECTOR, "svg[role=img]")
    assert len(images) >= 4  # three budget gauges and the chart
    for image in images:
        labelled_by = image.get_attribute("aria-labelledby")
        name = image.get_attribute("aria-label") or " ".join(
            browser.find_element(By.ID, part).get_attribute("textContent") for part in (labelled_by or "").split()
        )
        assert len(name.strip()) > 10, image.get_attribute("outerHTML")[:200]
    for control in ("range", "group"):
        assert browser.find_element(By.CSS_SELECTOR, f"label[for={control}]").text


def test_served_page_fits_a_phone_and_has_dark_colours_with_screenshots(browser, served):
    open_page(browser, served)
    light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    paths = [screenshot(browser, "served", LAPTOP), screenshot(browser, "served", PHONE)]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    paths.append(screenshot(browser, "served", PHONE, dark=True))
    dark = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    paths.append(screenshot(browser, "served", LAPTOP, dark=True))

    assert light == "rgb(255, 255, 255)" and dark != light
    assert all(path.stat().st_size > 10_000 for path in paths)
    assert problems(browser) == []


# --- the report --html file ----------------------------------------------------------------------------------------


def test_report_html_file_opens_from_disk_with_its_own_policy_and_no_network(browser, page_file, history):
    text = page_file.read_text()
    assert '<meta http-equiv="Content-Security-Policy"' in text and "connect-src 'none'" in text
    open_page(browser, page_file.as_uri())

    assert problems(browser) == []
    urls = requested_urls(browser)
    assert all(url == page_file.as_uri() or url.startswith("data:") for url in urls), urls
    now = generated_at(browser)
    window = in_range(history["entries"], day_start(now, 29), now + 1)
    assert value(browser, "#summary-cost_usd") == pytest.approx(sum(r.cost_usd or 0.0 for r in window), abs=2e-9)
    assert value(browser, "#summary-calls") == len(window)
    documents = table_rows(browser, "documents-table")  # carried in the file, as it cannot ask for them
    assert {name: row["requests"] for name, row in documents.items()} == DOCUMENTS
    screenshot(browser, "file", PHONE)
    screenshot(browser, "file", LAPTOP)


def test_report_html_file_carries_every_preset_range_and_grouping(browser, page_file, history):
    open_page(browser, page_file.as_uri())
    now = generated_at(browser)

    Select(browser.find_element(By.ID, "range")).select_by_value("30d")
    Select(browser.find_element(By.ID, "group")).select_by_value("stage")
    wait_for_view(browser, "30d", "stage")
    stages = table_rows(browser, "totals-table")
    assert list(stages) == ["extract"] and stages["extract"]["calls"] == sum(DOCUMENTS.values())
    Select(browser.find_element(By.ID, "group")).select_by_value("model")
    wait_for_view(browser, "30d", "model")
    month = in_range(history["entries"], day_start(now, 29), now + 1)
    assert_groups_shown(table_rows(browser, "totals-table"), expected_groups(month, "model"))
    assert problems(browser) == [] and set(requested_urls(browser)) == {page_file.as_uri()}


def test_a_file_names_days_in_the_budgets_time_zone_and_shows_hostile_names_as_text(browser, tmp_path):
    from spendwatch.exporter.page import write_page_file

    location, zone = str(tmp_path / "ledger.db"), "Pacific/Kiritimati"  # UTC+14: its day is rarely UTC's
    ledger = Ledger(open_backend(location), ZoneInfo(zone))
    try:
        record = UsageRecord("openai", "chat", "gpt-4o-mini", input_tokens=5, category="</script><img src=x>")
        record.cost_usd, record.start_time = 0.001, time.time() - 5
        ledger.ingest([LedgerEntry("hostile", record)])
        settings = load_settings({"ledger": location, "daily_budget_usd": 1, "timezone": zone}, environ={})
        write_page_file(ledger, settings, tmp_path / "page.html")
    finally:
        ledger.close()
    text = (tmp_path / "page.html").read_text()
    assert "</script><img" not in text and "\\u003c/script\\u003e\\u003cimg src=x\\u003e" in text
    open_page(browser, (tmp_path / "page.html").as_uri())

    days = browser.execute_script(
        "return Array.from(document.querySelectorAll('#chart-table tbody th')).map(cell => cell.textContent)"
    )
    today = datetime.fromtimestamp(generated_at(browser), ZoneInfo(zone)).date()
    assert days == [(today - timedelta(days=back)).isoformat() for back in range(6, -1, -1)]
    Select(browser.find_element(By.ID, "group")).select_by_value("category")
    wait_for_view(browser, "7d", "category")
    assert list(table_rows(browser, "totals-table")) == ["</script><img src=x>"]
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == [] and problems(browser) == []


def test_an_empty_ledger_without_budgets_gives_a_page_that_says_so(browser, tmp_path):
    from spendwatch.exporter.page import write_page_file

    location = str(tmp_path / "ledger.db")
    ledger = Ledger(open_backend(location), ZoneInfo("UTC"))
    try:
        write_page_file(ledger, load_settings({"ledger": location}, environ={}), tmp_path / "empty.html")
    finally:
        ledger.close()
    browser.get_log("browser")
    browser.get((tmp_path / "empty.html").as_uri())
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "alerts").text)

    shown = {section: browser.find_element(By.ID, section).text for section in ("budgets", "chart", "alerts")}
    assert shown == {
        "budgets": "No budgets are configured.",
        "chart": "No calls in this range.",
        "alerts": "Nothing happened in the last 30 days.",
    }
    assert value(browser, "#summary-cost_usd") == 0 and problems(browser) == []


def test_the_harness_sees_a_policy_violation(browser, page_file, tmp_path):
    # The checks above pass only if a violation would show: an inline style attribute the policy forbids must.
    broken = tmp_path / "broken.html"
    broken.write_text(page_file.read_text().replace("<main>", '<main><p style="color: red">styled</p>', 1))
    open_page(browser, broken.as_uri())

    assert any("style-src" in problem for problem in problems(browser))


def test_report_html_refuses_a_format_or_trend(history, tmp_path):
    done = subprocess.run(
        [*SPENDWATCH, "report", "--html", str(tmp_path / "x.html"), "--format", "json"],
        capture_output=True,
        text=True,
        env=history["environ"],
        timeout=120,
    )

    assert done.returncode == 2 and "--html writes the cost page" in done.stderr
    assert not (tmp_path / "x.html").exists()


def test_the_served_page_needs_the_same_credentials_as_metrics(history):
    environ = history["environ"] | {"SPENDWATCH_METRICS_BASIC_AUTH": "reader:s3cret"}

    def start(port: int):
        command = [*SPENDWATCH, "serve", "--address", f"127.0.0.1:{port}"]
        return start_process(command, env=environ, log_path=history["directory"] / f"serve-auth-{port}.log")

    def ready(port: int):
        return lambda: http_get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=2)[0] == 401

    process, port = start_on_free_port(start, ready, "spendwatch serve", timeout=60)
    try:
        refused = http_get(f"http://127.0.0.1:{port}/", timeout=30)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"reader:s3cret").decode())
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read().decode()
        posted = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"x", method="POST")
        posted.add_header("Authorization", "Basic " + base64.b64encode(b"reader:s3cret").decode())
        try:
            urllib.request.urlopen(posted, timeout=30)
            post_status = 200
        except urllib.error.HTTPError as error:
            post_status = error.code
    finally:
        process.stop()

    assert refused[0] == 401 and "LLM spend" not in str(refused[1])
    assert status == 200 and body.startswith("<!DOCTYPE html>") and 'id="spendwatch-data"' in body
    assert post_status == 405
