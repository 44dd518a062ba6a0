"""``python -m bench.scrape [--quick]``: a ``/metrics`` scrape must cost O(series), never O(history).

Two SQLite ledgers with the same 200 series (20 models × 5 categories × 2 operations) over the same 30 days: one
holding 1,000 calls, one 10 million (``--quick``: 1 million). Each has the production collector over it
(:class:`SpendCollector` with budgets, categories and the sink's pre-scrape flush); the scrapes
(``generate_latest``) alternate between the two in a random order per round, and the report gives the median ms per
scrape of each and the median of the per-round ratios big ÷ small (target ≤ 1.2).

Building 10 million calls through ``Ledger.ingest`` would take an hour, so the ledgers are generated in SQL: a
recursive CTE inserts the calls, then the running totals (``totals``, ``daily_totals``, ``duration_buckets``) are
computed from them with ``INSERT … SELECT … GROUP BY`` — what ingest would have produced (``hourly_totals`` too,
which the JSON API's benchmark, ``bench.api``, reads from the same cached ledger). Every run first checks
that on a small sample: the same calls fed through ``Ledger.ingest`` give the same rows and the same totals. The big
ledger is cached in ``bench/.cache/`` keyed by row count, ledger schema and generator, so a second run skips the
build. The table goes to stdout and to ``bench/results/scrape.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, generate_latest

from bench import fill_defaults, publish, spread
from spendwatch.exporter.budgets import budget_statuses
from spendwatch.exporter.collector import SpendCollector
from spendwatch.exporter.ledger import (
    REQUEST_DURATION_BUCKETS,
    SCHEMA_VERSION,
    TOTAL_COUNTERS,
    TOTAL_KEYS,
    Ledger,
    LedgerEntry,
    open_backend,
)
from spendwatch.exporter.ledger.schema import SUBSET_TOKENS
from spendwatch.exporter.settings import BudgetSpec, Settings
from spendwatch.exporter.sink import LedgerSink
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent
_CACHE = _HERE / ".cache"
_FULL = {"big": 10_000_000, "scrapes": 41}
_QUICK = {"big": 1_000_000, "scrapes": 21}
_SMALL = 1_000
_SAMPLE = 3_000  # calls in the ingest-equivalence check
_WARMUP = 5
_UTC = ZoneInfo("UTC")
_DAYS = 30
_END_TS = 1_767_225_600.0  # 2026-01-01T00:00Z: the generated calls cover the 30 days before it
_NOW = _END_TS - 3600.0  # the budgets' "now": the last generated day, in its month
_CATEGORIES = ("search", "summarise", "extract", "classify", "chat")
_SERIES = 20 * len(_CATEGORIES) * 2

# n → one call, at a whole millisecond (SQLite's date() rounds to one, so the day is the day ingest computes).
# The series key k = n·2654435761 mod 200 visits all 200 series in every 200 consecutive calls;
# calls are in time order (as a real ledger fills), model-19 is unpriced, some calls fail or are blocked, and
# durations reach 150 s, past the last bucket, as ingest allows.
_GENERATE = """
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :rows - 1),
gen AS (SELECT n, (n * 2654435761) % 200 AS k, :start + (n * :span_ms / :rows) / 1000.0 AS ts FROM seq)
INSERT INTO calls (id, ts, day, provider, operation, model, response_model, category, input_tokens, output_tokens,
    cache_read_tokens, reasoning_tokens, cost_usd, pricing, estimated, outcome, error_type, duration_s, trace_id,
    span_id, attributes)
