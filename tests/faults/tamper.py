"""Tampering with a round's ledger: each kind of change, made on a copy of the ledger by someone without the audit
key, must make ``spendwatch audit verify`` exit 1.

An app is killed in the middle of its calls first, so its lease stays in the ledger (nothing drains its journal
before the tampering), and the round's ledger is re-priced (``spendwatch reprice``, so the repricings table has
rows) and checked intact as the control; then each kind is tried on a copy of its own (a copied SQLite file, or a
PostgreSQL database made from the round's as a template). A kind whose table has no row to change is left out of
the count. Edits go straight at the database, as an attacker's would, never through spendwatch.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable

import psycopg

from spendwatch.demo.processes import wait_until
from tests.faults.rounds import READY_TIMEOUT

FORGED = "'forged-by-soak'"


def _first(table: str, key: str = "id") -> str:
    return f"(SELECT {key} FROM {table} ORDER BY {key} LIMIT 1)"


def _copy_row(table: str, columns: list[str], key: str, replace: dict[str, str]) -> str:
    """INSERT of a copy of ``table``'s first row with ``replace``'s columns set (a serial key is left out)."""
    kept = [column for column in columns if not (column == "id" and table in ("events", "repricings"))]
    values = [replace.get(column, column) for column in kept]
    return (
        f"INSERT INTO {table} ({', '.join(kept)}) SELECT {', '.join(values)} FROM {table} "
        f"WHERE {key} = {_first(table, key)}"
    )


# kind → (table that must have a row, SQL or a function of the table's columns giving the SQL)
TAMPERINGS: dict[str, tuple[str, str | Callable[[list[str]], str]]] = {
    "calls: cost changed": ("calls", f"UPDATE calls SET cost_usd = cost_usd / 2 WHERE id = {_first('calls')}"),
    "calls: outcome changed": ("calls", f"UPDATE calls SET outcome = 'error' WHERE id = {_first('calls')}"),
    "calls: tokens changed": ("calls", f"UPDATE calls SET output_tokens = 1 WHERE id = {_first('calls')}"),
    "calls: row deleted": ("calls", f"DELETE FROM calls WHERE id = {_first('calls')}"),
    "calls: row inserted": ("calls", lambda columns: _copy_row("calls", columns, "id", {"id": FORGED})),
    "events: detail changed": ("events", f"UPDATE events SET detail = detail || ' ' WHERE id = {_first('events')}"),
    "events: row deleted": ("events", f"DELETE FROM events WHERE id = {_first('events')}"),
    "events: row inserted": ("events", lambda columns: _copy_row("events", columns, "id", {})),
    "totals: request counter raised": ("totals", "UPDATE totals SET success = success + 100"),
    "totals: cost lowered": ("totals", "UPDATE totals SET cost_usd = 0"),
    "daily totals: cost lowered": ("daily_totals", "UPDATE daily_totals SET cost_usd = 0"),
    "hourly totals: error counter raised": ("hourly_totals", "UPDATE hourly_totals SET error = error + 1"),
    "leases: amount lowered": ("leases", "UPDATE leases SET outstanding_usd = 0"),
    "leases: life extended": ("leases", "UPDATE leases SET expires_at = expires_at + 86400"),
    "leases: row deleted": ("leases", "DELETE FROM leases"),
    "leases: forged": (
        "",
        "INSERT INTO leases (lease_id, budget, period, period_start, outstanding_usd, expires_at, mac)"
        " VALUES ('forged:global:day', 'global', 'day', '2026-11-27', -5.0, 9999999999.0, NULL)",
    ),
    "repricings: new cost changed": (
        "repricings",
        f"UPDATE repricings SET new_cost_usd = 0 WHERE id = {_first('repricings')}",
    ),
    "repricings: row deleted": ("repricings", f"DELETE FROM repricings WHERE id = {_first('repricings')}"),
    "repricings: row inserted": ("repricings", lambda columns: _copy_row("repricings", columns, "id", {})),
}

_CORRECTED_PRICES = '[models."gpt-4o"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n'


def tamper_and_verify(round_, kinds: list[str]) -> dict[str, bool | None]:
    """kind → caught (True), missed (False) or not applicable (None: no row to change); ``"control"`` says the
    untouched, re-priced ledger verified."""
    env = round_.environment()
    if round_.plan.guard:
        _leave_a_lease(round_)
    _reprice(round_, env)
    caught: dict[str, bool | None] = {"control": _verify(env, round_.dir) == 0}
    for number, kind in enumerate(kinds):
        table, change = TAMPERINGS[kind]
        with _copy(round_, number) as (location, connect):
            with connect() as conn:
                if table and not _has_rows(conn, table):
                    caught[kind] = None
                    continue
                sql = change(_columns(conn, table)) if callable(change) else change
                conn.execute(sql)
                conn.commit()
            caught[kind] = _verify({**env, "SPENDWATCH_LEDGER": location}, round_.dir) == 1
    return caught


def _leave_a_lease(round_) -> None:
    """An app with the guard on makes a call or two and dies by kill -9: its lease is left to expire."""
    round_.start_worker(0)
    app = round_.workers[-1]

    def called_or_gone() -> bool:
        return (app.acks_path.exists() and app.acks_path.stat().st_size > 0) or not app.running()

    wait_until(called_or_gone, READY_TIMEOUT, "an app's first call")
    app.killed = True
    app.popen.send_signal(signal.SIGKILL)
    app.popen.wait()


def _reprice(round_, env: dict[str, str]) -> None:
    prices = round_.dir / "corrected-prices.toml"
    prices.write_text(_CORRECTED_PRICES)
    argv = [sys.executable, "-m", "spendwatch.cli", "reprice", "--model", "gpt-4o", "--since", "2000-01-01"]
    argv += ["--until", "2100-01-01", "--prices-file", str(prices), "--reason", "soak"]
    subprocess.run(argv, env=env, cwd=round_.dir, capture_output=True, timeout=600, check=True)


def _verify(env: dict[str, str], cwd) -> int:
    argv = [sys.executable, "-m", "spendwatch.cli", "audit", "verify", "--json"]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    with contextlib.suppress(ValueError):
        json.loads(done.stdout)  # a verdict, not a crash
        return done.returncode
    return -1


@contextlib.contextmanager
def _copy(round_, number: int):
    """(location, connect) of a copy of the round's ledger, removed afterwards."""
    if round_.plan.backend == "postgresql":
        name = f"{round_.database}_t{number}"
        postgres = round_.postgres
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {round_.database}")
        try:
            yield postgres.url(name), lambda: psycopg.connect(postgres.url(name))
        finally:
            postgres.drop_database(name)
        return
    copy = round_.dir / f"tampered-{number}.db"
    with sqlite3.connect(round_.ledger) as source, sqlite3.connect(copy) as dest:
        source.backup(dest)
    try:
        yield str(copy), lambda: contextlib.closing(sqlite3.connect(copy))
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(f"{copy}.journal", ignore_errors=True)


def _has_rows(conn, table: str) -> bool:
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] > 0


def _columns(conn, table: str) -> list[str]:
    cursor = conn.execute(f"SELECT * FROM {table} LIMIT 1")
    return [column[0] for column in cursor.description]
