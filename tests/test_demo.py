"""``spendwatch demo`` end to end, as a user runs it: a subprocess, offline, its output checked.

With Prometheus and Alertmanager installed (Debian's ``prometheus`` and ``prometheus-alertmanager``) the demo also
starts them with the shipped alert rules and prints the pages Alertmanager delivers; locally a missing binary only
changes what is asserted, in CI (``CI=true``) it fails the test.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from spendwatch.demo._lightrag import DOCUMENTS, SKIPPED
from tests.servers import in_ci

# The demo end to end, with Prometheus and Alertmanager when installed: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

DEMO_TIMEOUT = 120.0  # the demo takes ~23 s with alerting, ~4 s without


def lightrag_installed() -> bool:
    try:
        import lightrag  # noqa: F401
    except ImportError:
        if in_ci():
            pytest.fail("CI=true but lightrag-hku is not installed: the test extra includes it")
        return False
    return True


def alerting_binaries() -> bool:
    found = shutil.which("prometheus") and (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"))
    if not found and in_ci():
        pytest.fail("CI=true but prometheus or prometheus-alertmanager is not on PATH: run `make test-servers`")
    return bool(found)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, float]:
    state = tmp_path_factory.mktemp("state")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SPENDWATCH_", "OTEL_"))}
    env["XDG_STATE_HOME"] = str(state)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    return done, time.monotonic() - started


def test_the_demo_exits_0_and_prints_the_calls_the_gauges_and_the_status(demo):
    done, _ = demo
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    # The calls table: one row per call, priced models, the unpriced one, the failed one.
    assert "operation         model" in out
    for model in ("gpt-4o-mini", "gpt-4o ", "o4-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"):
        assert model in out
    (unpriced,) = [line for line in out.splitlines() if line.startswith("chat") and "my-private-finetune" in line]
    assert "unpriced" in unpriced
    (failed,) = [line for line in out.splitlines() if line.startswith("chat") and "stub-error-500" in line]
    assert "InternalServerError" in failed
    assert "8 calls," in out and "1 unpriced" in out
    # The budget gauges as Prometheus scrapes them from /metrics.
    assert "/metrics:" in out
    assert 'llm_budget_used_ratio{budget="global",period="day"}' in out
    assert 'llm_budget_spent_usd{budget="global",period="month"}' in out
    # spendwatch status.
    status_header = [line for line in out.splitlines() if line.startswith("budget") and "limit_usd" in line]
    assert status_header, out
    assert any(line.startswith("global  day") for line in out.splitlines())


def test_with_prometheus_and_alertmanager_the_budget_pages_arrive(demo):
    done, _ = demo
    out = done.stdout
    if not alerting_binaries():
        assert "apt-get install prometheus prometheus-alertmanager" in out
        pytest.skip("prometheus or prometheus-alertmanager not on PATH: the demo said how to get them")
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    assert "every `for:` cut to" in out  # the demo says the rules' durations were shortened
    pages = [line for line in out.splitlines() if "PAGE to " in line]
    warning = [p for p in pages if "[FIRING] LLMBudgetUsageHigh" in p and "severity=warning" in p]
    exhausted = [p for p in pages if "[FIRING] LLMBudgetExhausted" in p and "severity=critical" in p]
    assert warning, out
    assert exhausted, out
    assert "budget=global period=day" in warning[0] and "spendwatch-warning" in warning[0]
    assert "budget=global period=day" in exhausted[0] and "spendwatch-critical" in exhausted[0]
    assert "An LLM budget is exhausted." in out
    # The pages come before the final status, which shows the budget exceeded.
    assert out.index("LLMBudgetExhausted") < out.rindex("limit_usd")
    assert any(line.startswith("global  day") and "exceeded" in line for line in out.splitlines())


def test_with_lightrag_installed_the_demo_prices_a_real_lightrag_workload_by_stage_and_document(demo):
    done, _ = demo
    out = done.stdout
    if not lightrag_installed():
        assert SKIPPED in out
        pytest.skip("lightrag-hku is not installed: the demo said how to get it")
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    version = importlib.metadata.version("lightrag-hku")
    assert f"LightRAG workload: lightrag-hku {version} (installed)" in out
    section = out[out.index("LightRAG workload:") : out.rindex("limit_usd")]  # before the final status
    # The stub answered LightRAG's prompts, so the graph is not empty.
    graph = re.search(
        r"indexed 2 documents \((\d+) entities, (\d+) relations\) in category 'literature_review'", section
    )
    assert graph and int(graph[1]) > 0 and int(graph[2]) > 0, section
    # One row per stage, each with priced calls; the repeated question shows up as cache hits.
    rows = {line.split()[0]: line.split() for line in section.splitlines() if line.startswith("  ")}
    for stage in ("extraction", "gleaning", "summary", "keywords", "answer", "embedding"):
        assert stage in rows and int(rows[stage][1]) > 0 and float(rows[stage][4]) > 0, section
    assert int(rows["answer"][5]) == 1 and float(rows["answer"][6]) > 0
    assert "indexing by document: " in section and all(f"{doc_id} $0.0" in section for doc_id in DOCUMENTS)
    assert "LLM cache: 2 hits" in section
    assert "INFO:" not in done.stderr  # LightRAG's and nano-vectordb's logging is kept out of the demo's output


def test_the_demo_ends_with_the_guard_refusing_a_call_that_could_exceed_the_budget(demo):
    done, _ = demo
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    (refusal,) = [line for line in out.splitlines() if "max_completion_tokens=4000" in line]
    assert "refused, BudgetExceededError: spendwatch refused the call" in refusal, out
    assert "budget 'global'" in refusal
    assert out.rindex("limit_usd") < out.index("the guard: with SPENDWATCH_ENFORCE=block")  # after the status
