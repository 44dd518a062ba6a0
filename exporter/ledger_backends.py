"""SQLite and PostgreSQL under the ledger: connection, schema, and the few statements whose SQL differs.

:func:`open_backend` checks what it opens: a file that is not a database, or a database that is not a spendwatch
ledger, is refused at start-up with one sentence naming ``SPENDWATCH_LEDGER`` and its value.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "LEDGER_ENV",
    "PostgresBackend",
    "SQLiteBackend",
    "first_line",
    "is_postgres_location",
    "open_backend",
    "shown_location",
    "state_directory",
]

LEDGER_ENV = "SPENDWATCH_LEDGER"
_SCHEMA_LOCK = 0x5350454E44  # "SPEND": the advisory lock key for creating the schema
SCHEMA_VERSION = "1"
_COUNTERS = """cost_usd {real} NOT NULL DEFAULT 0, input_tokens {int} NOT NULL DEFAULT 0,
    output_tokens {int} NOT NULL DEFAULT 0, cache_read_tokens {int} NOT NULL DEFAULT 0,
    reasoning_tokens {int} NOT NULL DEFAULT 0, success {int} NOT NULL DEFAULT 0, error {int} NOT NULL DEFAULT 0,
    blocked {int} NOT NULL DEFAULT 0, unpriced {int} NOT NULL DEFAULT 0, estimated {int} NOT NULL DEFAULT 0,
    duration_sum {real} NOT NULL DEFAULT 0, duration_count {int} NOT NULL DEFAULT 0"""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spendwatch_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS calls (
        id TEXT PRIMARY KEY, ts {real} NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, operation TEXT NOT NULL,
        model TEXT NOT NULL, response_model TEXT, category TEXT NOT NULL, input_tokens {int} NOT NULL,
        output_tokens {int} NOT NULL, cache_read_tokens {int} NOT NULL, reasoning_tokens {int} NOT NULL,
        cost_usd {real}, pricing TEXT NOT NULL, estimated {int} NOT NULL, outcome TEXT NOT NULL, error_type TEXT,
        duration_s {real} NOT NULL, trace_id TEXT, span_id TEXT, attributes TEXT)""",
    "CREATE INDEX IF NOT EXISTS calls_by_day ON calls (day)",
    "CREATE TABLE IF NOT EXISTS totals (provider TEXT NOT NULL, model TEXT NOT NULL, operation TEXT NOT NULL,"
    " category TEXT NOT NULL, " + _COUNTERS + ", PRIMARY KEY (provider, model, operation, category))",
    "CREATE TABLE IF NOT EXISTS daily_totals (day TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
    " operation TEXT NOT NULL, category TEXT NOT NULL, " + _COUNTERS + ","
    " PRIMARY KEY (day, provider, model, operation, category))",
    "CREATE TABLE IF NOT EXISTS duration_buckets (provider TEXT NOT NULL, model TEXT NOT NULL,"
    " operation TEXT NOT NULL, le {real} NOT NULL, count {int} NOT NULL DEFAULT 0,"
    " PRIMARY KEY (provider, model, operation, le))",
    "CREATE TABLE IF NOT EXISTS budget_limits (name TEXT NOT NULL, period TEXT NOT NULL, limit_usd {real} NOT NULL,"
    " changed_at {real} NOT NULL, PRIMARY KEY (name, period))",
    "CREATE TABLE IF NOT EXISTS events (id {serial}, ts {real} NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS guard_decisions (budget TEXT NOT NULL, action TEXT NOT NULL,"
    " count {int} NOT NULL DEFAULT 0, PRIMARY KEY (budget, action))",
    # Money a process may still commit against a budget period without asking again (see exporter/guard.py).
    "CREATE TABLE IF NOT EXISTS leases (lease_id TEXT PRIMARY KEY, budget TEXT NOT NULL, period TEXT NOT NULL,"
    " period_start TEXT NOT NULL, outstanding_usd {real} NOT NULL, expires_at {real} NOT NULL)",
    # A call's cost before and after each re-pricing (see exporter/reprice.py); the calls row holds the latest.
    "CREATE TABLE IF NOT EXISTS repricings (id {serial}, call_id TEXT NOT NULL, ts {real} NOT NULL,"
    " event_id {int} NOT NULL, old_cost_usd {real}, new_cost_usd {real} NOT NULL, old_pricing TEXT NOT NULL,"
    " new_pricing TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS repricings_by_call ON repricings (call_id)",
    # The HMAC chain over calls, events and repricings, in the order they were written (see exporter/audit.py).
    "CREATE TABLE IF NOT EXISTS audit (seq {int} PRIMARY KEY, kind TEXT NOT NULL, call_id TEXT, row_id {int},"
    " mac TEXT NOT NULL)",
)


