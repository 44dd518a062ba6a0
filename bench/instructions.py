"""``python -m bench.instructions [--quick] [--variants a,b] [--calls N] [--against REV]``: the CPU instructions each
variant adds to a call, counted by valgrind's callgrind, side by side with the peers.

On this machine a wall-clock overhead (``python -m bench``) moves by several µs between runs of the same code, more
than most changes to the call path save or cost. The instructions a call executes move far less: two bare processes
of one run agree within about 3 thousand a call, and a variant moves by up to about 12 thousand between runs (the
stream by up to about 100 thousand). So this counts, per variant and kind, the instructions the caller's thread
executes over N calls after warm-up, divided by N, minus the bare call's. The garbage collector is paused during
each counted batch, so that a collection cannot land in one variant's batch and not another's. Background threads
are not counted (spendwatch's deferred metrics; the timed benchmark reports their CPU).

It is not a time: cache misses are not in it, and a real call costs 2–3× what its instructions suggest. So the
timed benchmark stays the measure of record, and this one tells whether a change made the call path cheaper.

Each variant runs in one process under ``valgrind --tool=callgrind``. The worker marks each batch with two system
calls that callgrind is told to watch: ``sched_yield`` zeroes the counters, ``getppid`` dumps them. The report goes
to ``bench/results/instructions.md`` (``against-instructions.md`` with ``--against``) unless ``--out`` says
otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import baseline, fill_defaults, publish, report, variants, worker

__all__ = ["caller_dumps", "main"]

_FULL = {"calls": 100, "warmup": 30}
_QUICK = {"calls": 20, "warmup": 10}
_CALLGRIND = (
    "valgrind",
    "--tool=callgrind",
    "--separate-threads=yes",
    "--zero-before=*sched_yield",  # libc's __sched_yield or sched_yield (and CPython's os_sched_yield: harmless)
    "--dump-before=getppid",
)
_OURS = (*variants.SPENDWATCH, variants.FLOOR, variants.WORK_FLOOR)


def _no_address_randomisation() -> tuple[str, ...]:
    """``setarch -R`` where it works (a container may forbid it). Where objects land in memory changes the work of the
    same calls a little; with randomisation off, two bare processes of one run agree within about 3 thousand
    instructions a call rather than 8."""
    if shutil.which("setarch") and subprocess.run(["setarch", "-R", "true"], capture_output=True).returncode == 0:
        return ("setarch", "-R")
    return ()


def _serve(variant: str, calls: int, warmup: int, result: Path) -> None:
    """The worker, run under callgrind: every kind's counted batch between the two marks; the outcome to ``result``."""
    try:
        exporter, version = variants.setup(variant)
    except variants.Unavailable as exc:
        result.write_text(json.dumps({"ok": False, "error": str(exc)}))
        return
    kinds, spans = worker.call_kinds(), {}
    for kind, call in kinds.items():
        worker.sample(call, warmup)
        gc.collect()
        gc.disable()
        before = exporter.spans
        os.sched_yield()  # callgrind zeroes its counters here
        worker.sample(call, calls)
        os.getppid()  # and dumps them here
        gc.enable()
        spans[kind] = (exporter.spans - before) / calls
    versions = worker.versions(version)
    result.write_text(json.dumps({"ok": True, "versions": versions, "kinds": list(kinds), "spans_per_call": spans}))