SELECT printf('bulk-%06d:%d', n / 20000, 64 + (n % 20000) * 160), ts, date(ts, 'unixepoch'), 'openai',
    CASE WHEN k < 100 THEN 'chat' ELSE 'embeddings' END, printf('model-%02d', k % 20),
    printf('model-%02d-2025-06-01', k % 20), {category},
    100 + (n * 31) % 4000, CASE WHEN k < 100 THEN 10 + (n * 17) % 800 ELSE 0 END,
    CASE WHEN n % 3 = 0 THEN 64 ELSE 0 END, CASE WHEN k < 100 AND n % 4 = 0 THEN 32 ELSE 0 END,
    CASE WHEN k % 20 = 19 THEN NULL ELSE 0.00001 * (1 + (n * 13) % 1000) END,
    CASE WHEN k % 20 = 19 THEN 'unpriced' ELSE 'bundled@2025-06' END, n % 101 = 0,
    CASE WHEN n % 89 = 0 THEN 'blocked' WHEN n % 53 = 0 THEN 'error' ELSE 'success' END,
    CASE WHEN n % 89 != 0 AND n % 53 = 0 THEN 'RateLimitError' END,
    0.05 + ((n * 7919) % 15000) / 100.0, printf('%016x%016x', (n + 1) * 2654435761, n + 1),
    printf('%016x', (n + 1) * 40503), NULL