class _SqlBackend:
    """What both databases share; subclasses set the connection, placeholders and column types."""

    location: str
    types: dict[str, str]

    def _sql(self, query: str) -> str:
        return query

    def create_schema(self) -> None:
        with self.transaction() as cursor:
            # Several processes (or hosts) may open a new ledger at once; PostgreSQL's CREATE TABLE IF NOT EXISTS
            # is not safe against that race, so creating the schema takes a lock.
            self.lock_budget(cursor, _SCHEMA_LOCK)
            for statement in SCHEMA:
                cursor.execute(statement.format(**self.types))
            cursor.execute(
                self._sql("INSERT INTO spendwatch_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
                ("schema_version", SCHEMA_VERSION),
            )

    def insert_call(self, cursor, row: tuple) -> bool:
        placeholders = ", ".join("?" * len(row))
        cursor.execute(self._sql(f"INSERT INTO calls VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING"), row)
        return cursor.rowcount == 1

    def add_totals(self, cursor, table: str, keys: Sequence[str], counters: Sequence[str], rows: dict) -> None:
        if not rows:
            return
        columns = ", ".join((*keys, *counters))
        placeholders = ", ".join("?" * (len(keys) + len(counters)))
        updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in counters)
        query = (
            f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )
        cursor.executemany(self._sql(query), [(*key, *values) for key, values in rows.items()])

    def upsert_budget_limit(self, cursor, name: str, period: str, limit_usd: float, at: float) -> None:
        query = (
            "INSERT INTO budget_limits (name, period, limit_usd, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, period) DO UPDATE SET limit_usd = excluded.limit_usd, changed_at = excluded.changed_at"
        )
        cursor.execute(self._sql(query), (name, period, limit_usd, at))

    def lock_budget(self, cursor, key: int) -> None:
        """Serialise transactions that take the same key (lease renewals of one budget, schema creation) until
        the transaction ends. SQLite's BEGIN IMMEDIATE already serialises every writer."""

    def execute(self, cursor, query: str, parameters: Sequence = ()) -> list[tuple]:
        """A statement inside a transaction; the rows it returns, if any."""
        cursor.execute(self._sql(query), tuple(parameters))
        return cursor.fetchall() if cursor.description else []

    def add_event(self, cursor, at: float, kind: str, detail: str) -> int:
        """Append an event; its id."""
        query = "INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?) RETURNING id"
        cursor.execute(self._sql(query), (at, kind, detail))
        return int(cursor.fetchone()[0])

    def set_meta(self, cursor, key: str, value: str) -> None:
        query = (
            "INSERT INTO spendwatch_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        cursor.execute(self._sql(query), (key, value))

    def select(self, query: str, parameters: Sequence = ()) -> list[tuple]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(self._sql(query), tuple(parameters))
            return cursor.fetchall()
        finally:
            cursor.close()
            self._end_read()

    def select_dicts(self, query: str, parameters: Sequence = ()) -> list[dict]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(self._sql(query), tuple(parameters))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()
            self._end_read()

    def _end_read(self) -> None:
        pass


class SQLiteBackend(_SqlBackend):
    types = {"int": "INTEGER", "real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self.location = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front, so two
        # processes never both read the totals and then race to write them).
        self.connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)

    def prepare(self) -> None:
        self.connection.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; power loss is the journal's and the OS's business.
        self.connection.execute("PRAGMA synchronous = NORMAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Callable[[str, Sequence], Iterator[tuple]]]:
        """One consistent read of the whole database (WAL readers never block writers); yields ``rows(query,
        parameters)``, which streams a query's rows from that snapshot."""
        self.connection.execute("BEGIN")
        try:
            yield lambda query, parameters=(): iter(self.connection.execute(query, tuple(parameters)))
        finally:
            self.connection.execute("COMMIT")

    def table_names(self) -> set[str]:
        return {row[0] for row in self.select("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def close(self) -> None:
        self.connection.close()


class PostgresBackend(_SqlBackend):
    types = {"int": "BIGINT", "real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"}

    def __init__(self, url: str) -> None:
        self.location = url
        self._connection = None
        self._connect()

    def _connect(self):
        import psycopg

        self._connection = psycopg.connect(self.location, autocommit=True, connect_timeout=10)
        return self._connection

    @property
    def connection(self):
        """The open connection; after the server went away (restart, failover) a new one, or the connect error."""
        if self._connection is None or self._connection.closed or self._connection.broken:
            if self._connection is not None:
                self._connection.close()
            return self._connect()
        return self._connection

    def prepare(self) -> None:
        pass

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def lock_budget(self, cursor, key: int) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    @contextlib.contextmanager
    def transaction(self):
        connection = self.connection
        with connection.transaction(), connection.cursor() as cursor:
            yield cursor

    @contextlib.contextmanager
    def snapshot(self):
        """One consistent read (REPEATABLE READ); yields ``rows(query, parameters)``, streamed by a server-side
        cursor so a long history is never held in memory at once."""
        connection = self.connection
        names = itertools.count()

        def rows(query: str, parameters: Sequence = ()) -> Iterator[tuple]:
            with connection.cursor(name=f"spendwatch_snapshot_{next(names)}") as cursor:
                cursor.itersize = 5000
                cursor.execute(self._sql(query), tuple(parameters))
                yield from cursor

        with connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield rows

    def table_names(self) -> set[str]:
        rows = self.select("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {row[0] for row in rows}

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def open_backend(location: str, setting: str | None = None) -> SQLiteBackend | PostgresBackend:
    """Open (creating on first use) the ledger at a path or ``postgresql://`` URL, or raise ConfigError. Its
    sentence starts with ``setting``, the setting that named the ledger and its (password-masked) value:
    ``SPENDWATCH_LEDGER='...'`` unless told otherwise."""
    is_postgres = is_postgres_location(location)
    named = setting or f"{LEDGER_ENV}={shown_location(location)!r}"
    try:
        backend = PostgresBackend(location) if is_postgres else SQLiteBackend(_checked_path(location, named))
        backend.prepare()
        tables = backend.table_names()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - every driver error becomes the one start-up sentence
        raise ConfigError(f"{named} cannot be opened as a ledger: {first_line(error)}") from None
    if tables and "spendwatch_meta" not in tables:
        raise ConfigError(f"{named} is a database of something else, not a spendwatch ledger")
    try:
        if "spendwatch_meta" in tables:
            version = backend.select("SELECT value FROM spendwatch_meta WHERE key = ?", ("schema_version",))
            if version and version[0][0] != SCHEMA_VERSION:
                raise ConfigError(f"{named} has ledger schema {version[0][0]}, this is {SCHEMA_VERSION}")
        backend.create_schema()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"{named} cannot be used as a ledger: {first_line(error)}") from None
    return backend


def _checked_path(path: str, named: str) -> str:
    if os.path.isdir(path):
        raise ConfigError(f"{named} is a directory; give the path of a ledger file")
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise ConfigError(f"{named} cannot be read (permission denied)")
    return path


def is_postgres_location(location: str) -> bool:
    """A ``postgresql://`` URL, not a SQLite path."""
    return location.startswith(("postgresql://", "postgres://"))


def state_directory(state_home: str | None = None) -> Path:
    """spendwatch's directory under ``$XDG_STATE_HOME`` (or ``state_home``): what a PostgreSQL ledger keeps locally."""
    return Path(state_home or os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "spendwatch"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none): enough for a one-sentence report."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def shown_location(location: str) -> str:
    """A ledger location fit to print: a PostgreSQL URL loses its password."""
    if not is_postgres_location(location):
        return location
    scheme, sep, rest = location.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return location
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
