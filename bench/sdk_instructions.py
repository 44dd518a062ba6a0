"""The CPU instructions each instrumentation of one SDK adds to its calls, counted by valgrind's callgrind exactly as
``bench.instructions`` counts OpenAI calls (same marks, same garbage-collector pause, caller's thread only).

An SDK's benchmark module (``bench.anthropic_sdk``, say) describes itself as an :class:`SdkBench` (its call kinds, its
variants, its peers) and hands its command line to :func:`main`; each variant runs in its own process under
callgrind (``python -m <module> --worker VARIANT``), with the OpenTelemetry SDK of ``bench.variants`` (a span exporter
that only counts). The report says, per kind, each variant's instructions over the bare call and ours over the
lightest peer's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import fill_defaults, publish, report, variants
from bench.instructions import _CALLGRIND, _no_address_randomisation, _thousands, _total, caller_dumps

__all__ = ["OURS", "SdkBench", "instrumentor_variant", "main", "markdown", "version_of"]

_FULL = {"calls": 100, "warmup": 30}
_QUICK = {"calls": 20, "warmup": 10}
BARE, CONTROL = variants.BARE, variants.CONTROL
OURS = "spendwatch"


@dataclass(frozen=True)
class SdkBench:
    module: str  # run as ``python -m module --worker VARIANT``
    title: str  # "the bare Anthropic SDK"
    library: str  # the distribution the bare variant reports
    call_kinds: Callable[[], dict[str, Callable[[], object]]]
    variants: dict[str, Callable[[], str]]  # name -> set-up returning its version (raises variants.Unavailable)
    peers: tuple[str, ...]
    about: str  # a sentence on what each call is
    report: str  # file name under bench/results/
    private_env: tuple[str, ...] = ()  # prefixes of environment variables a worker must not see


def version_of(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def instrumentor_variant(module: str, class_name: str, distribution: str, **env: str) -> Callable[[], str]:
    """A variant that instruments with ``module.class_name`` (after setting ``env``)."""

    def setup() -> str:
        os.environ.update(env)
        try:
            instrumentor = getattr(__import__(module, fromlist=[class_name]), class_name)()
        except Exception as exc:  # an ImportError, or a peer broken against these versions
            raise variants.Unavailable(f"{type(exc).__name__}: {exc}") from exc
        instrumentor.instrument()
        if not instrumentor.is_instrumented_by_opentelemetry:
            raise variants.Unavailable("instrument() declined (a dependency conflict?)")
        return version_of(distribution)

    return setup


def _serve(bench: SdkBench, variant: str, calls: int, warmup: int, result: Path) -> None:
    """The worker, run under callgrind: each kind's counted batch between the two marks; the outcome to ``result``."""
    try:
        exporter, _ = variants.setup(BARE)  # the OpenTelemetry SDK set-up alone: bare OpenAI instruments nothing
        variant_version = bench.variants[variant]()
    except variants.Unavailable as exc:
        result.write_text(json.dumps({"ok": False, "error": str(exc)}))
        return
    kinds, spans = bench.call_kinds(), {}
    for kind, call in kinds.items():
        for _ in range(warmup):
            call()
        gc.collect()
        gc.disable()
        before = exporter.spans
        os.sched_yield()  # callgrind zeroes its counters here
        for _ in range(calls):
            call()
        os.getppid()  # and dumps them here
        gc.enable()
        spans[kind] = (exporter.spans - before) / calls
    outcome = {"ok": True, "version": variant_version, "kinds": list(kinds), "spans_per_call": spans}
    result.write_text(json.dumps(outcome))


