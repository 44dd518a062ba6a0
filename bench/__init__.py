"""Benchmarks. ``python -m bench`` (``make bench``): per-call overhead of spendwatch and its peers over the bare SDK.

One worker process per variant and round (instrumentors patch the SDK globally) serves an in-process mock of the
OpenAI API; the orchestrator interleaves timed batches across workers and reports, per call kind, the median over
rounds of the paired difference variant − bare from the same round, so machine-wide drift cancels out.
"""

import argparse
import os
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
RESULTS = ROOT / "bench" / "results"


def publish(filename: str | Path, text: str) -> Path:
    """Print a benchmark's markdown report and keep it as ``bench/results/FILENAME`` (where the README's numbers come
    from), or at a ``Path`` given instead (``--out``)."""
    path = filename if isinstance(filename, Path) else RESULTS / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return path


def fill_defaults(args: argparse.Namespace, full: dict[str, int], quick: dict[str, int]) -> argparse.Namespace:
    """Options left unset take ``BENCH_<NAME>`` from the environment, else the full (or ``--quick``) default."""
    for key, default in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, int(os.environ.get(f"BENCH_{key.upper()}", default)))
    return args


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of per-round results (a single round is all three)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3