FROM gen
""".format(category="CASE (k / 20) % 5 " + " ".join(f"WHEN {i} THEN '{c}'" for i, c in enumerate(_CATEGORIES)) + " END")
# Each call's contribution to the totals, exactly as the ledger's totals.counters computes it.
_CONTRIBUTIONS = {
    "cost_usd": "COALESCE(cost_usd, 0.0)",
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "success": "outcome = 'success'",
    "error": "outcome = 'error'",
    "blocked": "outcome = 'blocked'",
    "unpriced": "cost_usd IS NULL",
    "estimated": "estimated",
    "duration_sum": "duration_s",
    "duration_count": "1",
    **{name: name for name in SUBSET_TOKENS},  # schema version 2's token types: 0 in every generated call
}
_BUCKET = "CASE " + " ".join(f"WHEN duration_s <= {le!r} THEN {le!r}" for le in REQUEST_DURATION_BUCKETS) + " END"
_KEYS = ", ".join(TOTAL_KEYS)
_SUMS = ", ".join(f"SUM({column})" for column in TOTAL_COUNTERS)
# One scan of calls into per (day, series, bucket) sums; the three totals tables are small sums of that.
_AGGREGATE = (
    f"CREATE TEMP TABLE bench_sums AS SELECT day, {_KEYS}, {_BUCKET} AS le, "
    + ", ".join(f"SUM({expression}) AS {column}" for column, expression in _CONTRIBUTIONS.items())
    + f" FROM calls GROUP BY day, {_KEYS}, le",
    f"INSERT INTO daily_totals (day, {_KEYS}, {', '.join(TOTAL_COUNTERS)})"
    f" SELECT day, {_KEYS}, {_SUMS} FROM bench_sums GROUP BY day, {_KEYS}",
    f"INSERT INTO totals ({_KEYS}, {', '.join(TOTAL_COUNTERS)})"
    f" SELECT {_KEYS}, {_SUMS} FROM bench_sums GROUP BY {_KEYS}",
    "INSERT INTO duration_buckets (provider, model, operation, le, count) SELECT provider, model, operation, le,"
    " SUM(duration_count) FROM bench_sums WHERE le IS NOT NULL GROUP BY provider, model, operation, le",
    "DROP TABLE bench_sums",
    # Schema version 3's per-hour totals: a second scan, grouped by the UTC hour (ts is never negative here).
    f"INSERT INTO hourly_totals (hour, {_KEYS}, {', '.join(TOTAL_COUNTERS)}) SELECT CAST(ts / 3600 AS INTEGER) * 3600"
    f" AS hour, {_KEYS}, "
    + ", ".join(f"SUM({_CONTRIBUTIONS[column]})" for column in TOTAL_COUNTERS)
    + f" FROM calls GROUP BY hour, {_KEYS}",
)
_GENERATOR_KEY = hashlib.sha256(
    "\n".join((_GENERATE, *_AGGREGATE, repr((_END_TS, _DAYS, _CATEGORIES)))).encode()
).hexdigest()[:12]


# --- building a ledger ---------------------------------------------------------------------------------------------
def _build(path: Path, rows: int, days: int = _DAYS) -> dict[str, float]:
    """A ledger of ``rows`` generated calls over the ``days`` before ``_END_TS`` and their totals at ``path``; returns
    the seconds each phase took."""
    open_backend(str(path)).close()  # the schema, exactly as spendwatch creates it
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # For the build only: nothing here needs to survive a crash (a half-built file is never renamed into place).
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -262144", "temp_store = MEMORY"):
            connection.execute(f"PRAGMA {pragma}")
        parameters = {"rows": rows, "start": _END_TS - days * 86400, "span_ms": days * 86_400_000}
        started = time.monotonic()
        connection.execute("BEGIN")
        connection.execute(_GENERATE, parameters)
        inserted = time.monotonic()
        for statement in _AGGREGATE:
            connection.execute(statement)
        connection.execute("COMMIT")
        done = time.monotonic()
        connection.execute("PRAGMA journal_mode = WAL")  # as open_backend leaves a ledger
    finally:
        connection.close()
    return {"insert_s": inserted - started, "totals_s": done - inserted, "build_s": done - started}


def _cached_big_ledger(rows: int, rebuild: bool, days: int = _DAYS) -> tuple[Path, dict]:
    """The big ledger (``rows`` calls over ``days``) from ``bench/.cache``, built first when missing; and how long its
    build took."""
    _CACHE.mkdir(exist_ok=True)
    ignore = _CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated benchmark ledgers (GBs): never committed\n*\n")
    name = f"scrape-ledger-schema{SCHEMA_VERSION}-{_GENERATOR_KEY}-{rows}" + (f"-{days}d" if days != _DAYS else "")
    path, info_path = _CACHE / f"{name}.db", _CACHE / f"{name}.json"
    for stale in _CACHE.glob("scrape-ledger-*"):  # another generator or schema: GBs nobody will read again
        if _GENERATOR_KEY not in stale.name or f"schema{SCHEMA_VERSION}-" not in stale.name:
            stale.unlink()
    if path.exists() and info_path.exists() and not rebuild:
        return path, {**json.loads(info_path.read_text()), "cached": True}
    for leftover in (path, info_path, *_CACHE.glob(f"{name}.db-*")):
        leftover.unlink(missing_ok=True)
    building = _CACHE / f"{name}.building"
    building.unlink(missing_ok=True)
    print(f"building a ledger of {rows:,} calls in {building} ...", file=sys.stderr, flush=True)
    info = _build(building, rows, days)
    info["bytes"] = building.stat().st_size
    info["built"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    os.replace(building, path)
    info_path.write_text(json.dumps(info) + "\n")
    return path, {**info, "cached": False}


# --- the generator's totals are ingest's totals --------------------------------------------------------------------
def _record_from_row(row: dict) -> UsageRecord:
    return UsageRecord(
        provider=row["provider"],
        operation=row["operation"],
        request_model=row["model"],
        response_model=row["response_model"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        cost_usd=row["cost_usd"],
        pricing=row["pricing"],
        estimated=bool(row["estimated"]),
        outcome=row["outcome"],
        error_type=row["error_type"],
        duration_s=row["duration_s"],
        start_time=row["ts"],
        category=row["category"] or None,
        trace_id=int(row["trace_id"], 16) if row["trace_id"] else 0,
        span_id=int(row["span_id"], 16) if row["span_id"] else 0,
        attributes=json.loads(row["attributes"]) if row["attributes"] else {},
    )


_TABLES = ("calls", "totals", "daily_totals", "hourly_totals", "duration_buckets")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and type(a) is type(b)


def _check_generator_matches_ingest(workdir: Path) -> None:
    """Generate a sample, feed its calls through ``Ledger.ingest`` into a second ledger, and compare every table."""
    generated = workdir / "generated.db"
    _build(generated, _SAMPLE)
    source = Ledger(open_backend(str(generated)), _UTC)
    ingested = Ledger(open_backend(str(workdir / "ingested.db")), _UTC)
    try:
        calls = source.table_rows("calls")
        entries = [LedgerEntry(row["id"], _record_from_row(row)) for row in calls]
        for start in range(0, len(entries), 500):  # several batches, as the drainer sends them
            ingested.ingest(entries[start : start + 500])
        for table in _TABLES:
            want, got = ingested.table_rows(table), source.table_rows(table)
            if len(want) != len(got):
                raise AssertionError(f"{table}: ingest made {len(want)} rows, the generator {len(got)}")
            for want_row, got_row in zip(want, got, strict=True):
                if list(want_row) != list(got_row) or not all(map(_same, want_row.values(), got_row.values())):
                    raise AssertionError(f"{table}: ingest made {want_row}, the generator {got_row}")
    finally:
        source.close()
        ingested.close()


# --- scraping ------------------------------------------------------------------------------------------------------
class _Endpoint:
    """A ledger with the collector spendwatch serves over it: budgets, categories, and the pre-scrape flush."""

    def __init__(self, path: Path, journal_dir: Path) -> None:
        self.ledger = Ledger(open_backend(str(path)), _UTC)
        self.sink = LedgerSink(self.ledger, journal_dir, drain_interval=3600)
        settings = Settings(
            ledger=str(path),
            metrics_address=None,
            timezone=_UTC,
            thresholds=(0.75, 0.9, 1.0),
            enforce="off",
            categories=frozenset(_CATEGORIES[:4]),  # the fifth becomes "other", as unknown categories do
            budgets=(
                BudgetSpec("global", "day", 500.0),
                BudgetSpec("global", "month", 10_000.0),
                BudgetSpec("search", "month", 2_000.0, category="search"),
                BudgetSpec("model-00", "day", 50.0, model="model-00"),
            ),
        )
        self.registry = CollectorRegistry()
        SpendCollector(
            self.ledger,
            categories=settings.categories,
            budget_statuses=lambda: budget_statuses(self.ledger, settings, now=_NOW),
            ledger_errors=lambda: self.sink.ledger_errors,
            pricing_data_timestamp=_END_TS,
            before_collect=self.sink.flush,
            registry=self.registry,
        )

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> list:
        """The collector's part of a scrape (ledger reads, budgets, metric families), without the text format."""
        return list(self.registry.collect())

    def close(self) -> None:
        self.sink.close()
        self.ledger.close()