def _count(bench: SdkBench, variant: str, calls: int, warmup: int, prefix: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-sdk-") as tmp:
        out, result = Path(tmp, "callgrind.out"), Path(tmp, "result.json")
        worker = [sys.executable, "-m", bench.module, "--worker", variant, "--result", str(result)]
        worker += ["--calls", str(calls), "--warmup", str(warmup)]
        # No OTEL_* settings: a resource detector calling getppid() would add a dump and shift every kind's count.
        hidden = ("OTEL_", *bench.private_env)
        environment = {key: value for key, value in os.environ.items() if not key.startswith(hidden)}
        finished = subprocess.run(
            [*prefix, *_CALLGRIND, f"--callgrind-out-file={out}", *worker],
            env={**environment, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if not result.exists():
            raise RuntimeError(
                f"{variant} under callgrind exited with {finished.returncode}: {finished.stderr[-2000:]}"
            )
        outcome = json.loads(result.read_text())
        if outcome["ok"]:
            dumps = caller_dumps(Path(tmp))  # dump k is the k-th kind's batch
            if len(dumps) != len(outcome["kinds"]):
                raise RuntimeError(f"{variant}: {len(dumps)} dumps for {len(outcome['kinds'])} kinds")
            outcome["instructions"] = {
                kind: _total(dump) / calls for kind, dump in zip(outcome["kinds"], dumps, strict=True)
            }
        return outcome


def markdown(bench: SdkBench, outcomes: dict[str, dict], command: str, calls: int) -> str:
    bare = outcomes[BARE]["instructions"]
    present = [name for name, outcome in outcomes.items() if outcome["ok"] and name != BARE]
    peers = [name for name in bench.peers if name in present]

    def over_bare(name: str, kind: str) -> float | None:
        if name != CONTROL and outcomes[name]["spans_per_call"][kind] <= 0:
            return None  # the variant made no span for this kind
        return outcomes[name]["instructions"][kind] - bare[kind]

    ours = OURS in present
    header = ["kind", "bare per call", *[f"{name} over bare" for name in present]]
    header += ["spendwatch ÷ lightest peer"] if ours else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in outcomes[BARE]["kinds"]:
        added = {name: over_bare(name, kind) for name in present}
        peer_values = [added[name] for name in peers if added[name] is not None]
        cells = [kind, _thousands(bare[kind]), *[_thousands(added[name]) for name in present]]
        if ours:
            cells.append(report.ratio(added[OURS], min(peer_values) if peer_values else None))
        lines.append("| " + " | ".join(cells) + " |")
    versions = ", ".join(f"{name} {outcome['version']}" for name, outcome in outcomes.items() if outcome["ok"])
    unavailable = [f"- {name}: {outcome['error']}" for name, outcome in outcomes.items() if not outcome["ok"]]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"# spendwatch: instructions per call over {bench.title}",
            "",
            f"`{command}` — {when}; {calls} counted calls per kind, caller's thread, garbage collector paused.",
            "",
            "Instructions the caller's thread executes per call (valgrind's callgrind), minus the bare call's; "
            f"thousands. {bench.about} bare-again is a second bare process (the count's own noise). A variant that "
            "made no span for a kind shows n/a.",
            "",
            *lines,
            "",
            f"Versions: {versions} (bare and bare-again: {bench.library}).",
            *(["", "Not available:", *unavailable] if unavailable else []),
            "",
        ]
    )


def _settings(bench: SdkBench, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {bench.module}", description=f"instructions over {bench.title}")
    parser.add_argument("--quick", action="store_true", help="fewer calls per kind")
    parser.add_argument("--calls", type=int, help=f"counted calls per kind (default {_FULL['calls']})")
    parser.add_argument("--warmup", type=int, help=f"calls per kind before counting (default {_FULL['warmup']})")
    parser.add_argument("--variants", default=",".join(bench.variants), help="comma-separated; bare is implied")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="variants counted at once")
    parser.add_argument("--out", type=Path, help=f"where the report goes (default bench/results/{bench.report})")
    parser.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def main(bench: SdkBench, argv: list[str]) -> None:
    args = _settings(bench, argv)
    if args.worker:
        _serve(bench, args.worker, args.calls, args.warmup, args.result)
        return
    names = [BARE, *[name for name in args.variants.split(",") if name and name != BARE]]
    unknown = [name for name in names if name not in bench.variants]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(bench.variants)}")
    if shutil.which("valgrind") is None:
        sys.exit(f"{bench.module} needs valgrind (Debian: apt-get install valgrind)")
    prefix = _no_address_randomisation()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        counting = {name: pool.submit(_count, bench, name, args.calls, args.warmup, prefix) for name in names}
        outcomes = {name: future.result() for name, future in counting.items()}
    if not outcomes[BARE]["ok"]:
        sys.exit(f"{bench.title} does not run: {outcomes[BARE]['error']}")
    text = markdown(bench, outcomes, " ".join([f"python -m {bench.module}", *argv]), args.calls)
    publish(args.out or bench.report, text)
