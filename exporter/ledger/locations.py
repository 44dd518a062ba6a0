"""Where a ledger is, whether it can be one, and connecting to it.

A ledger location can be wrong in two ways, and they are told apart. :func:`check_location` finds what can never
work without connecting (a malformed URL, a path under a regular file, a directory, a file that is not a database):
that is a ConfigError, one sentence naming ``SPENDWATCH_LEDGER`` and its value. :func:`connect_backend` then
connects and creates or upgrades the schema; what the environment does there (PostgreSQL down, a locked or
read-only file, a permission) raises :class:`LedgerUnavailable`, which an app retries in the background while its
calls wait in the journal. :func:`open_backend` does both and turns everything into a ConfigError, for the command
line.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from spendwatch.exporter.ledger.dialects import PostgresBackend, SQLiteBackend
from spendwatch.exporter.ledger.migrations import VERSION_KEY, VERSION_QUERY, check_version, create_or_upgrade
from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "LEDGER_ENV",
    "LedgerUnavailable",
    "check_location",
    "connect_backend",
    "first_line",
    "is_postgres_location",
    "open_backend",
    "shown_location",
    "state_directory",
]

LEDGER_ENV = "SPENDWATCH_LEDGER"
_SQLITE_HEADER = b"SQLite format 3\x00"


class LedgerUnavailable(Exception):
    """The ledger cannot be reached or written now (a server down, a lock, a read-only file): retry later."""


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
        create_or_upgrade(backend, named)
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
        check_version(backend.select(VERSION_QUERY, (VERSION_KEY,)), named)


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


def state_directory(state_home: str | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """spendwatch's directory under ``state_home``, else ``$XDG_STATE_HOME`` (its default ``~/.local/state``): the
    default ledger, and what a PostgreSQL ledger keeps locally. The one place that reads ``XDG_STATE_HOME``."""
    return Path(state_home or environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "spendwatch"


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
