"""``spendwatch demo``: the whole pipeline on this machine, offline.

It starts the local OpenAI-compatible stub, then runs a small workload through the real ``openai`` SDK under
``opentelemetry-instrument`` (exactly how a user starts spendwatch) with an embedded SQLite ledger and ``/metrics``
up, and prints what each call cost, the budget gauges as Prometheus scrapes them, ``spendwatch status``, and last
the budget guard refusing a call that could exceed a budget.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spendwatch.demo.processes import free_port
from spendwatch.demo.stub import StubServer

__all__ = ["opentelemetry_instrument", "run_demo"]

DEMO_DAILY_BUDGET_USD = "0.00035"  # small, so the demo's few calls cross the 75 % warning line
DEMO_MONTHLY_BUDGET_USD = "0.01"


def run_demo(*, ledger: str | None = None, hold: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="spendwatch-demo-"))
    ledger = ledger or str(workdir / "ledger.db")
    with StubServer(cached_tokens=8, reasoning_tokens=6) as stub:
        environment = _demo_environment(stub.base_url, ledger, hold)
        print(f"spendwatch demo: stub at {stub.base_url}, ledger {ledger}")
        print(
            f"  budgets: ${DEMO_DAILY_BUDGET_USD} a day, ${DEMO_MONTHLY_BUDGET_USD} a month (small on purpose)\n",
            flush=True,
        )
        command = [opentelemetry_instrument(), sys.executable, "-m", "spendwatch.demo._workload"]
        workload = subprocess.Popen(command, env=environment)
        try:
            status = workload.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the workload too: let it stop its servers (by PID) and end
            status = workload.wait()
    if ledger.startswith(str(workdir)) and not hold:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def _demo_environment(base_url: str, ledger: str, hold: bool) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "sk-spendwatch-demo-not-a-real-key",
        "SPENDWATCH_LEDGER": ledger,
        "SPENDWATCH_DAILY_BUDGET_USD": DEMO_DAILY_BUDGET_USD,
        "SPENDWATCH_MONTHLY_BUDGET_USD": DEMO_MONTHLY_BUDGET_USD,
        "SPENDWATCH_CATEGORIES": "metabolite_identification,literature_review",
        # The usual 9464 when it is free, else any free port: a real exporter may already be running.
        "SPENDWATCH_METRICS_ADDRESS": f"127.0.0.1:{free_port(9464)}",
        "SPENDWATCH_DEMO_HOLD": "1" if hold else "",
        "OTEL_SERVICE_NAME": "spendwatch-demo",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }


def opentelemetry_instrument() -> str:
    """The ``opentelemetry-instrument`` beside this Python, else the one on PATH."""
    beside_python = Path(sys.executable).parent / "opentelemetry-instrument"
    return str(beside_python) if beside_python.exists() else "opentelemetry-instrument"