def _time_scrapes(endpoints: dict[str, _Endpoint], scrapes: int, seed: int | None) -> dict[str, list[float]]:
    """ms per call, keyed ``(ledger, "scrape" | "collect")``: the whole scrape, and the collector's part of it."""
    for endpoint in endpoints.values():
        for _ in range(_WARMUP):
            endpoint.scrape()
    order = random.Random(seed)
    steps = [(name, step) for name in endpoints for step in ("scrape", "collect")]
    ms: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(scrapes):
        for name, step in order.sample(steps, len(steps)):
            endpoint = endpoints[name]
            run = endpoint.scrape if step == "scrape" else endpoint.collect
            started = time.perf_counter_ns()
            run()
            ms[name, step].append((time.perf_counter_ns() - started) / 1e6)
    return ms


def _shape(exposition: bytes) -> tuple[int, int]:
    """Samples and series-bearing families in an exposition, values aside."""
    lines = exposition.decode().splitlines()
    return sum(1 for line in lines if line and not line.startswith("#")), sum(1 for line in lines if " TYPE " in line)


# --- the report ----------------------------------------------------------------------------------------------------
def _cell(values: list[float], digits: int = 2) -> str:
    median, q1, q3 = spread(values)
    return f"{median:.{digits}f} ({q1:.{digits}f}–{q3:.{digits}f})"


def _ratio(ms: dict, step: str) -> tuple[list[float], float]:
    ratios = [b / s for b, s in zip(ms["big", step], ms["small", step], strict=True)]
    return ratios, spread(ratios)[0]


