"""``spendwatch demo`` end to end, as a user runs it: a subprocess, offline, its output checked.

With Prometheus and Alertmanager installed (Debian's ``prometheus`` and ``prometheus-alertmanager``) the demo also
starts them with the shipped alert rules and prints the pages Alertmanager delivers; locally a missing binary only
changes what is asserted, in CI (``CI=true``) it fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.servers import in_ci

DEMO_TIMEOUT = 120.0  # the demo takes ~20 s with alerting, ~2 s without


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
    assert "operation       model" in out
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
    done, elapsed = demo
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
    assert elapsed < 60, f"the demo took {elapsed:.0f}s"
