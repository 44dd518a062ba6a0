"""``python -m bench.startup [--quick]``: what spendwatch adds to a process's start-up under opentelemetry-instrument.

Fresh interpreters, each way in a random order per round: ``opentelemetry-instrument python -c pass`` with
spendwatch's instrumentors on, and the same with them off (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``): the
uninstrumented start-up. openai and lightrag-hku are installed, and a process that imports neither must not pay for
them (target: at most 1.3x the uninstrumented start-up in wall time and in peak memory). The same pair with
``-c "import openai"`` shows what patching costs once the app does import it, and plain ``python -c pass`` the
interpreter alone. Wall time is measured around each process, peak memory is its ``ru_maxrss`` (``os.wait4``).
The table goes to stdout and to ``bench/results/startup.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

from bench import fill_defaults, publish, spread
from bench.report import ratio

__all__ = ["main"]

_FULL = {"rounds": 21}
_QUICK = {"rounds": 5}
_TARGET = 1.3
_OURS = ("spendwatch_openai", "spendwatch_lightrag")
_BIN = Path(sys.executable).parent
_INSTRUMENT = str(_BIN / "opentelemetry-instrument")


@dataclass(frozen=True)
class Way:
    """One way to start a process: its command and whether spendwatch's instrumentors are on."""

    label: str
    code: str
    instrumented: bool | None  # None: plain python, no opentelemetry-instrument

    def command(self) -> list[str]:
        python = [sys.executable, "-c", self.code]
        return python if self.instrumented is None else [_INSTRUMENT, *python]


PLAIN = Way("python -c pass", "pass", None)
OFF = Way("opentelemetry-instrument, spendwatch's instrumentors off", "pass", False)
ON = Way("opentelemetry-instrument, spendwatch's instrumentors on", "pass", True)
OFF_OPENAI = Way('… -c "import openai", instrumentors off', "import openai", False)
ON_OPENAI = Way('… -c "import openai", instrumentors on', "import openai", True)
WAYS = (PLAIN, OFF, ON, OFF_OPENAI, ON_OPENAI)


def _others() -> list[str]:
    """Every other instrumentor installed here (the peers of ``make bench`` patch openai at start-up): off both ways,
    so the comparison is spendwatch's alone."""
    return sorted({point.name for point in entry_points(group="opentelemetry_instrumentor")} - set(_OURS))


def _environment(way: Way, tmp: Path) -> dict[str, str]:
    disabled = _others() + ([] if way.instrumented else list(_OURS))
    return {
        **os.environ,
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(disabled),
        # Exporters none: the distro's default (otlp) may not be installed, and then OpenTelemetry's start-up fails.
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "SPENDWATCH_LEDGER": str(tmp / "ledger.db"),
        "SPENDWATCH_METRICS_ADDRESS": "off",  # many processes in a row: no port to fight over
    }


# Runs each measured process and reports its wall time and peak RSS. A process forked from this one would count
# this one's memory as its own (Linux keeps a process's peak across exec), so a small interpreter without site
# (a few MiB) does the forking.
_SPAWNER = """
import json, os, sys, time
for line in sys.stdin:
    argv, env, errors = json.loads(line)
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss]), flush=True)
"""


