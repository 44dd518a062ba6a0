"""``python -m bench.intake [--quick]``: what ``POST /v1/traces`` on ``spendwatch serve`` takes, and where time goes.

- **End to end**: one real ``spendwatch serve`` over a fresh SQLite ledger, with its default intake workers (see
  ``exporter/intake/workers.py``) and then alone (``SPENDWATCH_INTAKE_WORKERS=0``); the bench sends batches of 512
  GenAI spans (protobuf, each span a distinct chat call) from 2 client threads and reports spans/s *accepted* (every
  200 received: the spans are in the ledger, or journaled while it fails) and spans/s *recorded* (until the ledger
  holds every span, read by the bench), and spans per CPU-second of serve and its workers (their user + system time,
  from /proc): on a shared, loaded machine wall time says more about the neighbours than about spendwatch. Every round
  checks that the ledger holds exactly the spans sent.
- **Where the time goes**, in-process on one batch of 512, in CPU time of this process: protobuf decode and
  attribute reading (``intake.otlp.from_protobuf``), dialect reading and pricing (``usage_of_span`` +
  ``record_of``), storing in the ledger (``LedgerSink.record_spans``), and, for a batch that comes while the ledger
  is failing, journaling (``LedgerSink.journal_all``: encode + memory-mapped append) and the drain into the ledger
  once it is back (``flush``), per span.
- **Non-GenAI skip cost** (CPU time): ``from_protobuf`` over a batch of 512 spans that are not LLM calls (8
  attributes each, like an HTTP server span), per span: a batch of such spans only (passed over whole), and the
  same batch with one GenAI span in it (each span's attribute keys are then looked at).
- **Memory per in-flight batch**: tracemalloc's peak while one 512-span body is decoded, priced and stored.

Medians over rounds with the interquartile range; the table goes to stdout and ``bench/results/intake.md``.

``--instructions`` counts instead the instructions per GenAI span of decode, pricing and store in-process, under
valgrind's callgrind with ``bench.instructions``' marks (``bench/results/intake-instructions.md``): they repeat within
about a hundred, where the CPU times above move by ±20 % with this host's neighbours, so they tell whether a change
made a step cheaper.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import ROOT, fill_defaults, publish, spread
from bench.instructions import _CALLGRIND, _no_address_randomisation, _total, caller_dumps
from spendwatch.exporter import load_settings, open_ledger
from spendwatch.exporter.intake.handler import _records_of
from spendwatch.exporter.intake.otlp import from_protobuf
from spendwatch.exporter.intake.workers import default_worker_count
from spendwatch.exporter.sink import LedgerSink, journal_directory
from spendwatch.instrumentation.pricing import PriceTable

__all__ = ["main"]

_FULL = {"rounds": 5, "batches": 80}
_QUICK = {"rounds": 3, "batches": 20}
BATCH = 512
_CLIENTS = 2
_NOW_NS = int(time.time()) * 10**9
_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini")


def _batch(first_span: int, *, genai: bool = True) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _set(resource_spans.resource.attributes.add(), "service.name", "bench-service")
    scope_spans = resource_spans.scope_spans.add()
    for index in range(first_span, first_span + BATCH):
        span = scope_spans.spans.add()
        span.trace_id = (index // 8 + 1).to_bytes(16, "big")
        span.span_id = (index + 1).to_bytes(8, "big")
        span.name = "chat" if genai else "GET /orders"
        span.start_time_unix_nano, span.end_time_unix_nano = _NOW_NS, _NOW_NS + 700_000_000
        attributes = _genai_attributes(index) if genai else _http_attributes(index)
        for key, value in attributes.items():
            _set(span.attributes.add(), key, value)
    return request.SerializeToString()


def _genai_attributes(index: int) -> dict:
    model = _MODELS[index % len(_MODELS)]
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": 500 + index % 97,
        "gen_ai.usage.output_tokens": 80 + index % 13,
        "server.address": "api.openai.com",
        "gen_ai.response.finish_reasons": ["stop"],
    }


def _http_attributes(index: int) -> dict:
    return {
        "http.request.method": "GET",
        "url.path": f"/orders/{index}",
        "url.scheme": "https",
        "http.route": "/orders/{id}",
        "http.response.status_code": 200,
        "server.address": "shop.internal",
        "server.port": 443,
        "user_agent.original": "bench/1.0",
    }


def _set(key_value, key: str, value) -> None:
    key_value.key = key
    if isinstance(value, int):
        key_value.value.int_value = value
    elif isinstance(value, list):
        for item in value:
            key_value.value.array_value.values.add().string_value = item
    else:
        key_value.value.string_value = value


# --- end to end --------------------------------------------------------------------------------------------------
def _end_to_end(batches: int, directory: Path, workers: int | None) -> dict[str, float]:
    """Spans/s accepted and recorded, spans per CPU-second of serve and its workers, the first export's seconds (it
    starts the workers) and the megabytes a worker holds, for serve with ``workers`` intake workers (None: its
    default)."""
    ledger = directory / f"ledger-{workers}.db"
    command = [sys.executable, "-m", "spendwatch.cli", "serve", "--address", "127.0.0.1:0"]
    environ = {"SPENDWATCH_LEDGER": str(ledger), "PATH": "/usr/bin:/bin"}
    if workers is not None:
        environ["SPENDWATCH_INTAKE_WORKERS"] = str(workers)
    server = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().removeprefix("serving ").removesuffix("/metrics") + "/v1/traces"
        bodies = [_batch(n * BATCH) for n in range(1, batches + 1)]
        # One batch first, not counted in the throughput: the first request loads the price list (once per process,
        # ~0.1 s) and starts the intake workers.
        first = time.perf_counter()
        _send_all(url, [_batch(0)])
        first = time.perf_counter() - first
        _wait_for_rows(ledger, BATCH)
        startup_cpu = _cpu_seconds(server.pid)
        start = time.perf_counter()
        _send_all(url, bodies)
        accepted = time.perf_counter() - start
        total = batches * BATCH
        _wait_for_rows(ledger, BATCH + total)
        recorded = time.perf_counter() - start
        cpu = _cpu_seconds(server.pid) - startup_cpu
        worker_mb = max((rss for command, rss in _resident_mb(server.pid) if b"spawn_main" in command), default=0.0)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        server.stdout.close()
    return {
        "accepted": total / accepted,
        "recorded": total / recorded,
        "per_cpu": total / cpu,
        "first_s": first,
        "worker_mb": worker_mb,
    }


def _family(pid: int) -> Iterator[tuple[Path, list[str]]]:
    """``(its /proc directory, its stat fields after the command name)`` of a process and of each live child."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if stat.parent.name == str(pid) or int(fields[1]) == pid:
            yield stat.parent, fields


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its live children (serve's intake
    workers), from /proc."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in _family(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def _resident_mb(pid: int) -> list[tuple[bytes, float]]:
    """``(command line, resident megabytes)`` of a process and of each live child."""
    page = os.sysconf("SC_PAGE_SIZE")
    found = []
    for directory, fields in _family(pid):
        with contextlib.suppress(OSError):
            found.append(((directory / "cmdline").read_bytes(), int(fields[21]) * page / 1e6))
    return found


