"""``python -m bench.api [--quick]``: the JSON API answers from the running totals, never from the history.

The ledgers are bench.scrape's (same generator, same cache, checked against ``Ledger.ingest`` first): 1,000 calls
and 10 million (``--quick``: 1 million) over the same 30 days and 200 series, plus a year of history (2 million
calls over 365 days; ``--quick``: 200,000). Each request goes through the API's WSGI app as ``spendwatch serve``
answers it (routing, parameter checks, the ledger reads, the JSON), in a random order per round; the report gives
the median ms of each and the median of the per-round ratios big ÷ small. Targets (issue 19): overview and
analytics over 30 days ≤ 1.5× and under 100 ms on the big ledger; a year's analytics well under a second.
The table goes to stdout and to ``bench/results/api.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import fill_defaults, publish, spread
from bench.scrape import _CATEGORIES, _NOW, _SMALL, _UTC, _build, _cached_big_ledger, _check_generator_matches_ingest
from spendwatch.exporter.api import api_app
from spendwatch.exporter.ledger import Ledger, open_backend
from spendwatch.exporter.settings import BudgetSpec, Settings

__all__ = ["main"]

_FULL = {"big": 10_000_000, "year": 2_000_000, "rounds": 41}
_QUICK = {"big": 1_000_000, "year": 200_000, "rounds": 21}
_WARMUP = 3
_TARGET_RATIO, _TARGET_MS = 1.5, 100.0
# The requests timed on the small and the big ledger (30 days each), and those timed on the year.
_COMPARED = {
    "overview": ("/api/v1/overview", ""),
    "analytics 30d by day": ("/api/v1/analytics", "range=30d&granularity=day&by=model"),
    "analytics 7d by hour": ("/api/v1/analytics", "range=7d&granularity=hour&by=category"),
}
_YEAR = {
    "overview": ("/api/v1/overview", ""),
    "analytics 365d by day": ("/api/v1/analytics", "range=365d&granularity=day&by=model"),
    "analytics 30d by hour": ("/api/v1/analytics", "range=30d&granularity=hour&by=operation"),
    "report 365d by model": ("/api/v1/report", "start=2025-01-01&end=2025-12-31&by=model"),
}


def _settings(path: Path) -> Settings:
    return Settings(
        ledger=str(path),
        metrics_address=None,
        timezone=_UTC,
        thresholds=(0.75, 0.9, 1.0),
        enforce="off",
        categories=frozenset(_CATEGORIES[:4]),
        budgets=(
            BudgetSpec("global", "day", 500.0),
            BudgetSpec("global", "month", 10_000.0),
            BudgetSpec("search", "month", 2_000.0, category="search"),
            BudgetSpec("model-00", "day", 50.0, model="model-00"),
        ),
    )


class _Api:
    """The API's WSGI app over one ledger, at the generated history's "now"."""

    def __init__(self, path: Path) -> None:
        self.ledger = Ledger(open_backend(str(path)), _UTC)
        settings = _settings(path)
        self.app = api_app(self.ledger, lambda: settings, clock=lambda: _NOW)

    def get(self, path: str, query: str) -> bytes:
        answer: dict = {}
        body = b"".join(self.app(_environ(path, query), lambda status, headers: answer.update(status=status)))
        if not answer["status"].startswith("200"):
            raise AssertionError(f"{path}?{query} answered {answer['status']}: {body[:300]!r}")
        return body

    def close(self) -> None:
        self.ledger.close()


def _environ(path: str, query: str) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query}


def _time(apis: dict[str, _Api], requests: dict, rounds: int, seed: int | None) -> dict[tuple[str, str], list[float]]:
    """ms per request, keyed ``(ledger, request)``; every round runs them all in a random order."""
    steps = [(name, request) for name in apis for request in requests]
    for name, request in steps * _WARMUP:
        apis[name].get(*requests[request])
    order = random.Random(seed)
    ms: dict[tuple[str, str], list[float]] = {step: [] for step in steps}
    for _ in range(rounds):
        for name, request in order.sample(steps, len(steps)):
            started = time.perf_counter_ns()
            apis[name].get(*requests[request])
            ms[name, request].append((time.perf_counter_ns() - started) / 1e6)
    return ms


def _cell(values: list[float], digits: int = 2) -> str:
    median, q1, q3 = spread(values)
    return f"{median:.{digits}f} ({q1:.{digits}f}–{q3:.{digits}f})"


def _markdown(meta: str, ms: dict, year_ms: dict, counts: dict, args: argparse.Namespace) -> str:
    lines = [
        "# spendwatch: JSON API answer time against ledger history",
        "",
        meta,
        "",
        "Each request goes through the API's WSGI app (routing, parameters, ledger reads, JSON) at the history's "
        "last day; median ms (interquartile range) per request, every round in a random order.",
        "",
        "| request | small: ms | big: ms | big ÷ small, median of per-round ratios |",
        "|---|---|---|---|",
    ]
    verdicts = []
    for request in _COMPARED:
        small, big = ms["small", request], ms["big", request]
        ratios = [b / s for b, s in zip(big, small, strict=True)]
        ratio, big_median = spread(ratios)[0], spread(big)[0]
        lines.append(f"| {request} | {_cell(small)} | {_cell(big)} | **{_cell(ratios)}** |")
        met = ratio <= _TARGET_RATIO and big_median < _TARGET_MS
        verdicts.append(f"{request}: {'meets' if met else 'MISSES'} it")
    lines += [
        "",
        f"Ledgers: small {counts['small']['calls']:,} calls, big {counts['big']['calls']:,} calls "
        f"({counts['big']['daily_totals']:,} daily and {counts['big']['hourly_totals']:,} hourly totals rows), "
        "both over the same 30 days and 200 series.",
        f"Target: ≤ {_TARGET_RATIO}× and under {_TARGET_MS:.0f} ms on the big ledger — " + "; ".join(verdicts) + ".",
        "",
        f"A year of history: {counts['year']['calls']:,} calls over 365 days ({counts['year']['daily_totals']:,} "
        f"daily and {counts['year']['hourly_totals']:,} hourly totals rows).",
        "",
        "| request | ms |",
        "|---|---|",
    ]
    lines += [f"| {request} | {_cell(year_ms['year', request])} |" for request in _YEAR]
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace, argv: list[str]) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    versions = f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    command = " ".join(["python -m bench.api", *argv])
    return f"`{command}` — {date}, {machine}, {versions}; {args.rounds} rounds after {_WARMUP} warm-up."


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{_QUICK['big']:,} calls in the big ledger, fewer rounds")
    parser.add_argument("--big", type=int, help=f"calls in the big ledger (default {_FULL['big']:,})")
    parser.add_argument("--year", type=int, help=f"calls in the year's ledger (default {_FULL['year']:,})")
    parser.add_argument("--rounds", type=int, help=f"timed rounds (default {_FULL['rounds']})")
    parser.add_argument("--rebuild", action="store_true", help="build the big ledgers even when they are cached")
    parser.add_argument("--seed", type=int, help="seed of the per-round order")
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def _with_apis(paths: dict[str, Path], use: Callable[[dict[str, _Api]], object]) -> object:
    apis: dict[str, _Api] = {}
    try:
        for name, path in paths.items():
            apis[name] = _Api(path)
        return use(apis)
    finally:
        for api in apis.values():
            api.close()


def _same_answers(apis: dict[str, _Api]) -> None:
    """Both 30-day ledgers answer every request over the same range: the same buckets, budgets and groups overall
    (the small ledger's buckets hold fewer groups each: a thousand calls do not reach every series every hour)."""
    for request in _COMPARED.values():
        shapes = {name: _shape(json.loads(api.get(*request))) for name, api in apis.items()}
        if shapes["small"] != shapes["big"]:
            raise AssertionError(f"{request} differs in shape between the ledgers: {shapes}")


def _shape(answer: dict) -> tuple:
    if "budgets" in answer:
        return tuple((budget["name"], budget["period"]) for budget in answer["budgets"])
    by = answer["by"]
    return answer["start"], len(answer["buckets"]), sorted(str(group[by]) for group in answer["totals"])


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        _check_generator_matches_ingest(tmp)
        small = tmp / "small.db"
        _build(small, _SMALL)
        big, _ = _cached_big_ledger(args.big, args.rebuild)
        year, _ = _cached_big_ledger(args.year, args.rebuild, days=365)

        def measure(apis: dict[str, _Api]):
            _same_answers({name: apis[name] for name in ("small", "big")})
            counts = {name: api.ledger.row_counts() for name, api in apis.items()}
            compared = {name: apis[name] for name in ("small", "big")}
            ms = _time(compared, _COMPARED, args.rounds, args.seed)
            year_ms = _time({"year": apis["year"]}, _YEAR, args.rounds, args.seed)
            return counts, ms, year_ms

        counts, ms, year_ms = _with_apis({"small": small, "big": big, "year": year}, measure)
    text = _markdown(_meta(args, argv), ms, year_ms, counts, args)
    path = publish("api.md", text)
    print(f"({time.monotonic() - started:.0f} s; written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
