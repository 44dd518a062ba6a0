"""SQLite and PostgreSQL under the ledger: the connection, transactions, and the few statements whose SQL differs.

Everything else speaks one SQL with ``?`` placeholders, which a dialect rewrites for its driver. Both backends take
the same calls: :meth:`transaction` for a write, :meth:`execute` inside it, :meth:`select` outside, and
:meth:`snapshot` for one consistent read of the whole database.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from spendwatch.exporter.ledger.schema import create_statements

__all__ = ["PostgresBackend", "SQLiteBackend"]

_IDS_PER_QUERY = 500  # ids looked up per SELECT: well under SQLite's oldest limit of 999 parameters


class _SqlBackend:
    """What both databases share; subclasses set the connection, placeholders and column types."""

    location: str
    types: dict[str, str]
    now_sql: str  # the database's clock, in unix seconds (lease expiry is decided by it)
    row_lock: str = ""  # appended to a SELECT that reads rows the transaction will write back

    def _sql(self, query: str) -> str:
        return query

    def create_tables(self, cursor) -> None:
        """Every table and index this release needs that is not there yet."""
        for statement in create_statements(self.types):
            cursor.execute(statement)

    def insert_calls(self, cursor, rows: Sequence[tuple]) -> list[tuple]:
        """Insert the calls rows whose id is new (to the table and among ``rows``, the first of an id kept); those
        rows, in order. One statement for all of them: the ids are looked up first, which is exact because every
        writer of calls holds the audit chain's head (SQLite's one writer, PostgreSQL's advisory lock)."""
        held: set = set()
        ids = [row[0] for row in rows]
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            query = f"SELECT id FROM calls WHERE id IN ({', '.join('?' * len(chunk))})"
            cursor.execute(self._sql(query), chunk)
            held.update(found for (found,) in cursor.fetchall())
        new = []
        for row in rows:
            if row[0] not in held:
                held.add(row[0])
                new.append(row)
        if new:
            placeholders = ", ".join("?" * len(new[0]))
            cursor.executemany(self._sql(f"INSERT INTO calls VALUES ({placeholders})"), new)
        return new

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

    def execute_many(self, cursor, query: str, rows: Sequence[Sequence]) -> None:
        """One statement for each of ``rows``, inside a transaction."""
        cursor.executemany(self._sql(query), rows)

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

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer before it fails (SQLite's lock; PostgreSQL waits its own way)."""


class SQLiteBackend(_SqlBackend):
    types = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
    # SQLite has no server: its clock is the host's, as SQLite reads it (to the millisecond). Every process sharing a
    # SQLite file shares that host, so they agree on it whatever clock a process keeps of its own.
    now_sql = "(julianday('now') - 2440587.5) * 86400.0"

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self.location = path
        self.busy_timeout_s = busy_timeout_s
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _bind_none_directly()
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
    def transaction(self, wait_s: float | None = None) -> Iterator[sqlite3.Cursor]:
        """A write transaction; ``wait_s`` bounds the wait for another writer's lock (else the busy timeout)."""
        cursor = self.connection.cursor()
        if wait_s is None:
            cursor.execute("BEGIN IMMEDIATE")
        else:
            self.connection.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
            try:
                cursor.execute("BEGIN IMMEDIATE")  # the only statement that waits for the lock: BEGIN takes it
            finally:
                self.connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        try:
            yield cursor
        except BaseException:
            # SQLite has rolled back already on some errors (a full disk, I/O): a ROLLBACK then would raise "no
            # transaction is active" in place of the error that says what happened.
            if self.connection.in_transaction:
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

    def set_busy_timeout(self, seconds: float) -> None:
        self.busy_timeout_s = seconds
        self.connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def close(self) -> None:
        self.connection.close()

    def close_inherited(self) -> None:
        """Close, in a forked child, the connection it inherited (the parent was idle then: see ``Ledger``)."""
        self.connection.close()


def _bind_none_directly() -> None:
    """Have sqlite3 bind a None parameter (NULL) without first trying to adapt it. Unlike an int, float or str, a
    None is looked up as an object to adapt, which raises and clears two AttributeErrors: a calls row holds about four
    Nones, and that was 6 % of what storing a call cost. The adapter returns the None as it is, so nothing binds
    differently in this process; one that someone else registered for None is kept."""
    if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(type(None), _same)


def _same(value):
    return value


class PostgresBackend(_SqlBackend):
    types = {"text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"}
    # The server's clock when the statement runs (now() would be the transaction's start, before any lock wait).
    now_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    row_lock = " FOR UPDATE"

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
    def transaction(self, wait_s: float | None = None):
        """A write transaction; ``wait_s`` bounds each wait for a lock in it (the audit chain's head, a row)."""
        connection = self.connection
        with connection.transaction(), connection.cursor() as cursor:
            if wait_s is not None:
                cursor.execute(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'")
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

    def close_inherited(self) -> None:
        """Let go, in a forked child, of the connection it inherited. Not closed: that would send the server a
        Terminate over the socket both processes share and end the parent's session; psycopg frees it without one
        in a process other than the one that opened it."""
        self._connection = None
