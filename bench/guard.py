"""``python -m bench.guard [--quick] [--against REV] [--rounds N]``: what the budget guard costs per call, and how
well it keeps a budget.

1. Admission cost: ``admit()`` + ``settle()`` of spendwatch's lease-based guard on a SQLite ledger, per call, against
   the same loop without a guard, interleaved in rounds (median µs of the difference).
2. Keeping a budget: threads in several processes hammer one small daily budget with calls that take a few
   milliseconds (as a real request does) and whose cost the request does not cap: chat calls with no output cap,
   one in four at the priority tier, one in five answering at length: gpt-4o-mini with 12,000 tokens, and gpt-5 (a
   reasoning model) with 30,000. Every guard runs once a round (3 rounds, 1 with ``--quick``); reported per guard:
   - overshoot: final spend ÷ limit, the worst round (above 1.000, the budget was broken);
   - under-admission: the budget left unused ÷ limit when calls were refused (0 when none was), the median round;
   Guards:
   - ``spendwatch``: this checkout's guard (its worst case: the model's maximum output at the tier asked for);
   - ``spendwatch@REV``: the guard as committed at REV (default 1451b18, before the bound), run from a git worktree;
   - ``LiteLLM reserve``: LiteLLM's budget reservation (v1.85 and later), modelled as its
     ``proxy/spend_tracking/budget_reservation.py`` (1.110.2) does it: before the call, hold the counted input tokens
     at the input price plus min(the request's cap or 16,384, the model's maximum output) at the output price, on an
     atomic counter; a hold that does not fit what is left is shrunk to it and the call admitted, unless nothing is
     left; after the call the hold is replaced by the actual cost. Modelled in one process with as many threads:
     the counter is atomic in LiteLLM too (Redis), so spreading the callers over processes changes nothing;
   - ``LiteLLM fail_closed``: the same with ``fail_closed_budget_enforcement``: a hold that does not fit refuses;
   - ``check-recorded``: refuse when the *recorded* spend plus this call's estimate exceeds the limit, record the
     cost after the call (LiteLLM before 1.85).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import statistics
import subprocess
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
_MODEL = "gpt-4o-mini"
_CAPPED_REQUEST = CallRequest("openai", "chat", _MODEL, None, 200, 400, "max_tokens")
_CALL_SECONDS = 0.02
_INPUT_TOKENS = 150  # what each call really reads; its request's bound says 200 (UTF-8 bytes)
_SHORT_ANSWER = 300
# (model, tokens of a long answer): a chat model's long reply, and a reasoning model's, past LiteLLM's 16,384
_WORKLOADS = (("gpt-4o-mini", 12_000), ("gpt-5", 30_000))
_BASELINE = "1451b18"
_LITELLM_DEFAULT_OUTPUT = 16_384  # LiteLLM's DEFAULT_MAX_OUTPUT_TOKENS_FALLBACK


def _guard(path: str, limit: float) -> tuple[BudgetGuard, LedgerSink, Ledger]:
    settings = load_settings({"ledger": path, "daily_budget_usd": limit}, environ={})
    ledger = Ledger(open_backend(path), _UTC)
    sink = LedgerSink(ledger, Path(f"{path}.journal"))
    return BudgetGuard(ledger, settings, PriceTable(), GuardConfig()), sink, ledger


def _record(cost: float, model: str = _MODEL) -> UsageRecord:
    return UsageRecord("openai", "chat", model, cost_usd=cost, start_time=time.time())


# --- the workload ------------------------------------------------------------------------------------------------


def _tier(call: int) -> str | None:
    return "priority" if call % 4 == 0 else None


def _output(call: int, long: int) -> int:
    return long if call % 5 == 0 else _SHORT_ANSWER


def _actual_cost(prices: PriceTable, call: int, model: str, long: int) -> float:
    return prices.lookup(model, service_tier=_tier(call)).cost(_INPUT_TOKENS, _output(call, long))


def _request(call: int, model: str) -> CallRequest:
    """The call's request: no output cap, its tier when the guard's CallRequest can say one (not at 1451b18)."""
    base = ("openai", "chat", model, None, 200, None, None)
    if "service_tier" in CallRequest.__dataclass_fields__:
        return CallRequest(*base, service_tier=_tier(call))
    return CallRequest(*base)


def _limit(processes: int, threads: int, calls: int, model: str, long: int) -> float:
    """Room for about a third of the attempts."""
    prices = PriceTable()
    return sum(_actual_cost(prices, call, model, long) for call in range(calls)) * processes * threads / 3


# --- 1. admission cost -------------------------------------------------------------------------------------------


def admission_cost(rounds: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        guard, sink, _ = _guard(f"{tmp}/ledger.db", 1e9)
        cost = PriceTable().lookup(_MODEL).cost(200, 300)

        def guarded() -> None:
            record = _record(cost)
            guard.admit(_CAPPED_REQUEST).settle(record)
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


# --- 2. keeping a budget -----------------------------------------------------------------------------------------


def _spendwatch_worker(path: str, limit: float, threads: int, calls: int, model: str, long: int, refusals) -> None:
    guard, sink, _ = _guard(path, limit)
    prices = PriceTable()

    def caller() -> None:
        for call in range(calls):
            try:
                ticket = guard.admit(_request(call, model))
            except BudgetExceededError:
                with refusals.get_lock():
                    refusals.value += 1
                continue
            time.sleep(_CALL_SECONDS)  # the request in flight
            record = _record(_actual_cost(prices, call, model, long), model)
            if ticket is not None:
                ticket.settle(record)
            sink.record(record)

    _run_threads(caller, threads)
    sink.close()


def _check_recorded_worker(path: str, limit: float, threads: int, calls: int, model: str, long: int, refusals) -> None:
    ledger = Ledger(open_backend(path), _UTC)
    prices = PriceTable()
    estimate = prices.lookup(model).cost(200, 4096)
    today = date.today()
    lock = threading.Lock()
    counter = iter(range(10**9))

    def caller() -> None:
        for call in range(calls):
            if ledger.spend(today - timedelta(days=1), today + timedelta(days=2)) + estimate > limit:
                with refusals.get_lock():
                    refusals.value += 1
                continue
            time.sleep(_CALL_SECONDS)
            with lock:
                entry_id = f"{id(ledger)}:{next(counter)}"
            ledger.ingest([LedgerEntry(entry_id, _record(_actual_cost(prices, call, model, long), model))])

    _run_threads(caller, threads)


def _run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _in_processes(
    worker, processes: int, threads: int, calls: int, model: str, long: int, limit: float
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.db"
        open_backend(path).close()
        context = multiprocessing.get_context("spawn")
        refusals = context.Value("i", 0)
        arguments = (path, limit, threads, calls, model, long, refusals)
        jobs = [context.Process(target=worker, args=arguments) for _ in range(processes)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        rows = Ledger(open_backend(path), _UTC).totals()  # none when every call was refused
    spent, admitted = (rows[0]["cost_usd"], int(rows[0]["success"])) if rows else (0.0, 0)
    return _outcome(spent, limit, admitted, refusals.value)


def _outcome(spent: float, limit: float, admitted: int, refused: int) -> dict[str, float]:
    unused = max(limit - spent, 0.0) / limit if refused else 0.0
    return {"spend_over_limit": spent / limit, "under_admission": unused, "calls": admitted, "refused": refused}


class _LiteLLMCounter:
    """LiteLLM's spend counter for one budget: spend plus the holds of calls in flight, changed atomically."""

    def __init__(self, limit: float, fail_closed: bool) -> None:
        self.limit, self.fail_closed = limit, fail_closed
        self.counter = 0.0
        self.spent = 0.0
        self.lock = threading.Lock()

    def reserve(self, estimate: float) -> float | None:
        """The hold taken (None: refused), as ``_apply_over_budget_reservation_policy`` decides."""
        with self.lock:
            self.counter += estimate
            if self.counter - self.limit <= 1e-12:
                return estimate
            remaining = self.limit - (self.counter - estimate)
            if remaining <= 1e-12 or self.fail_closed:
                self.counter -= estimate
                return None
            self.counter += remaining - estimate  # the hold shrunk to what was left
            return remaining

    def settle(self, hold: float, cost: float) -> None:
        with self.lock:
            self.counter += cost - hold
            self.spent += cost


