"""The workload ``spendwatch demo`` runs under ``opentelemetry-instrument``: a few calls of each kind through the
real ``openai`` SDK, then what they cost, the budget gauges on ``/metrics`` and ``spendwatch status``.

When Prometheus and Alertmanager are installed (:mod:`spendwatch.demo.alerting`), they scrape this process's
``/metrics`` with the shipped alert rules, and the workload pushes the day's budget through its warning, critical
and exceeded thresholds, printing each page as Alertmanager delivers it. This process serves ``/metrics``, so it
stays up until the pages are in.

Last, the guard: ``python -m spendwatch.demo._workload guard`` runs in a process of its own with
``SPENDWATCH_ENFORCE=block`` (the mode is fixed at start-up) and shows a call that could exceed the budget refused
before it leaves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import openai

import spendwatch
from spendwatch import runtime
from spendwatch.demo import _lightrag
from spendwatch.demo.alerting import AlertingDemo, unavailable_reason
from spendwatch.instrumentation import UsageRecord, register_sink

FIRST_PAGE_TIMEOUT = 25.0  # Prometheus scrapes ~5 s after it starts, then `for:` and Alertmanager's group_wait
PAGE_TIMEOUT = 15.0
# Each level's page; a level is waited for only when the spend stops below the next one (else that one holds it back).
PAGES = (
    ("warning", ("LLMBudgetUsageHigh", "warning")),
    ("critical", ("LLMBudgetUsageHigh", "critical")),
    ("exceeded", ("LLMBudgetExhausted", "critical")),
)
PUSH_MODEL = "gpt-3.5-turbo-instruct"  # ~9 % of the demo's day budget a call: lands between 90 % and 100 %
# The guard's example: up to 4,000 output tokens of gpt-4o could cost $0.04, past any of the demo's budgets.
GUARD_MODEL, GUARD_MAX_TOKENS = "gpt-4o", 4000
CHAT = [{"role": "user", "content": "Which metabolite has the m/z 180.0634 in positive mode?"}]


class TableSink:
    """Keeps each call's record to print one row per call."""

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.rows.append(record)


def workload(client: openai.OpenAI) -> None:
    with spendwatch.category("metabolite_identification"):
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        with_usage = {"include_usage": True}
        list(client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True, stream_options=with_usage))
        list(client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True))  # no usage: estimated
    with spendwatch.category("literature_review"):
        client.responses.create(model="o4-mini", input="Summarise three papers on LC-MS annotation.")
        client.embeddings.create(model="text-embedding-3-small", input=["abstract one", "abstract two"])
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    client.chat.completions.create(model="my-private-finetune", messages=CHAT)  # unpriced, never $0
    with contextlib.suppress(openai.InternalServerError):  # a failed call is counted as an error, costing nothing
        client.chat.completions.create(model="stub-error-500", messages=CHAT)


def print_calls(rows: list[UsageRecord]) -> None:
    print(f"{'operation':<18}{'model':<24}{'category':<27}{'in':>6}{'out':>6}{'cost USD':>13}  note")
    for r in rows:
        cost = "unpriced" if r.cost_usd is None else f"{r.cost_usd:.8f}"
        note = r.error_type or ("estimated tokens" if r.estimated else "")
        tokens = f"{r.input_tokens:>6}{r.output_tokens:>6}"
        print(f"{r.operation:<18}{r.request_model:<24}{r.category or '-':<27}{tokens}{cost:>13}  {note}")
    priced = sum(r.cost_usd or 0 for r in rows)
    print(f"{len(rows)} calls, ${priced:.8f} priced, {sum(r.cost_usd is None for r in rows)} unpriced\n")


def print_metrics(url: str) -> None:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    wanted = ("llm_budget_used_ratio", "llm_budget_spent_usd", "llm_cost_usd_total", "llm_unpriced_requests_total")
    print(f"from {url}:")
    for line in text.splitlines():
        if line.startswith(wanted):
            print(f"  {line}")
    print()


def start_alerting(metrics_url: str | None) -> AlertingDemo | None:
    """Prometheus and Alertmanager on this process's /metrics, or None (after one line saying why not)."""
    reason = "alerting: skipped, /metrics is off" if metrics_url is None else unavailable_reason()
    if reason is not None:
        print(reason + "\n")
        return None
    alerting = AlertingDemo()
    try:
        alerting.start(metrics_url)
    except Exception as error:  # noqa: BLE001 - the rest of the demo runs without alerting
        print(f"alerting: skipped, could not start Prometheus and Alertmanager: {error}\n")
        return None
    return alerting


def day_budget(attached: runtime.Runtime):
    attached.sink.flush()
    return spendwatch.budgets().get("global", "day")