def _count(name: str, variant: str, cwd: Path, calls: int, warmup: int, prefix: tuple[str, ...]) -> dict:
    """Run one variant under callgrind; its outcome with ``instructions`` per call of each kind (caller's thread)."""
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-instructions-") as tmp:
        out, result = Path(tmp, "callgrind.out"), Path(tmp, "result.json")
        worker_command = [sys.executable, "-m", "bench.instructions", "--worker", variant, "--result", str(result)]
        worker_command += ["--calls", str(calls), "--warmup", str(warmup)]
        # No OTEL_* settings: a resource detector calling getppid() would add a dump and shift every kind's count.
        environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        finished = subprocess.run(
            [*prefix, *_CALLGRIND, f"--callgrind-out-file={out}", *worker_command],
            cwd=cwd,
            env={**environment, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if not result.exists():
            raise RuntimeError(f"{name} under callgrind exited with {finished.returncode}: {finished.stderr[-2000:]}")
        outcome = json.loads(result.read_text())
        if outcome["ok"]:
            dumps = caller_dumps(Path(tmp))  # dump k is the k-th kind's batch
            if len(dumps) != len(outcome["kinds"]):
                raise RuntimeError(
                    f"{name}: {len(dumps)} callgrind dumps for {len(outcome['kinds'])} kinds: {finished.stderr[-2000:]}"
                )
            totals = [_total(dump) for dump in dumps]
            outcome["instructions"] = {
                kind: total / calls for kind, total in zip(outcome["kinds"], totals, strict=True)
            }
        return outcome


def caller_dumps(directory: Path) -> list[Path]:
    """The main thread's callgrind dumps in ``directory`` (``callgrind.out.<k>-01``), in the order they were made:
    dump k is the k-th batch between a worker's marks."""
    return sorted(directory.glob("callgrind.out.*-01"), key=lambda dump: int(dump.name.split(".")[2][:-3]))


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"{dump} has no totals line")


def _thousands(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.1f} k"


def markdown(outcomes: dict[str, dict], command: str, calls: int, reference: str | None = None) -> str:
    """The report: per kind, the bare call's instructions, each variant's over bare, and our ratios to the lightest
    peer (and, with ``--against``, to the revision)."""
    bare = outcomes[variants.BARE]["instructions"]
    present = [name for name, outcome in outcomes.items() if outcome["ok"] and name != variants.BARE]
    peers = [name for name in variants.PEERS if name in present]
    ours = [name for name in present if name in _OURS or name == reference]

    def over_bare(name: str, kind: str, scale: float) -> float | None:
        outcome = outcomes[name]
        if name != variants.CONTROL and outcome["spans_per_call"][kind] <= 0:
            return None  # the variant made no span for this kind
        return (outcome["instructions"][kind] - bare[kind]) / scale

    header = ["kind", "bare per call", *[f"{name} over bare" for name in present]]
    header += [f"{name} ÷ lightest peer" for name in ours]
    if reference:
        header += [f"spendwatch ÷ {reference}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, kind, scale in report.rows(outcomes[variants.BARE]["kinds"]):
        added = {name: over_bare(name, kind, scale) for name in present}
        peer_values = [added[name] for name in peers if added[name] is not None]
        lightest = min(peer_values) if peer_values else None
        cells = [label, _thousands(bare[kind] / scale), *[_thousands(added[name]) for name in present]]
        cells += [report.ratio(added[name], lightest) for name in ours]
        if reference:
            cells.append(report.ratio(added.get(variants.SPENDWATCH[0]), added.get(reference)))
        lines.append("| " + " | ".join(cells) + " |")
    unavailable = [f"- {name}: {outcome['error']}" for name, outcome in outcomes.items() if not outcome["ok"]]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# spendwatch: instructions per call over the bare OpenAI SDK",
            "",
            f"`{command}` — {when}; {calls} counted calls per kind, caller's thread, garbage collector paused.",
            "",
            "Instructions the caller's thread executes per call (valgrind's callgrind), minus the bare call's; "
            "thousands. bare-again is a second bare process: its column shows how repeatable the count is within a "
            "run. The stream's counts move by up to about 100 k a call from one process to another, so its rows are "
            "a rough guide; its per-chunk row is the whole call's count divided by the chunks. Not a time (cache "
            "misses are not in it): `python -m bench` is the measure of record.",
            "",
            *lines,
            "",
            report.versions_line({name: outcome["versions"] for name, outcome in outcomes.items() if outcome["ok"]}),
            *(["", "Not available:", *unavailable] if unavailable else []),
            "",
        ]
    )


def _settings(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per kind")
    parser.add_argument("--calls", type=int, help=f"counted calls per kind (default {_FULL['calls']})")
    parser.add_argument("--warmup", type=int, help=f"calls per kind before counting (default {_FULL['warmup']})")
    parser.add_argument("--variants", default=",".join(variants.VARIANTS), help="comma-separated; bare is implied")
    parser.add_argument("--against", metavar="REV", help="also count spendwatch as committed at git revision REV")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="variants counted at once")
    parser.add_argument("--out", type=Path, help="where the report goes (default bench/results/instructions.md)")
    parser.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def main(argv: list[str]) -> None:
    args = _settings(argv)
    if args.worker:
        _serve(args.worker, args.calls, args.warmup, args.result)
        return
    names = variants.chosen(args.variants)
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions needs valgrind (Debian: apt-get install valgrind)")
    prefix = _no_address_randomisation()
    with contextlib.ExitStack() as cleanup, concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        counting = {
            name: pool.submit(_count, name, variant, cwd, args.calls, args.warmup, prefix)
            for name, variant, cwd in baseline.specs(names, args.against, cleanup)
        }
        outcomes = {name: future.result() for name, future in counting.items()}
    if not outcomes[variants.BARE]["ok"]:
        sys.exit(f"the bare SDK does not run: {outcomes[variants.BARE]['error']}")
    reference = baseline.variant_name(args.against) if args.against else None
    text = markdown(outcomes, " ".join(["python -m bench.instructions", *argv]), args.calls, reference)
    publish(args.out or ("against-instructions.md" if args.against else "instructions.md"), text)


if __name__ == "__main__":
    main(sys.argv[1:])