def litellm(
    fail_closed: bool, processes: int, threads: int, calls: int, model: str, long: int, limit: float
) -> dict[str, float]:
    from spendwatch.instrumentation.pricing.limits import max_output_tokens

    prices = PriceTable()
    standard = prices.lookup(model)  # LiteLLM's model table prices the standard tier
    output = min(_LITELLM_DEFAULT_OUTPUT, max_output_tokens(model) or _LITELLM_DEFAULT_OUTPUT)
    estimate = standard.cost(_INPUT_TOKENS, output)  # LiteLLM counts the input with a tokenizer
    budget = _LiteLLMCounter(limit, fail_closed)
    outcomes = {"admitted": 0, "refused": 0}

    def caller() -> None:
        for call in range(calls):
            hold = budget.reserve(estimate)
            if hold is None:
                with budget.lock:
                    outcomes["refused"] += 1
                continue
            time.sleep(_CALL_SECONDS)
            budget.settle(hold, _actual_cost(prices, call, model, long))
            with budget.lock:
                outcomes["admitted"] += 1

    _run_threads(caller, processes * threads)
    return _outcome(budget.spent, limit, outcomes["admitted"], outcomes["refused"])


def _at_revision(run_dir: Path, load: dict) -> dict[str, float]:
    """The spendwatch guard of a checkout (``bench.baseline.checkout``): this harness run there, as
    ``--only-spendwatch``, printing its outcome as one JSON line."""
    arguments = [f"--{key}={value}" for key, value in load.items()]
    answer = subprocess.run(
        [sys.executable, "-m", "bench.guard", "--only-spendwatch", *arguments],
        cwd=run_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout.strip().splitlines()[-1])