class _Spawner:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        command = [sys.executable, "-S", "-c", _SPAWNER]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, way: Way) -> tuple[float, float]:
        """(wall ms, peak RSS MiB) of one fresh process started ``way``."""
        errors = self.tmp / "stderr.txt"
        self.process.stdin.write(json.dumps([way.command(), _environment(way, self.tmp), str(errors)]) + "\n")
        self.process.stdin.flush()
        exit_code, wall_s, max_rss_kib = json.loads(self.process.stdout.readline())
        if exit_code != 0:
            raise RuntimeError(f"{way.label} exited {exit_code}: {errors.read_text(errors='replace')}")
        return wall_s * 1000, max_rss_kib / 1024  # ru_maxrss is in KiB on Linux

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _measure(rounds: int, seed: int | None) -> dict[Way, list[tuple[float, float]]]:
    order = random.Random(seed)
    results: dict[Way, list[tuple[float, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-startup-") as tmp_name:
        spawner = _Spawner(Path(tmp_name))
        try:
            for way in WAYS:  # warm-up: the page cache, bytecode, the ledger's creation
                spawner.run(way)
            for _ in range(rounds):
                ways = list(WAYS)
                order.shuffle(ways)
                for way in ways:
                    results[way].append(spawner.run(way))
        finally:
            spawner.close()
    return results


def _cell(values: list[float], digits: int) -> str:
    median, q1, q3 = spread(values)
    return f"{median:.{digits}f} ({q1:.{digits}f}–{q3:.{digits}f})"


def _ratio_cell(ours: list[float], theirs: list[float]) -> tuple[str, float]:
    """Median of the per-round ratios ours ÷ theirs, with its IQR."""
    median, q1, q3 = spread([o / t for o, t in zip(ours, theirs, strict=True)])
    return f"{median:.2f} ({q1:.2f}–{q3:.2f})", median


def _installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _markdown(meta: str, results: dict[Way, list[tuple[float, float]]]) -> str:
    lines = [
        "# spendwatch: start-up cost under opentelemetry-instrument",
        "",
        meta,
        "",
        "Median over rounds (interquartile range) of each fresh process's wall time and peak resident memory.",
        "",
        "| start-up | wall ms | peak RSS MiB |",
        "|---|---|---|",
    ]
    lines += [
        f"| {way.label} | {_cell([r[0] for r in results[way]], 0)} | {_cell([r[1] for r in results[way]], 1)} |"
        for way in WAYS
    ]
    verdicts = []
    lines += ["", "| instrumentors on ÷ off, median of per-round ratios | wall time | peak RSS |", "|---|---|---|"]
    for off, on, what in ((OFF, ON, "imports neither library"), (OFF_OPENAI, ON_OPENAI, "imports openai")):
        time_cell, time_ratio = _ratio_cell([r[0] for r in results[on]], [r[0] for r in results[off]])
        memory_cell, memory_ratio = _ratio_cell([r[1] for r in results[on]], [r[1] for r in results[off]])
        bold = "**" if off is OFF else ""
        lines.append(f"| a process that {what} | {bold}{time_cell}{bold} | {bold}{memory_cell}{bold} |")
        if off is OFF:
            verdicts = [time_ratio <= _TARGET, memory_ratio <= _TARGET]
    met = "meets it" if all(verdicts) else "does NOT meet it"
    plain = spread([r[0] for r in results[PLAIN]])[0]
    off_ms = spread([r[0] for r in results[OFF]])[0]
    lines += [
        "",
        f"Target: at most {_TARGET}× the uninstrumented start-up in wall time and in peak memory for a process that "
        f"imports neither library — this run {met}.",
        "",
        f"The uninstrumented start-up is OpenTelemetry's own plus spendwatch's exporter (ledger, guard; `/metrics` "
        f"off here), {ratio(off_ms, plain)}× plain `python -c pass`. spendwatch patches openai and LightRAG when the "
        "app imports them (a post-import hook), so their import time and memory are paid only by processes that "
        "use them; the `import openai` rows show what patching it adds then.",
        "",
        f"Other instrumentors installed here, off both ways: {', '.join(_others()) or 'none'}. Exporters `none`. "
        f"Versions: openai {_installed('openai')}, lightrag-hku {_installed('lightrag-hku')}, "
        f"opentelemetry-instrumentation {_installed('opentelemetry-instrumentation')}, "
        f"spendwatch {_installed('spendwatch')}.",
    ]
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace, argv: list[str]) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    command = " ".join(["python -m bench.startup", *argv])
    return f"`{command}` — {date}, {machine}; {args.rounds} rounds of {len(WAYS)} processes after one warm-up each."


def _settings(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{_QUICK['rounds']} rounds")
    parser.add_argument("--rounds", type=int, help=f"rounds of every way (default {_FULL['rounds']})")
    parser.add_argument("--seed", type=int, help="seed of the per-round order")
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def main(argv: list[str]) -> int:
    args = _settings(argv)
    started = time.monotonic()
    text = _markdown(_meta(args, argv), _measure(args.rounds, args.seed))
    path = publish("startup.md", text)
    print(f"({time.monotonic() - started:.0f} s; written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