def push_spend(client: openai.OpenAI, attached: runtime.Runtime, table: TableSink, level: str, alerting: AlertingDemo):
    """Calls until the day's budget reaches ``level``; each printed with the share used after it."""
    day = day_budget(attached)
    target = day.thresholds[level]
    alerting.print_arrivals()
    print(f"\nspending past the day budget's {level} threshold ({target:.0%}):")
    for _ in range(40):
        if day.used_ratio >= target:
            break
        try:
            client.completions.create(model=PUSH_MODEL, prompt="Say this is a test")
        except Exception as error:  # noqa: BLE001 - e.g. SPENDWATCH_ENFORCE=block from the shell: say so, go on
            print(f"{alerting.elapsed():+6.1f}s  call refused: {error}")
            break
        day = day_budget(attached)
        cost = table.rows[-1].cost_usd or 0
        used = f"{day.used_ratio:.1%} of the day's budget used"
        print(f"{alerting.elapsed():+6.1f}s  call  text_completion {PUSH_MODEL} ${cost:.8f} -> {used}")
    return day


def page_the_budget(client: openai.OpenAI, attached: runtime.Runtime, table: TableSink, alerting: AlertingDemo):
    """Walk the day's budget through each threshold and wait for each page."""
    print(f"{alerting.elapsed():+6.1f}s  waiting for the pages (Prometheus first scrapes ~5 s after it starts)")
    day = day_budget(attached)
    timeout = FIRST_PAGE_TIMEOUT
    for index, (level, page) in enumerate(PAGES):
        if day.used_ratio < day.thresholds[level]:
            day = push_spend(client, attached, table, level, alerting)
        following = PAGES[index + 1][0] if index + 1 < len(PAGES) else None
        if following is not None and day.used_ratio >= day.thresholds[following]:
            continue
        alerting.wait_for_pages([page], timeout)
        timeout = PAGE_TIMEOUT
    alerting.print_arrivals()
    print()


def show_the_guard() -> None:
    """Run :func:`guard_step` in a process of its own with ``SPENDWATCH_ENFORCE=block``, on this ledger and stub."""
    from spendwatch.demo.run import opentelemetry_instrument

    print("\nthe guard: with SPENDWATCH_ENFORCE=block a call that could take a budget past its limit is refused")
    print("before any request leaves (a new process, as the mode is read at start-up):", flush=True)
    environment = os.environ | {"SPENDWATCH_ENFORCE": "block", "SPENDWATCH_METRICS_ADDRESS": "off"}
    command = [opentelemetry_instrument(), sys.executable, "-m", "spendwatch.demo._workload", "guard"]
    subprocess.run(command, env=environment, check=False)


def guard_step() -> int:
    """One call whose worst case exceeds the demo's budgets, refused by the guard; prints the refusal."""
    client = openai.OpenAI(max_retries=0)
    asked = f"chat {GUARD_MODEL} with max_completion_tokens={GUARD_MAX_TOKENS}"
    try:
        client.chat.completions.create(model=GUARD_MODEL, messages=CHAT, max_completion_tokens=GUARD_MAX_TOKENS)
    except spendwatch.BudgetExceededError as refusal:
        print(f"  {asked}: refused, {type(refusal).__name__}: {refusal}")
        return 0
    print(f"  {asked}: admitted (no budget is configured, or SPENDWATCH_ENFORCE is not block)")
    return 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that `finally` stops Prometheus and Alertmanager and removes their files


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    attached = runtime.current() or spendwatch.configure()
    metrics_url = attached.metrics_server.url if attached.metrics_server is not None else None
    alerting = start_alerting(metrics_url)  # first: Prometheus's first scrape takes ~5 s, the workload runs meanwhile
    try:
        table = TableSink()
        register_sink(table)
        client = openai.OpenAI(max_retries=0)
        workload(client)
        print_calls(table.rows)
        attached.sink.flush()
        if metrics_url is not None:
            print_metrics(metrics_url)
        if alerting is not None:
            page_the_budget(client, attached, table, alerting)
        _lightrag.run(attached.ledger, attached.sink.flush)  # after the pages: its spend would cross them all
        from spendwatch.cli import main as cli_main

        cli_main(["status"])
        show_the_guard()
        if os.environ.get("SPENDWATCH_DEMO_HOLD") and metrics_url is not None:
            print(f"\nserving {metrics_url} — Ctrl-C to stop")
            if alerting is not None and alerting.prometheus and alerting.alertmanager:
                print(f"Prometheus at {alerting.prometheus.url}, Alertmanager at {alerting.alertmanager.url}")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0 if os.environ.get("SPENDWATCH_DEMO_HOLD") else 130
    finally:
        if alerting is not None:
            alerting.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(guard_step() if sys.argv[1:] == ["guard"] else main())
