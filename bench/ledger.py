"""``python -m bench.ledger [--quick]``: what keeping "a returned call survives kill -9" costs the caller.

Two designs, measured side by side in one run against fresh SQLite ledgers (WAL, ``synchronous=NORMAL``: both
survive a process crash):

- ``journal`` — :class:`LedgerSink`: ``record()`` encodes and appends into a memory-mapped journal; a background
  thread drains it into the ledger in batches (what spendwatch ships);
- ``commit`` — the naive baseline: one ``ledger.ingest([entry])``, a durable transaction, per record.

For each, with 1 process and with P processes at once on one ledger (spawned; each its own sink): the caller's path
per record (µs; the whole ``ingest`` for ``commit``) and the end-to-end throughput, records/s from the first start
to the last ``flush()`` returning, i.e. until every record is in the ledger. Each round runs every (variant,
processes) pair once in a fresh random order, so machine-wide drift hits both alike; the report gives medians over
rounds with their interquartile range, and the ratio commit ÷ journal as the median of the per-round ratios. Every
run checks that the ledger holds exactly what was written (calls and running totals) and that no journal is left.
The table goes to stdout and to ``bench/results/ledger.md``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bench import fill_defaults, publish, spread
from spendwatch.exporter.journal import SUFFIX
from spendwatch.exporter.ledger import Ledger, LedgerEntry, open_backend
from spendwatch.exporter.sink import LedgerSink
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["main"]

_VARIANTS = ("journal", "commit")
_FULL = {"rounds": 9, "records": 10_000, "processes": 4}
_QUICK = {"rounds": 3, "records": 2_000, "processes": 4}
_MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small")
_CATEGORIES = ("search", "summarise", "extract", None)
_UTC = ZoneInfo("UTC")


def _record(worker: int, index: int) -> UsageRecord:
    """A realistic record: the fields an instrumented chat call fills in, varied a little."""
    model = _MODELS[index % len(_MODELS)]
    return UsageRecord(
        provider="openai",
        operation="embeddings" if model.startswith("text-") else "chat",
        request_model=model,
        response_model=f"{model}-2025-01-01",
        input_tokens=800 + index % 1000,
        output_tokens=0 if model.startswith("text-") else 100 + index % 300,
        cache_read_tokens=256 if index % 3 == 0 else 0,
        cost_usd=None if index % 97 == 0 else 0.00042,
        pricing="unpriced" if index % 97 == 0 else "bundled@2025-06",
        outcome="error" if index % 53 == 0 else "success",
        error_type="RateLimitError" if index % 53 == 0 else None,
        duration_s=0.2 + (index % 50) / 10,
        start_time=time.time(),
        category=_CATEGORIES[index % len(_CATEGORIES)],
        trace_id=(worker << 64 | index) + 0x5BD0_0000_0000_0000_0000_0000_0000_0001,
        span_id=index + 0x1000_0000_0000_0001,
    )


# --- one process's part of a run (spawned) -------------------------------------------------------------------------
def _write_journal(ledger: Ledger, directory: Path, records: list[UsageRecord], barrier) -> tuple[int, int, int]:
    sink = LedgerSink(ledger, directory)
    try:
        gc.collect()
        barrier.wait()
        start = time.monotonic_ns()
        for record in records:
            sink.record(record)
        returned = time.monotonic_ns()
        if not sink.flush():
            raise RuntimeError("the journal could not be drained into the ledger")
        return start, returned, time.monotonic_ns()
    finally:
        sink.close()


def _write_commit(ledger: Ledger, worker: int, records: list[UsageRecord], barrier) -> tuple[int, int, int]:
    entries = [LedgerEntry(f"commit-{worker}:{index}", record) for index, record in enumerate(records)]
    gc.collect()
    barrier.wait()
    start = time.monotonic_ns()
    for entry in entries:
        ledger.ingest([entry])
    done = time.monotonic_ns()
    return start, done, done


def _worker(variant: str, ledger_path: str, journal_dir: str, worker: int, count: int, barrier, results) -> None:
    try:
        ledger = Ledger(open_backend(ledger_path), _UTC)
        records = [_record(worker, index) for index in range(count)]
        if variant == "journal":
            times = _write_journal(ledger, Path(journal_dir), records, barrier)
        else:
            times = _write_commit(ledger, worker, records, barrier)
        ledger.close()
        results.put(("ok", times))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails the run
        barrier.abort()
        results.put(("error", f"{type(error).__name__}: {error}"))


# --- the orchestrator ----------------------------------------------------------------------------------------------
@dataclass
class _Samples:
    """Per round, for one (variant, processes): caller-path µs per record and end-to-end records/s."""

    caller_us: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    in_ledger: int = 0


def _run_once(variant: str, processes: int, count: int, workdir: Path) -> tuple[float, float]:
    """One timed run in a fresh ledger; returns (median caller µs per record over processes, records/s)."""
    ledger_path, journal_dir = workdir / "ledger.db", workdir / "journal"
    open_backend(str(ledger_path)).close()  # create the schema once, before the writers race to
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    args = (variant, str(ledger_path), str(journal_dir))
    workers = [context.Process(target=_worker, args=(*args, w, count, barrier, results)) for w in range(processes)]
    for process in workers:
        process.start()
    reports = [results.get(timeout=600) for _ in workers]
    for process in workers:
        process.join(timeout=60)
    errors = [detail for status, detail in reports if status != "ok"]
    if errors:
        raise RuntimeError(f"{variant} × {processes}: {errors[0]}")
    times = [detail for _, detail in reports]
    _check_nothing_lost(ledger_path, journal_dir, processes * count)
    caller_us = statistics.median((returned - start) / count / 1000 for start, returned, _ in times)
    elapsed_s = (max(done for _, _, done in times) - min(start for start, _, _ in times)) / 1e9
    return caller_us, processes * count / elapsed_s


def _check_nothing_lost(ledger_path: Path, journal_dir: Path, written: int) -> None:
    ledger = Ledger(open_backend(str(ledger_path)), _UTC)
    try:
        in_ledger = ledger.call_count()
        counted = sum(row["duration_count"] for row in ledger.totals())
    finally:
        ledger.close()
    if in_ledger != written or counted != written:
        raise AssertionError(f"wrote {written} records; the ledger has {in_ledger} calls and totals count {counted}")
    left = list(journal_dir.glob(f"*{SUFFIX}")) if journal_dir.exists() else []
    if left:
        raise AssertionError(f"{len(left)} journal file(s) left after close(): {left[0]}")


def _measure(args: argparse.Namespace) -> dict[tuple[str, int], _Samples]:
    pairs = [(variant, processes) for processes in sorted({1, args.processes}) for variant in _VARIANTS]
    samples = {pair: _Samples() for pair in pairs}
    order = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-ledger-") as tmp:
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}", end="\r", file=sys.stderr, flush=True)
            for variant, processes in order.sample(pairs, len(pairs)):
                workdir = Path(tmp) / f"{variant}-{processes}-{round_number}"
                workdir.mkdir()
                caller_us, throughput = _run_once(variant, processes, args.records, workdir)
                shutil.rmtree(workdir)
                sample = samples[variant, processes]
                sample.caller_us.append(caller_us)
                sample.throughput.append(throughput)
                sample.in_ledger = processes * args.records
    print(file=sys.stderr)
    return samples


# --- the report ----------------------------------------------------------------------------------------------------
def _cell(values: list[float], digits: int) -> str:
    median, q1, q3 = spread(values)
    return f"{median:,.{digits}f} ({q1:,.{digits}f}–{q3:,.{digits}f})"


def _ratio(numerators: list[float], denominators: list[float]) -> str:
    return _cell([n / d for n, d in zip(numerators, denominators, strict=True)], 1)


def _markdown(args: argparse.Namespace, samples: dict[tuple[str, int], _Samples], argv: list[str]) -> str:
    process_counts = sorted({processes for _, processes in samples})
    lines = [
        "# spendwatch: the ledger write on the caller's path — journal vs a commit per call",
        "",
        f"`{' '.join(['python -m bench.ledger', *argv])}` — {_meta(args)}.",
        "",
        "Caller path: µs per record until `record()` (journal) or `ingest([entry])` (commit) returns, median over "
        "processes of each process's mean. End to end: records/s from the first process starting to the last one's "
        "`flush()` returning, every record in the ledger. Medians over rounds (interquartile range in brackets).",
        "",
        "| variant | processes | records in ledger | caller path µs/record | end to end records/s |",
        "|---|---|---|---|---|",
    ]
    for (variant, processes), sample in sorted(samples.items(), key=lambda item: (item[0][1], item[0][0] != "journal")):
        lines.append(
            f"| {variant} | {processes} | {sample.in_ledger:,} (all) | {_cell(sample.caller_us, 2)} "
            f"| {_cell(sample.throughput, 0)} |"
        )
    lines += [
        "",
        "Ratios, median of the per-round ratios (same round, so drift cancels):",
        "",
        "| processes | caller path: commit ÷ journal | end-to-end throughput: journal ÷ commit |",
        "|---|---|---|",
    ]
    for processes in process_counts:
        journal, commit = samples["journal", processes], samples["commit", processes]
        lines.append(
            f"| {processes} | {_ratio(commit.caller_us, journal.caller_us)} "
            f"| {_ratio(journal.throughput, commit.throughput)} |"
        )
    lines += [
        "",
        "Both variants lose nothing: after every run the ledger's `call_count()` and its running totals' call count "
        "equal the records written, and no journal file is left. Both survive `kill -9` of the writer (the mmap "
        "pages are the kernel's; a WAL commit with `synchronous=NORMAL` is on the OS's side); neither survives "
        "power loss without an fsync. Each process is spawned and imports before a barrier; timing starts after it.",
    ]
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    versions = f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    config = f"{args.rounds} rounds of {args.records:,} records per process"
    return f"{date}, {machine}, {versions}; {config}"


def _settings(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer rounds and records")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {_FULL['rounds']})")
    parser.add_argument("--records", type=int, help=f"records each process writes ({_FULL['records']})")
    parser.add_argument("--processes", type=int, help=f"writers in the concurrent runs ({_FULL['processes']})")
    parser.add_argument("--seed", type=int, help="seed of the per-round order")
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def main(argv: list[str]) -> int:
    args = _settings(argv)
    started = time.monotonic()
    text = _markdown(args, _measure(args), argv)
    path = publish("ledger.md", text)
    print(f"({time.monotonic() - started:.0f} s; written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
