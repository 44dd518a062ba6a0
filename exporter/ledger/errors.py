"""Which ledger write errors are a record's own fault (poison) and which are the ledger's (transient).

A record is poison only when the database, or the driver binding it, refuses one of its values by type or
constraint: no retry can ever store it as it is, so it is set aside (see :mod:`spendwatch.exporter.quarantine`) rather
than block every record behind it. Everything else — a full disk, a lost connection, a server shutting down, a locked
or read-only file, a missing table — is the ledger's state, not the record's: the record waits in the journal and is
tried again until it succeeds. An error this module does not know is transient: retrying a poison record costs a
retry, quarantining a good one costs a call that then waits for someone to replay it.

The classes and codes were each provoked against a real database (tests/test_quarantine.py):
sqlite3 — ``OverflowError`` (an int beyond 64 bits), ``ProgrammingError`` "Error binding parameter", an
``IntegrityError`` on a NOT NULL or CHECK constraint, ``DataError`` (a string or blob too big); transient: every
``OperationalError`` ("database or disk is full", "database is locked", "attempt to write a readonly database").
psycopg — ``DataError`` and its SQLSTATE class 22 subclasses (``NumericValueOutOfRange``, ``InvalidTextRepresentation``,
``CharacterNotInRepertoire``, ``UntranslatableCharacter``, and the client-side "cannot contain NUL (0x00) bytes"),
``NotNullViolation`` (23502), ``CheckViolation`` (23514), ``ProgramLimitExceeded`` (54000, an index row too large),
``ProgrammingError`` "cannot adapt type"; transient:
``OperationalError`` (``DiskFull`` 53100, ``AdminShutdown`` 57P01, a lost connection), ``InterfaceError``.
Both — ``UnicodeEncodeError`` (a lone surrogate in a text value), and the ``ValueError``/``TypeError`` a record's value
raises when it is turned into its column's type (``int("…")``, attributes that are not JSON).
"""

from __future__ import annotations

import sqlite3

__all__ = ["is_poison"]

# SQLite's extended result codes (``sqlite_errorname``) that refuse a value rather than the write.
_SQLITE_VALUE_REFUSALS = frozenset(
    {
        "SQLITE_CONSTRAINT_NOTNULL",
        "SQLITE_CONSTRAINT_CHECK",
        "SQLITE_CONSTRAINT_DATATYPE",
        "SQLITE_MISMATCH",
        "SQLITE_TOOBIG",
    }
)
# PostgreSQL's SQLSTATEs: class 22 is "data exception" (every code a value's fault); of class 23 (integrity), only
# the constraints a single row breaks on its own (a unique violation is a race between writers, so it is retried);
# 54000 is a value too large for an index ("index row size exceeds btree maximum": a model name of 3 kB).
_POSTGRES_VALUE_CLASS = "22"
_POSTGRES_VALUE_REFUSALS = frozenset({"23502", "23514", "54000"})
# Raised by the drivers before the statement reaches the database, when a Python value cannot be bound at all.
_BINDING_MESSAGES = ("Error binding parameter", "cannot adapt type", "cannot contain NUL")


def is_poison(error: BaseException) -> bool:
    """Whether ``error``, raised by ingesting one record alone, means that record can never be stored as it is."""
    if isinstance(error, sqlite3.Error):
        return _sqlite_refuses_value(error)
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is not None:  # a psycopg error the server raised
        return sqlstate.startswith(_POSTGRES_VALUE_CLASS) or sqlstate in _POSTGRES_VALUE_REFUSALS
    if _is_psycopg_error(error):  # raised by psycopg itself, before the server saw the statement
        return _binding_refused(error) or type(error).__name__ == "DataError"
    # Python's own conversion of a value: an int too large for the column, a lone surrogate, a value of the wrong type.
    return isinstance(error, OverflowError | ValueError | TypeError)


def _sqlite_refuses_value(error: sqlite3.Error) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return False  # full, locked, read-only, I/O: the database's state
    if getattr(error, "sqlite_errorname", None) in _SQLITE_VALUE_REFUSALS:
        return True
    return isinstance(error, sqlite3.DataError) or _binding_refused(error)


def _binding_refused(error: BaseException) -> bool:
    message = str(error)
    return any(text in message for text in _BINDING_MESSAGES)


def _is_psycopg_error(error: BaseException) -> bool:
    # psycopg is imported only where PostgreSQL is used: its classes are recognised by their module.
    return type(error).__module__.split(".")[0] == "psycopg"
