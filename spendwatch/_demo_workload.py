"""The workload ``spendwatch demo`` runs under ``opentelemetry-instrument``: a few calls of each kind through the
real ``openai`` SDK, then what they cost, the budget gauges on ``/metrics`` and ``spendwatch status``."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request

import openai

import spendwatch
from spendwatch import runtime
from spendwatch.instrumentation import UsageRecord, register_sink

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
    print(f"{'operation':<16}{'model':<24}{'category':<27}{'in':>6}{'out':>6}{'cost USD':>13}  note")
    for r in rows:
        cost = "unpriced" if r.cost_usd is None else f"{r.cost_usd:.8f}"
        note = r.error_type or ("estimated tokens" if r.estimated else "")
        tokens = f"{r.input_tokens:>6}{r.output_tokens:>6}"
        print(f"{r.operation:<16}{r.request_model:<24}{r.category or '-':<27}{tokens}{cost:>13}  {note}")
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


def main() -> int:
    attached = runtime.current() or spendwatch.configure()
    table = TableSink()
    register_sink(table)
    workload(openai.OpenAI(max_retries=0))
    print_calls(table.rows)
    attached.sink.flush()
    if attached.metrics_server is not None:
        print_metrics(attached.metrics_server.url)
    from spendwatch.cli import main as cli_main

    cli_main(["status"])
    if os.environ.get("SPENDWATCH_DEMO_HOLD") and attached.metrics_server is not None:
        print(f"\nserving {attached.metrics_server.url} — Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