def keeping(load: dict, against: str, rounds: int) -> dict[str, dict[str, float]]:
    """Each guard's outcome over ``rounds`` rounds (every guard once a round): its worst overshoot, and the median
    of the rest."""
    from bench.baseline import checkout

    limit = _limit(**load)
    runs: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with checkout(against) as run_dir:
        for _ in range(rounds):
            runs["spendwatch"].append(_in_processes(_spendwatch_worker, **load, limit=limit))
            runs[f"spendwatch@{against}"].append(_at_revision(run_dir, load))
            runs["LiteLLM reserve"].append(litellm(False, **load, limit=limit))
            runs["LiteLLM fail_closed"].append(litellm(True, **load, limit=limit))
            runs["check-recorded"].append(_in_processes(_check_recorded_worker, **load, limit=limit))
    return {name: _summary(outcomes) for name, outcomes in runs.items()}


def _summary(outcomes: list[dict[str, float]]) -> dict[str, float]:
    summary = {key: statistics.median(outcome[key] for outcome in outcomes) for key in outcomes[0]}
    summary["spend_over_limit"] = max(outcome["spend_over_limit"] for outcome in outcomes)
    return summary


def _table(load: dict, rounds: int, results: dict) -> list[str]:
    names = list(results)
    rows = [
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| final spend ÷ limit, the worst round (overshoot above 1.000) | "
        + " | ".join(f"{results[name]['spend_over_limit']:.3f}" for name in names)
        + " |",
        "| under-admission: budget left unused ÷ limit when calls were refused, median | "
        + " | ".join(f"{results[name]['under_admission']:.3f}" for name in names)
        + " |",
        "| calls admitted / refused, median | "
        + " | ".join(f"{results[name]['calls']:.0f} / {results[name]['refused']:.0f}" for name in names)
        + " |",
    ]
    heading = f"{load['model']}, 1 in 5 answering {load['long']:,} tokens (the rest {_SHORT_ANSWER}), 1 in 4 at"
    heading += f" priority; {load['processes']} processes × {load['threads']} threads × {load['calls']} calls,"
    return [heading + f" {rounds} rounds:", "", *rows, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--against", default=_BASELINE, metavar="REV", help=f"the earlier guard (default {_BASELINE})")
    parser.add_argument("--rounds", type=int, help="rounds of the budget-keeping runs (default 3, --quick 1)")
    parser.add_argument("--only-spendwatch", action="store_true", help=argparse.SUPPRESS)  # one JSON line, for REV
    for key in ("processes", "threads", "calls", "long"):
        parser.add_argument(f"--{key}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    load = {"processes": args.processes or 4, "threads": args.threads or 4, "calls": args.calls or 25}
    if args.quick and args.calls is None:
        load["calls"] = 10
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.only_spendwatch:
        load |= {"model": args.model, "long": args.long}
        print(json.dumps(_in_processes(_spendwatch_worker, **load, limit=_limit(**load))))
        return 0
    load_at_start = os.getloadavg()[0]  # the admission cost is µs: a busy machine shows in it
    rounds, calls = (5, 2000) if args.quick else (15, 5000)
    admission = admission_cost(rounds, calls)
    tables = []
    broken = False
    for model, long in _WORKLOADS:
        workload = load | {"model": model, "long": long}
        results = keeping(workload, args.against, args.rounds)
        tables += _table(workload, args.rounds, results)
        broken = broken or results["spendwatch"]["spend_over_limit"] > 1.0
    command = "python -m bench.guard" + (" --quick" if args.quick else "")
    if args.against != _BASELINE:
        command += f" --against {args.against}"
    text = f"Budget guard, `{command}`, {time.strftime('%Y-%m-%d')}, python {sys.version.split()[0]}, "
    text += f"load average {load_at_start:.1f} on {os.cpu_count()} cores at the start\n\n"
    text += f"Admission + settle per call, µs over no guard (SQLite): {admission['median_us']:.1f} "
    text += f"({admission['min_us']:.1f}–{admission['max_us']:.1f})\n\n"
    text += "Keeping a budget: calls without an output cap; the limit has room for about a third of them.\n\n"
    text += "\n".join(tables)
    publish("guard.md", text)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
