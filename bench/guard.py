"""``python -m bench.guard [--quick]``: what the budget guard costs per call, and whether it overshoots.

1. Admission cost: ``admit()`` + ``settle()`` of spendwatch's lease-based guard on a SQLite ledger, per call, against
   the same loop without a guard, interleaved in rounds (median µs of the difference).
2. Overshoot under the same concurrent load, side by side: threads in several processes hammer one small daily
   budget with calls that take a few milliseconds (as a real request does) and cost a known amount;
   - ``spendwatch``: the guard that ships (reserve the worst case before the call, settle after);
   - ``check-recorded``: what LiteLLM-style budgets do: refuse when the *recorded* spend plus this call's estimate
     exceeds the limit, record the cost after the call.
   Reported: final spend ÷ limit (ours must never exceed 1.0) and how much of the budget was used.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench import publish
from spendwatch.exporter import Ledger, LedgerEntry, LedgerSink, load_settings
from spendwatch.exporter.guard import BudgetGuard
from spendwatch.exporter.guard_rules import GuardConfig
from spendwatch.exporter.ledger import open_backend
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.pricing import PriceTable
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["main"]

_UTC = ZoneInfo("UTC")
_REQUEST = CallRequest("openai", "chat", "gpt-4o-mini", None, 200, 400, "max_tokens")
_CALL_SECONDS = 0.02


def _guard(path: str, limit: float) -> tuple[BudgetGuard, LedgerSink, Ledger]:
    settings = load_settings({"ledger": path, "daily_budget_usd": limit}, environ={})
    ledger = Ledger(open_backend(path), _UTC)
    sink = LedgerSink(ledger, Path(f"{path}.journal"))
    return BudgetGuard(ledger, settings, PriceTable(), GuardConfig()), sink, ledger


def _record(cost: float) -> UsageRecord:
    return UsageRecord("openai", "chat", "gpt-4o-mini", cost_usd=cost, start_time=time.time())


# --- 1. admission cost -------------------------------------------------------------------------------------------


def admission_cost(rounds: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        guard, sink, _ = _guard(f"{tmp}/ledger.db", 1e9)
        cost = PriceTable().lookup("gpt-4o-mini").cost(200, 300)

        def guarded() -> None:
            record = _record(cost)
            guard.admit(_REQUEST).settle(record)
            sink.record(record)

        def bare() -> None:
            sink.record(_record(cost))

        deltas = []
        for _ in range(rounds):
            timings = {}
            for name, call in (("bare", bare), ("guarded", guarded)):
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                timings[name] = (time.perf_counter() - start) / calls * 1e6
            deltas.append(timings["guarded"] - timings["bare"])
            sink.flush()
        sink.close()
    return {"median_us": statistics.median(deltas), "min_us": min(deltas), "max_us": max(deltas)}


# --- 2. overshoot under concurrency ------------------------------------------------------------------------------


def _spendwatch_worker(path: str, limit: float, threads: int, calls: int, cost: float) -> None:
    guard, sink, _ = _guard(path, limit)

    def caller() -> None:
        for _ in range(calls):
            try:
                ticket = guard.admit(_REQUEST)
            except BudgetExceededError:
                continue
            time.sleep(_CALL_SECONDS)  # the request in flight
            record = _record(cost)
            if ticket is not None:
                ticket.settle(record)
            sink.record(record)

    _run_threads(caller, threads)
    sink.close()


def _check_recorded_worker(path: str, limit: float, threads: int, calls: int, cost: float) -> None:
    ledger = Ledger(open_backend(path), _UTC)
    estimate = PriceTable().lookup("gpt-4o-mini").cost(_REQUEST.input_tokens, _REQUEST.max_output_tokens)
    today = date.today()
    lock = threading.Lock()
    counter = iter(range(10**9))

    def caller() -> None:
        for _ in range(calls):
            if ledger.spend(today - timedelta(days=1), today + timedelta(days=2)) + estimate > limit:
                continue
            time.sleep(_CALL_SECONDS)
            with lock:
                entry_id = f"{id(ledger)}:{next(counter)}"
            ledger.ingest([LedgerEntry(entry_id, _record(cost))])

    _run_threads(caller, threads)


def _run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def overshoot(variant: str, processes: int, threads: int, calls: int) -> dict[str, float]:
    cost = PriceTable().lookup("gpt-4o-mini").cost(150, 350)  # what each call really costs: under its worst case
    limit = cost * processes * threads * calls / 3  # room for about a third of the attempts
    worker = _spendwatch_worker if variant == "spendwatch" else _check_recorded_worker
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.db"
        open_backend(path).close()
        context = multiprocessing.get_context("spawn")
        jobs = [context.Process(target=worker, args=(path, limit, threads, calls, cost)) for _ in range(processes)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        (total,) = Ledger(open_backend(path), _UTC).totals()
    return {"spend_over_limit": total["cost_usd"] / limit, "calls": total["success"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, calls = (5, 2000) if args.quick else (15, 5000)
    admission = admission_cost(rounds, calls)
    load = {"processes": 4, "threads": 4, "calls": 10 if args.quick else 25}
    results = {variant: overshoot(variant, **load) for variant in ("spendwatch", "check-recorded")}
    table = [
        "| measure | spendwatch | check-recorded-spend guard |",
        "|---|---|---|",
        f"| admission + settle per call, µs over no guard (SQLite) | {admission['median_us']:.1f} "
        f"({admission['min_us']:.1f}–{admission['max_us']:.1f}) | — |",
        f"| final spend ÷ limit ({load['processes']} processes × {load['threads']} threads) | "
        f"{results['spendwatch']['spend_over_limit']:.3f} | {results['check-recorded']['spend_over_limit']:.3f} |",
        f"| calls admitted | {results['spendwatch']['calls']} | {results['check-recorded']['calls']} |",
    ]
    command = "python -m bench.guard" + (" --quick" if args.quick else "")
    text = f"Budget guard, `{command}`, {time.strftime('%Y-%m-%d')}, python {sys.version.split()[0]}\n\n"
    text += "\n".join(table) + "\n"
    publish("guard.md", text)
    return 1 if results["spendwatch"]["spend_over_limit"] > 1.0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