def _send_all(url: str, bodies: list[bytes]) -> None:
    failures = []

    def client(mine: list[bytes]) -> None:
        for body in mine:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
            with urllib.request.urlopen(request, timeout=120) as response:
                if response.status != 200:
                    failures.append(response.status)

    threads = [threading.Thread(target=client, args=(bodies[i::_CLIENTS],)) for i in range(_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"the intake refused batches: {failures[:5]}")


def _wait_for_rows(ledger: Path, expected: int) -> None:
    connection = sqlite3.connect(ledger)
    try:
        while True:
            count = connection.execute("SELECT count(*) FROM calls").fetchone()[0]
            if count == expected:
                return
            if count > expected:
                raise RuntimeError(f"the ledger holds {count} calls for {expected} spans sent")
            time.sleep(0.005)
    finally:
        connection.close()


# --- in-process parts --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sink_on_new_ledger(location: Path) -> Iterator[LedgerSink]:
    """A ledger sink, as serve's, over a new SQLite ledger at ``location``; its drainer runs only when flushed."""
    settings = load_settings({"ledger": str(location)}, {})
    ledger = open_ledger(settings)
    sink = LedgerSink(ledger, journal_directory(settings.ledger), drain_interval=3600)
    try:
        yield sink
    finally:
        sink.close()
        ledger.close()


def _parts(directory: Path, prices: PriceTable) -> dict[str, float]:
    """µs per span of each step, on one 512-span batch."""
    body = _batch(0)
    with _sink_on_new_ledger(directory / "parts.db") as sink:
        # A batch first, not measured: the first pricing loads the price list, the first ingest creates the tables.
        _, candidates = from_protobuf(_batch(BATCH))
        assert sink.journal_all(_records_of(candidates, prices)[0]) and sink.flush()
        clock = time.process_time
        t0 = clock()
        _, candidates = from_protobuf(body)
        t1 = clock()
        records, _ = _records_of(candidates, prices)
        t2 = clock()
        assert sink.record_spans(records)
        t3 = clock()
        # The path of a batch that comes while the ledger is failing: journaled, drained once it is back.
        records, _ = _records_of(from_protobuf(_batch(2 * BATCH))[1], prices)
        t4 = clock()
        assert sink.journal_all(records)
        t5 = clock()
        assert sink.flush()
        t6 = clock()
    per_span = 1e6 / BATCH
    return {
        "decode": (t1 - t0) * per_span,
        "price": (t2 - t1) * per_span,
        "store": (t3 - t2) * per_span,
        "journal": (t5 - t4) * per_span,
        "ledger": (t6 - t5) * per_span,
    }


def _skip_cost() -> tuple[float, float]:
    """CPU µs per non-GenAI span: in a batch of those only, and in one that also holds a GenAI span."""
    only = _batch(0, genai=False)
    request = ExportTraceServiceRequest.FromString(only)
    request.resource_spans[0].scope_spans[0].spans[-1].MergeFromString(
        ExportTraceServiceRequest.FromString(_batch(0)).resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    )
    mixed = request.SerializeToString()
    assert len(from_protobuf(mixed)[1]) == 1 and from_protobuf(only)[1] == []
    return _per_span(only), _per_span(mixed)


def _per_span(body: bytes, repeat: int = 20) -> float:
    start = time.process_time()
    for _ in range(repeat):
        from_protobuf(body)
    return (time.process_time() - start) * 1e6 / (repeat * BATCH)


def _memory(directory: Path, prices: PriceTable) -> tuple[int, int]:
    """(body bytes, tracemalloc peak bytes) for one batch decoded, priced and stored."""
    body = _batch(0)
    with _sink_on_new_ledger(directory / "memory.db") as sink:
        tracemalloc.start()
        _, candidates = from_protobuf(body)
        records, _ = _records_of(candidates, prices)
        assert sink.record_spans(records)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return len(body), peak


# --- instructions (callgrind) -----------------------------------------------------------------------------------
_COUNTED_STEPS = ("decode", "price", "store")
_COUNTED_BATCHES = 4  # the counts repeat: more batches add time under valgrind, not precision


def _instructions() -> dict[str, float]:
    """Instructions per GenAI span of each in-process step: this module's ``--count`` worker under callgrind."""
    with tempfile.TemporaryDirectory(prefix="bench-intake-instructions-") as name:
        out = Path(name, "callgrind.out")
        worker = [sys.executable, "-m", "bench.intake", "--count"]
        finished = subprocess.run(
            [*_no_address_randomisation(), *_CALLGRIND, f"--callgrind-out-file={out}", *worker],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        dumps = caller_dumps(Path(name))  # dump k is the k-th step (the drainer's thread is not counted)
        if finished.returncode != 0 or len(dumps) != len(_COUNTED_STEPS):
            raise RuntimeError(f"the --count worker under callgrind failed: {finished.stderr[-2000:]}")
        spans = _COUNTED_BATCHES * BATCH
        return {step: _total(dump) / spans for step, dump in zip(_COUNTED_STEPS, dumps, strict=True)}


def _count_steps() -> None:
    """The worker, under callgrind: each step over every batch between the marks (``sched_yield`` zeroes the counters,
    ``getppid`` dumps them), after two batches that load the price list and create the ledger's tables."""
    prices = PriceTable()
    bodies = [_batch(n * BATCH) for n in range(2 + _COUNTED_BATCHES)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-intake-count-") as name,
        _sink_on_new_ledger(Path(name) / "count.db") as sink,
    ):
        for body in bodies[:2]:
            assert sink.record_spans(_records_of(from_protobuf(body)[1], prices)[0])
        gc.collect()
        gc.disable()
        os.sched_yield()
        candidates = [from_protobuf(body)[1] for body in bodies[2:]]
        os.getppid()
        os.sched_yield()
        batches = [_records_of(batch, prices)[0] for batch in candidates]
        os.getppid()
        os.sched_yield()
        stored = [sink.record_spans(records) for records in batches]
        os.getppid()
        gc.enable()
    assert all(stored)


def _instructions_markdown(argv: list[str], counts: dict[str, float]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    rows = [f"| {step} | {counts[step] / 1000:,.1f} k |" for step in _COUNTED_STEPS]
    return "\n".join(
        [
            "# OTLP trace intake: instructions per GenAI span (callgrind)",
            "",
            f"`python -m bench.intake {' '.join(argv)}`; {when}; {machine}; {_COUNTED_BATCHES} batches of {BATCH} "
            "GenAI spans (protobuf) after two uncounted ones, in one process, garbage collector paused; the main "
            "thread's instructions per span. Not a time: the steps' CPU µs are in intake.md.",
            "",
            "| step | instructions per span |",
            "|---|---:|",
            *rows,
            f"| total | {sum(counts.values()) / 1000:,.1f} k |",
            "",
            "Steps: decode is `intake.otlp.from_protobuf`, price is `usage_of_span` + `record_of` for each span, store "
            "is `LedgerSink.record_spans` (SQLite, its audit chain and running totals included).",
            "",
        ]
    )


# --- report ------------------------------------------------------------------------------------------------------
def _measure(args: argparse.Namespace) -> dict:
    prices = PriceTable()
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-intake-") as name:
            directory = Path(name)
            with_workers = _end_to_end(args.batches, directory, None)
            alone = _end_to_end(args.batches, directory, 0)
            parts = _parts(directory, prices)
            skip_whole, skip_loop = _skip_cost()
            body, peak = _memory(directory, prices)
        for key, value in {
            **with_workers,
            "alone": alone["recorded"],
            "alone_per_cpu": alone["per_cpu"],
            "alone_first_s": alone["first_s"],
            **parts,
            "skip_whole": skip_whole,
            "skip_loop": skip_loop,
            "body": body,
            "peak": peak,
        }.items():
            results.setdefault(key, []).append(value)
    return {key: spread(values) for key, values in results.items()}


def _row(name: str, value: tuple[float, float, float], fmt: str = "{:,.1f}") -> str:
    median, q1, q3 = value
    return f"| {name} | {fmt.format(median)} | {fmt.format(q1)} – {fmt.format(q3)} |"


def _markdown(args: argparse.Namespace, argv: list[str], r: dict) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    spans = args.batches * BATCH
    parts_total = sum(r[key][0] for key in ("decode", "price", "store"))
    lines = [
        "# OTLP trace intake (POST /v1/traces on spendwatch serve)",
        "",
        f"`python -m bench.intake {' '.join(argv)}`; {when}; {machine}; {args.rounds} rounds, "
        f"{spans:,} GenAI spans per round in batches of {BATCH} (protobuf) from {_CLIENTS} client threads, "
        f"one serve over a fresh SQLite ledger, with its default intake workers ({default_worker_count()} on this "
        "machine: one per spare CPU, at most 2) and alone (`SPENDWATCH_INTAKE_WORKERS=0`). Medians with the "
        "interquartile range.",
        "",
        "| measure | median | IQR |",
        "|---|---:|---:|",
        _row("GenAI spans/s accepted (200 received: in the ledger)", r["accepted"], "{:,.0f}"),
        _row("GenAI spans/s recorded (all in the ledger)", r["recorded"], "{:,.0f}"),
        _row("GenAI spans recorded per CPU-second of serve and its workers", r["per_cpu"], "{:,.0f}"),
        _row("GenAI spans/s recorded, serve alone (no intake worker)", r["alone"], "{:,.0f}"),
        _row("GenAI spans recorded per CPU-second, serve alone", r["alone_per_cpu"], "{:,.0f}"),
        _row("seconds to the first export's answer (it starts the workers)", r["first_s"], "{:,.2f}"),
        _row("seconds to the first export's answer, serve alone", r["alone_first_s"], "{:,.2f}"),
        _row("resident MB of an intake worker after the run", r["worker_mb"], "{:,.0f}"),
        _row("CPU µs per GenAI span: protobuf decode + attributes", r["decode"]),
        _row("CPU µs per GenAI span: dialect + pricing (record_of)", r["price"]),
        _row("CPU µs per GenAI span: stored in the ledger (record_spans)", r["store"]),
        _row("CPU µs per GenAI span, ledger failing: journal (encode + append)", r["journal"]),
        _row("CPU µs per GenAI span, ledger failing: drain into the ledger once back", r["ledger"]),
        _row("CPU µs per non-GenAI span, a batch of those only (parse included)", r["skip_whole"], "{:,.2f}"),
        _row("CPU µs per non-GenAI span, beside a GenAI span (parse included)", r["skip_loop"], "{:,.2f}"),
        _row("bytes of one 512-span body", r["body"], "{:,.0f}"),
        _row("peak bytes traced while one batch is decoded, priced, stored", r["peak"], "{:,.0f}"),
        "",
        f"In-process, one batch's steps add up to {parts_total:,.1f} CPU µs per span "
        f"(≈ {1e6 / parts_total:,.0f} spans/s on one free core); the server adds HTTP and a thread per request "
        "competing for the same interpreter lock. With workers, serve's process receives, stores and answers, and a "
        "worker decodes and prices the next batch meanwhile. Target (issue 18): ≥ 20,000 GenAI spans/s recorded, "
        f"a non-GenAI span skipped in < 5 µs. Load average when the run ended: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.splitlines()[0])
    quick = f"{_QUICK['rounds']} rounds of {_QUICK['batches']} batches"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=int, help=f"default {_FULL['rounds']}")
    parser.add_argument("--batches", type=int, help=f"batches of {BATCH} spans per round, default {_FULL['batches']}")
    parser.add_argument("--instructions", action="store_true", help="count instructions per span of each step")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)  # the --instructions worker
    parser.add_argument("--out", type=Path, help="where the report goes (default: under bench/results/)")
    args = fill_defaults(parser.parse_args(argv), _FULL, _QUICK)
    if args.count:
        _count_steps()
        return 0
    if args.instructions:
        path = publish(args.out or "intake-instructions.md", _instructions_markdown(argv, _instructions()))
    else:
        path = publish(args.out or "intake.md", _markdown(args, argv, _measure(args)))
    print(f"(written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
