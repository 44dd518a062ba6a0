"""``python -m bench [--quick] [--rounds R] [--calls N] [--variants a,b] [--against REV]``: run the overhead benchmark,
print the table.

Each round starts one fresh worker process per variant and, kind by kind, sends every worker, in a fresh random order
and one at a time (the machine has two cores), a batch of N timed calls of that kind. The markdown report goes to
stdout and to ``bench/results/latest.md`` (``--out``), the raw per-round medians beside it as ``latest.json``.
``--against REV`` adds spendwatch as committed at git revision REV as one more variant (see ``bench.baseline``); its
report goes to ``bench/results/against.md`` unless ``--out`` says otherwise.
Defaults can also be set with ``BENCH_ROUNDS``, ``BENCH_CALLS``, ``BENCH_WARMUP`` and ``BENCH_MEM_CALLS``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import baseline, fill_defaults, publish, report, variants

_FULL = {"rounds": 21, "calls": 150, "warmup": 20, "mem_calls": 100}
_QUICK = {"rounds": 7, "calls": 60, "warmup": 10, "mem_calls": 30}


class _Worker:
    """A worker process: ``name`` in the report, running ``variant`` from ``cwd`` (where ``--against`` puts an older
    spendwatch)."""

    def __init__(self, name: str, variant: str, cwd: Path) -> None:
        self.name, self.variant, self.cwd = name, variant, cwd
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", self.variant],
            cwd=cwd,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every worker
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def receive(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited with status {self._proc.wait()}")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self.receive()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.write('{"cmd": "quit"}\n')
            self._proc.stdin.close()
            self._proc.wait(timeout=30)


def _settings(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer rounds and calls")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 21, quick 7)")
    parser.add_argument("--calls", type=int, help="timed calls per kind per round (default 150, quick 60)")
    parser.add_argument("--warmup", type=int, help="untimed calls per kind before each batch (default 20)")
    parser.add_argument("--mem-calls", type=int, help="calls per kind under tracemalloc, 0 to skip (default 100)")
    parser.add_argument("--variants", default=",".join(variants.VARIANTS), help="comma-separated; bare is implied")
    parser.add_argument("--seed", type=int, help="seed of the per-round variant order")
    parser.add_argument("--against", metavar="REV", help="also time spendwatch as committed at git revision REV")
    parser.add_argument("--out", type=Path, help="where the markdown report goes (default bench/results/latest.md)")
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def _start(specs: list[tuple]) -> tuple[list[_Worker], dict[str, dict], dict[str, str], list[str]]:
    """Start a worker per ``(name, variant, cwd)``."""
    workers = [_Worker(*spec) for spec in specs]  # they import and instrument in parallel
    ready, versions, unavailable, kinds = [], {}, {}, []
    for worker in workers:
        hello = worker.receive()
        if hello["ok"]:
            ready.append(worker)
            versions[worker.name] = hello["versions"]
            kinds = hello["kinds"]
        else:
            unavailable[worker.name] = hello["error"]
            worker.close()
    return ready, versions, unavailable, kinds


def _measure(args: argparse.Namespace, workers: list[_Worker], run: report.Run) -> list[_Worker]:
    """Every round in fresh worker processes: each process has its own memory layout, which moves a call's time
    by a few per cent for as long as the process lives; new processes each round turn that into noise the median
    over rounds absorbs, instead of a bias that stays with a variant for the whole run. Returns the last workers."""
    order = random.Random(args.seed)
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}/{args.rounds}", end="\r", file=sys.stderr, flush=True)
        if round_number > 1:
            _close(workers)
            workers = _start([(worker.name, worker.variant, worker.cwd) for worker in workers])[0]
        # Kind by kind, every worker in a fresh random order: the batches compared are seconds apart, not tens.
        for kind in run.kinds:
            for worker in order.sample(workers, len(workers)):
                _record(run, worker.name, worker.ask(cmd="run", calls=args.calls, warmup=args.warmup, kind=kind))
    print(file=sys.stderr)
    if args.mem_calls:
        for worker in workers:
            run.memory[worker.name] = worker.ask(cmd="mem", calls=args.mem_calls)
    return workers


def _close(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


def _record(run: report.Run, name: str, batch: dict) -> None:
    for kind, ns in batch["median_ns"].items():
        run.median_ns.setdefault(name, {}).setdefault(kind, []).append(ns)
    for kind, ns in batch.get("deferred_ns", {}).items():
        run.deferred_ns.setdefault(name, {}).setdefault(kind, []).append(ns)
    spans = run.spans_per_call.setdefault(name, {})
    for kind, count in batch["spans_per_call"].items():
        spans[kind] = max(spans.get(kind, 0.0), count)


def _command(argv: list[str]) -> str:
    names = [f"BENCH_{key.upper()}" for key in _FULL]
    overrides = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    return " ".join([*overrides, "python -m bench", *argv])


def main(argv: list[str]) -> None:
    args = _settings(argv)
    with contextlib.ExitStack() as cleanup:
        _run(args, argv, baseline.specs(variants.chosen(args.variants), args.against, cleanup))


def _run(args: argparse.Namespace, argv: list[str], specs: list[tuple]) -> None:
    started = time.monotonic()
    workers, versions, unavailable, kinds = _start(specs)
    if variants.BARE not in versions:
        sys.exit(f"the bare SDK does not run: {unavailable[variants.BARE]}")
    meta = {
        "command": _command(argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "config": f"{args.rounds} rounds × {args.calls} calls per kind after {args.warmup} warm-up calls",
    }
    against = baseline.variant_name(args.against) if args.against else None
    run = report.Run(meta=meta, versions=versions, unavailable=unavailable, kinds=kinds, baseline=against)
    try:
        workers = _measure(args, workers, run)
    finally:
        _close(workers)
    out = publish(args.out or ("against.md" if args.against else "latest.md"), report.markdown(run))
    out.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(run), indent=1) + "\n")
    print(f"({time.monotonic() - started:.0f} s; written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