def _markdown(meta: str, rows: dict, ms: dict, shape: tuple[int, int], build: dict, big: int) -> str:
    lines = [
        "# spendwatch: `/metrics` scrape cost against ledger history",
        "",
        meta,
        "",
        f"Scrape = `generate_latest(registry)` over the collector spendwatch serves ({_SERIES} usage series, "
        f"{shape[0]} samples in {shape[1]} families, identical for both ledgers; 4 budgets; the pre-scrape journal "
        "flush). Collect = `registry.collect()` alone: the same minus prometheus_client's text formatting. "
        "Median ms (interquartile range); every round runs the four in a random order.",
        "",
        "| ledger | calls | totals rows | daily_totals rows | scrape ms | collect ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("small", "big"):
        counts = rows[name]
        lines.append(
            f"| {name} | {counts['calls']:,} | {counts['totals']:,} | {counts['daily_totals']:,} "
            f"| {_cell(ms[name, 'scrape'])} | {_cell(ms[name, 'collect'])} |"
        )
    (scrape_ratios, scrape_ratio), (collect_ratios, _) = _ratio(ms, "scrape"), _ratio(ms, "collect")
    verdict = "meets" if scrape_ratio <= 1.2 else "MISSES"
    built = "cached, built" if build["cached"] else "built"
    lines += [
        "",
        "| big ÷ small, median of per-round ratios | scrape | collect |",
        "|---|---|---|",
        f"| ratio (IQR) | **{_cell(scrape_ratios)}** | {_cell(collect_ratios)} |",
        "",
        f"Target: scrape ratio ≤ 1.2 — this run {verdict} it.",
        "",
        f"Big ledger ({big:,} calls), {built} {build['built']}: {build['build_s']:.0f} s "
        f"({build['insert_s']:.0f} s inserting the calls, {build['totals_s']:.0f} s computing the totals from them "
        f"— one `GROUP BY` scan of the calls, about what a scrape over history would cost), "
        f"{build['bytes'] / 1e9:.2f} GB on disk ({build['bytes'] / big:.0f} B per call).",
        "",
        "The ledgers are generated in SQL (calls by a recursive CTE, totals by `INSERT … SELECT … GROUP BY` over "
        f"them); each run first checks on {_SAMPLE:,} generated calls that `Ledger.ingest` of the same calls makes "
        "the same rows in `calls`, `totals`, `daily_totals` and `duration_buckets`.",
    ]
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace, argv: list[str]) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    versions = f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    command = " ".join(["python -m bench.scrape", *argv])
    return f"`{command}` — {date}, {machine}, {versions}; {args.scrapes} scrapes of each after {_WARMUP} warm-up."


def _settings(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a big ledger of {_QUICK['big']:,} calls, fewer scrapes")
    parser.add_argument("--big", type=int, help=f"calls in the big ledger (default {_FULL['big']:,})")
    parser.add_argument("--scrapes", type=int, help=f"timed scrapes of each ledger (default {_FULL['scrapes']})")
    parser.add_argument("--rebuild", action="store_true", help="build the big ledger even when it is cached")
    parser.add_argument("--seed", type=int, help="seed of the per-round order")
    return fill_defaults(parser.parse_args(argv), _FULL, _QUICK)


def _with_endpoints(paths: dict[str, Path], tmp: Path, use: Callable[[dict[str, _Endpoint]], object]) -> object:
    endpoints: dict[str, _Endpoint] = {}
    try:
        for name, path in paths.items():
            endpoints[name] = _Endpoint(path, tmp / f"journal-{name}")
        return use(endpoints)
    finally:
        for endpoint in endpoints.values():
            endpoint.close()


def main(argv: list[str]) -> int:
    args = _settings(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-scrape-") as tmp_name:
        tmp = Path(tmp_name)
        _check_generator_matches_ingest(tmp)
        small = tmp / "small.db"
        _build(small, _SMALL)
        big, build = _cached_big_ledger(args.big, args.rebuild)

        def measure(endpoints: dict[str, _Endpoint]):
            shapes = {name: _shape(endpoint.scrape()) for name, endpoint in endpoints.items()}
            if shapes["small"] != shapes["big"]:
                raise AssertionError(f"the two scrapes differ in shape: {shapes}")
            rows = {name: endpoint.ledger.row_counts() for name, endpoint in endpoints.items()}
            return rows, _time_scrapes(endpoints, args.scrapes, args.seed), shapes["big"]

        rows, ms, shape = _with_endpoints({"small": small, "big": big}, tmp, measure)
    if rows["big"]["calls"] != args.big:
        raise AssertionError(f"the cached ledger has {rows['big']['calls']:,} calls, not {args.big:,}")
    text = _markdown(_meta(args, argv), rows, ms, shape, build, args.big)
    path = publish("scrape.md", text)
    print(f"({time.monotonic() - started:.0f} s; written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
