"""SQLite and PostgreSQL under the ledger: connection, schema, and the few statements whose SQL differs.

A ledger location can be wrong in two ways, and they are told apart. :func:`check_location` finds what can never
work without connecting (a malformed URL, a path under a regular file, a directory, a file that is not a database):
that is a ConfigError, one sentence naming ``SPENDWATCH_LEDGER`` and its value. :func:`connect_backend` then
connects and creates the schema; what the environment does there (PostgreSQL down, a locked or read-only file, a
permission) raises :class:`LedgerUnavailable`, which an app retries in the background while its calls wait in the
journal. :func:`open_backend` does both and turns everything into a ConfigError, for the command line.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "LEDGER_ENV",
    "LedgerUnavailable",
    "PostgresBackend",
    "SQLiteBackend",
    "check_location",
    "connect_backend",
    "first_line",
    "is_postgres_location",
    "open_backend",
    "shown_location",
    "state_directory",
]

LEDGER_ENV = "SPENDWATCH_LEDGER"
_SCHEMA_LOCK = 0x5350454E44  # "SPEND": the advisory lock key for creating the schema
SCHEMA_VERSION = "1"
_SQLITE_HEADER = b"SQLite format 3\x00"
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


class LedgerUnavailable(Exception):
    """The ledger cannot be reached or written now (a server down, a lock, a read-only file): retry later."""


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
        self.busy_timeout_s = busy_timeout_s
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front, so two
        # processes never both read the totals and then race to write them).
        self.connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)

    def prepare(self) -> None:
        self._set_wal_mode()
        # NORMAL in WAL mode survives a process crash; power loss is the journal's and the OS's business.
        self.connection.execute("PRAGMA synchronous = NORMAL")

    def _set_wal_mode(self) -> None:
        # Switching a new database to WAL takes an exclusive lock without waiting on the busy timeout, so processes
        # creating one ledger at the same moment get "database is locked" here: wait for the others, as a write would.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                self.connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

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
    named = _named(location, setting)
    check_location(location, named)
    try:
        return connect_backend(location, named)
    except LedgerUnavailable as error:
        raise ConfigError(f"{named} cannot be opened as a ledger: {error}") from None


def check_location(location: str, setting: str | None = None) -> None:
    """Raise ConfigError if the ledger at ``location`` could never work, whatever the database or disk does later.
    Connects to nothing, so it is quick at start-up."""
    named = _named(location, setting)
    if is_postgres_location(location):
        _check_url(location, named)
    else:
        _check_path(location, named)


def connect_backend(location: str, setting: str | None = None) -> SQLiteBackend | PostgresBackend:
    """Connect to a ledger :func:`check_location` accepted, creating its schema on first use. A database that is
    not a spendwatch ledger (or of another schema) is a ConfigError; anything else that fails is LedgerUnavailable."""
    named = _named(location, setting)
    backend = None
    try:
        backend = PostgresBackend(location) if is_postgres_location(location) else SQLiteBackend(location)
        backend.prepare()
        _check_contents(backend, named)
        backend.create_schema()
    except BaseException as error:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
        if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError):
            raise ConfigError(f"{named} cannot be opened as a ledger: {first_line(error)}") from None
        if isinstance(error, Exception) and not isinstance(error, ConfigError):
            raise LedgerUnavailable(first_line(error)) from error
        raise
    return backend


def _named(location: str, setting: str | None) -> str:
    """How an error names the ledger: ``setting`` as given, else ``SPENDWATCH_LEDGER='...'`` (password masked)."""
    return setting or f"{LEDGER_ENV}={shown_location(location)!r}"


def _check_contents(backend: SQLiteBackend | PostgresBackend, named: str) -> None:
    tables = backend.table_names()
    if tables and "spendwatch_meta" not in tables:
        raise ConfigError(f"{named} is a database of something else, not a spendwatch ledger")
    if "spendwatch_meta" in tables:
        version = backend.select("SELECT value FROM spendwatch_meta WHERE key = ?", ("schema_version",))
        if version and version[0][0] != SCHEMA_VERSION:
            raise ConfigError(f"{named} has ledger schema {version[0][0]}, this is {SCHEMA_VERSION}")


def _check_url(url: str, named: str) -> None:
    try:
        import psycopg.conninfo
    except ImportError:
        raise ConfigError(f"{named} needs psycopg: pip install 'spendwatch[postgres]'") from None
    try:
        options = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as error:
        raise ConfigError(f"{named} is not a valid PostgreSQL URL: {first_line(error)}") from None
    ports = str(options.get("port", "5432")).split(",")
    if not all(port.strip().isdigit() and 0 < int(port) < 65536 for port in ports):
        raise ConfigError(f"{named} is not a valid PostgreSQL URL: its port must be a number from 1 to 65535")


def _check_path(path: str, named: str) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"{named} is a directory; give the path of a ledger file")
    parent = Path(path).absolute().parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ConfigError(f"{named} is under {str(ancestor)!r}, which is a file, not a directory")
            break
    try:
        with open(path, "rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return  # created on first use
    except OSError as error:
        raise ConfigError(f"{named} cannot be read ({error.strerror or error})") from None
    if head and head != _SQLITE_HEADER:
        raise ConfigError(f"{named} cannot be opened as a ledger: file is not a database")


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
