"""The tamper-evident audit trail: one HMAC chain over everything the ledger records.

Every row written to ``calls`` (successful, failed and guard-refused calls alike: a refusal is a row with
``outcome = 'blocked'``), ``events`` (budget-limit changes, configuration start-ups, re-pricing runs, ...) and
``repricings`` gets one record in the ``audit`` table, in the transaction that writes the row, in insertion order::

    audit(seq, kind, call_id, row_id, mac)     kind: call (call_id) | event | reprice (row_id)
    mac(seq) = HMAC-SHA256(key, "spendwatch-audit-v1|<seq>|<kind>|<mac(seq - 1)>|" + JSON list of the row's fields)

The fields are the row's columns in table order, each normalised to its column type (an integer stored in a REAL
column reads back as a float), so verification recomputes the exact bytes from what the database holds. A call is
MACed as ingested; a later re-pricing keeps the old and new cost in ``repricings`` (chained too), and the call's
current cost must equal the last re-pricing's. After each append the head ``(seq, mac)`` is sealed with its own HMAC
in ``spendwatch_meta``, so deleting the newest records is caught too (though a whole earlier copy of the database
put back is not: keep the head that ``spendwatch audit verify`` prints somewhere else to catch that).

The audit also checks what the chain does not hold row by row: every counter of the running totals against a scan of
the chained calls, and each lease (a row that changes in place) against the HMAC written with it (``lease_rows.py``).
A lease's life is in the chain, though: a ``lease_open`` and a ``lease_close`` record (kind, the lease id as call_id,
MACed over the id), so every lease the chain holds open must have its row, and every row must have been opened.

Appends serialise on the chain head: SQLite's ``BEGIN IMMEDIATE`` already admits one writer at a time, and on
PostgreSQL every chained transaction first takes the advisory transaction lock :data:`AUDIT_LOCK`.

The key comes from ``SPENDWATCH_AUDIT_KEY`` or from a key file made (0600) on first use: ``<ledger>.key`` beside a
SQLite ledger, ``$XDG_STATE_HOME/spendwatch/audit.key`` for PostgreSQL (hosts sharing one PostgreSQL ledger must
share one key: set the variable to the file's content on each). The ledger keeps a fingerprint of the key, so a
process with another key is refused at start-up instead of silently breaking the chain.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spendwatch.exporter.ledger.lease_rows import (
    LEASE_CHAIN_KINDS,
    LEASE_COLUMNS,
    LEASE_OPEN,
    lease_mac,
    lease_record_content,
)
from spendwatch.exporter.ledger.locations import is_postgres_location, state_directory
from spendwatch.exporter.ledger.migrations import (
    SCANNED_COLUMNS,
    UNCHAINED_LEASES_KEY,
    UNSEALED_LEASES_KEY,
    scanned_counters,
)
from spendwatch.exporter.ledger.schema import (
    CALL_COLUMNS,
    CALL_TYPES,
    CALL_WIDTHS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    REPRICING_COLUMNS,
    REPRICING_TYPES,
    TOTAL_COUNTERS,
    TOTAL_KEYS,
)
from spendwatch.exporter.ledger.totals import add_to, hour_of
from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "AUDIT_KEY_ENV",
    "AUDIT_LOCK",
    "AuditKey",
    "Verdict",
    "append",
    "call_content",
    "call_mac_content",
    "check_key",
    "event_content",
    "key_file_path",
    "load_audit_key",
    "repricing_content",
    "verify",
]

AUDIT_KEY_ENV = "SPENDWATCH_AUDIT_KEY"
AUDIT_LOCK = 0x4155444954  # "AUDIT": the advisory lock key of the chain head (PostgreSQL)
HEAD_META_KEY = "audit_head"
KEY_ID_META_KEY = "audit_key_id"
_DOMAIN = "spendwatch-audit-v1"
_MIN_KEY_CHARS = 32
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _encoder_of_lists():
    """``_ENCODER.encode`` for a list, to the same text. ``encode`` builds a new C encoder on every call, about a
    sixth of what encoding a calls row costs; this one is built once (Python's own, where the C one is missing)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    encode = make(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )  # the arguments JSONEncoder.iterencode passes it, for _ENCODER's settings
    return lambda content: "".join(encode(content, 0))


_ENCODE = _encoder_of_lists()


@dataclass(frozen=True)
class AuditKey:
    """The chain's HMAC key and where it came from (for messages; never the key itself)."""

    secret: bytes
    source: str

    def mac(self, seq: int, kind: str, previous: str, content: Sequence) -> str:
        mac = self._keyed.copy()  # cheaper than keying a new HMAC per record
        mac.update(f"{_DOMAIN}|{seq}|{kind}|{previous}|{_ENCODE(content)}".encode())
        return mac.hexdigest()

    @functools.cached_property
    def _keyed(self) -> hmac.HMAC:
        return hmac.new(self.secret, digestmod=hashlib.sha256)

    def seal(self, seq: int, mac: str) -> str:
        """The head's own MAC: without the key nobody can move the head back after deleting the newest records."""
        return hmac.new(self.secret, f"{_DOMAIN}|head|{seq}|{mac}".encode(), hashlib.sha256).hexdigest()

    @property
    def fingerprint(self) -> str:
        return hmac.new(self.secret, f"{_DOMAIN}|key-id".encode(), hashlib.sha256).hexdigest()[:32]


# --- the key ----------------------------------------------------------------------------------------------------------


def key_file_path(location: str, environ=os.environ) -> Path:
    """``<ledger>.key`` beside a SQLite ledger; ``$XDG_STATE_HOME/spendwatch/audit.key`` for PostgreSQL."""
    if is_postgres_location(location):
        return state_directory(environ=environ) / "audit.key"
    return Path(f"{location}.key")


def load_audit_key(location: str, environ=os.environ) -> AuditKey:
    """The key from ``SPENDWATCH_AUDIT_KEY``, else from the key file (created on first use); or a ConfigError."""
    value = environ.get(AUDIT_KEY_ENV)
    if value is not None:
        if len(value.strip()) < _MIN_KEY_CHARS:
            raise ConfigError(
                f"{AUDIT_KEY_ENV}=<hidden> must be at least {_MIN_KEY_CHARS} characters of secret "
                "(for example the output of `openssl rand -hex 32`)"
            )
        return AuditKey(value.strip().encode(), AUDIT_KEY_ENV)
    path = key_file_path(location, environ)
    text = _read_key_file(path) if path.exists() else _create_key_file(path)
    if len(text) < _MIN_KEY_CHARS:
        raise ConfigError(f"the audit key file {str(path)!r} holds fewer than {_MIN_KEY_CHARS} characters of key")
    return AuditKey(text.encode(), f"key file {path}")


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the audit key file {str(path)!r} is open to other users (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 it, or set {AUDIT_KEY_ENV}"
            )
        return path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"the audit key file {str(path)!r} cannot be read: {error.strerror or error}") from None


def _create_key_file(path: Path) -> str:
    """A new random key, written to a private temporary file and linked into place, so processes starting at
    once agree on one key (the loser of the race reads the winner's)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
        temporary.unlink()
    except OSError as error:
        raise ConfigError(
            f"the audit key file {str(path)!r} cannot be created ({error.strerror or error}); set {AUDIT_KEY_ENV}"
        ) from None
    return _read_key_file(path)


def check_key(backend, key: AuditKey) -> None:
    """Refuse a key other than the one this ledger's chain was started with (recording it on first use)."""
    read = "SELECT value FROM spendwatch_meta WHERE key = ?"
    recorded = backend.select(read, (KEY_ID_META_KEY,))
    if not recorded:
        with backend.transaction() as cursor:
            query = "INSERT INTO spendwatch_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
            backend.execute(cursor, query, (KEY_ID_META_KEY, key.fingerprint))
            recorded = backend.execute(cursor, read, (KEY_ID_META_KEY,))
    if recorded[0][0] != key.fingerprint:
        raise ConfigError(
            f"the audit key ({key.source}) is not the key the ledger {backend.location!r} was started with; "
            f"set {AUDIT_KEY_ENV} to that key (the same on every host sharing the ledger)"
        )


# --- canonical content --------------------------------------------------------------------------------------------


def _normalised(values: Sequence, types: str) -> list:
    return [
        None if value is None else float(value) if kind == "f" else int(value) if kind == "i" else str(value)
        for value, kind in zip(values, types, strict=True)
    ]


def call_content(row: Sequence) -> list:
    """A calls row (all columns, table order) as MACed: a row read back from the database, normalised to the
    column types that schema.call_row writes."""
    return call_mac_content(_normalised(row, CALL_TYPES))


def call_mac_content(row: Sequence) -> list:
    """What a call's MAC covers: its row, without the columns added after schema version 1 when they all hold their
    defaults. So a row chained before those columns existed verifies as it was chained, and a row that had a value
    there (or gets one) does not verify without it."""
    for width in CALL_WIDTHS:  # the columns of each schema version, narrowest first: defaults are 0 and NULL
        if not any(row[width:]):
            return list(row[:width])
    return list(row)


def event_content(row: Sequence) -> list:
    """An events row ``(id, ts, kind, detail)`` as MACed."""
    return _normalised(row, EVENT_TYPES)


def repricing_content(row: Sequence) -> list:
    """A repricings row (:data:`REPRICING_COLUMNS`) as MACed."""
    return _normalised(row, REPRICING_TYPES)


# --- appending ------------------------------------------------------------------------------------------------------


def lock(backend, cursor) -> None:
    """Take the chain head for this transaction: call first thing in every transaction that appends."""
    backend.lock_budget(cursor, AUDIT_LOCK)


def append(backend, cursor, key: AuditKey, records: Sequence[tuple[str, str | None, int | None, Sequence]]) -> None:
    """Chain ``(kind, call_id, row_id, content)`` records after the head, inside the caller's transaction (which
    took :func:`lock` before writing anything)."""
    if not records:
        return
    head = backend.execute(cursor, "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")
    seq, previous = (int(head[0][0]), head[0][1]) if head else (0, "")
    rows = []
    for kind, call_id, row_id, content in records:
        seq += 1
        previous = key.mac(seq, kind, previous, content)
        rows.append((seq, kind, call_id, row_id, previous))
    backend.execute_many(cursor, "INSERT INTO audit (seq, kind, call_id, row_id, mac) VALUES (?, ?, ?, ?, ?)", rows)
    head_value = json.dumps({"seq": seq, "mac": previous, "seal": key.seal(seq, previous)})
    backend.set_meta(cursor, HEAD_META_KEY, head_value)


# --- verifying ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: the records walked and, when the trail is not intact, the first problem."""

    records: int
    kinds: dict[str, int]
    head: str  # the last record's MAC ("" for an empty trail)
    problem: str | None = None
    bad_seq: int | None = None  # the first record that failed, when the problem is one record

    @property
    def intact(self) -> bool:
        return self.problem is None


_Problem = tuple[str, int | None]
_KIND_TABLES = {"call": ("calls", "call_id"), "event": ("events", "row_id"), "reprice": ("repricings", "row_id")}
_WALK = """
SELECT a.seq, a.kind, a.call_id, a.row_id, a.mac, {calls}, {events}, {repricings}
FROM audit a
LEFT JOIN calls c ON a.kind = 'call' AND c.id = a.call_id
LEFT JOIN events e ON a.kind = 'event' AND e.id = a.row_id
LEFT JOIN repricings r ON a.kind = 'reprice' AND r.id = a.row_id
ORDER BY a.seq
"""


_KEYS = len(TOTAL_KEYS)


def verify(ledger) -> Verdict:
    """Walk the whole chain in one consistent snapshot and check everything it vouches for, in this order: each
    record's MAC over its row (an altered, deleted or reordered row or record), the sealed head (deleted newest
    records), rows no record covers (inserted without the key), budget limits against their last chained change,
    every counter of the running totals (what budgets and ``/metrics`` read) against a scan of ``calls``, and each
    lease against its MAC."""
    with ledger.snapshot() as rows:
        walk = _Walk(ledger.audit_key, rows, CALL_COLUMNS)
        problem = walk.chain() or walk.head() or walk.unchained() or walk.budget_limits()
        problem = problem or walk.totals() or walk.leases()
    message, bad_seq = problem or (None, None)
    return Verdict(walk.seq, dict(walk.kinds), walk.mac, message, bad_seq)


class _Walk:
    def __init__(self, key: AuditKey, rows, call_columns: Sequence[str]) -> None:
        self.key, self.rows, self.call_columns = key, rows, call_columns
        self.seq, self.mac = 0, ""
        self.kinds = {kind: 0 for kind in _KIND_TABLES}  # lease_open and lease_close are added once seen
        self.open_leases: dict[str, int] = {}  # lease id -> the record that opened it, for those not closed since
        self.closed_leases: set[str] = set()  # closed and not opened again: a row of theirs was put back
        calls_end = 5 + len(call_columns)
        events_end = calls_end + len(EVENT_COLUMNS)
        self._joined = {
            "call": slice(5, calls_end),
            "event": slice(calls_end, events_end),
            "reprice": slice(events_end, None),
        }
        self._cost = call_columns.index("cost_usd")  # cost_usd, then pricing: what a re-pricing changes

    def chain(self) -> _Problem | None:
        history = self._repricing_history()
        query = _WALK.format(
            calls=", ".join(f"c.{column}" for column in self.call_columns),
            events=", ".join(f"e.{column}" for column in EVENT_COLUMNS),
            repricings=", ".join(f"r.{column}" for column in REPRICING_COLUMNS),
        )
        with contextlib.closing(self.rows(query)) as records:
            for record in records:
                problem = self._record(record, history)
                if problem:
                    return problem
        return None

    def _record(self, record: tuple, history: dict) -> _Problem | None:
        seq, kind, call_id, row_id, mac = int(record[0]), *record[1:5]
        name = f"call {call_id!r}" if kind == "call" else f"{'repricing' if kind == 'reprice' else kind} {row_id}"
        if seq != self.seq + 1:
            return f"record {self.seq + 1} was deleted (the trail jumps from record {self.seq} to {seq})", self.seq + 1
        if kind in LEASE_CHAIN_KINDS:
            return self._lease_record(seq, kind, str(call_id), mac)
        if kind not in _KIND_TABLES:
            return f"record {seq} has an unknown kind {kind!r}: it was altered or inserted", seq
        row = record[self._joined[kind]]
        if row[0] is None:
            return f"record {seq} ({name}): its {_KIND_TABLES[kind][0]} row was deleted", seq
        content, cost = _content(kind, row), self._cost
        current = None
        if kind == "call" and call_id in history:
            # MACed as ingested; since then it must hold what its last re-pricing set.
            content[cost : cost + 2], current = _normalised(history[call_id][0], "ft"), history[call_id][1]
        expected = self.key.mac(seq, kind, self.mac, content)
        if not hmac.compare_digest(expected, str(mac)) or (
            current is not None and tuple(row[cost : cost + 2]) != current
        ):
            return (
                f"record {seq} ({name}) does not match its MAC: its row or the record itself was altered, "
                "or the record was inserted or moved without the key",
                seq,
            )
        self.seq, self.mac = seq, expected
        self.kinds[kind] += 1
        return None

    def _lease_record(self, seq: int, kind: str, lease_id: str, mac) -> _Problem | None:
        """A lease opened or closed: no row to join (it changes in place, or is gone), only its id is MACed."""
        expected = self.key.mac(seq, kind, self.mac, lease_record_content(lease_id))
        if not hmac.compare_digest(expected, str(mac)):
            return f"record {seq} ({kind} {lease_id!r}) does not match its MAC: it was altered or inserted", seq
        if kind == LEASE_OPEN:
            self.open_leases[lease_id] = seq
            self.closed_leases.discard(lease_id)
        else:
            self.open_leases.pop(lease_id, None)
            self.closed_leases.add(lease_id)
        self.seq, self.mac = seq, expected
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return None

    def _repricing_history(self) -> dict[str, tuple[tuple, tuple]]:
        """Per re-priced call: its (cost, pricing) before the first re-pricing and after the last."""
        history: dict[str, tuple[tuple, tuple]] = {}
        query = "SELECT call_id, old_cost_usd, old_pricing, new_cost_usd, new_pricing FROM repricings ORDER BY id"
        for call_id, old_cost, old_pricing, new_cost, new_pricing in self.rows(query):
            first = history[call_id][0] if call_id in history else (old_cost, old_pricing)
            history[call_id] = (first, (new_cost, new_pricing))
        return history

    def head(self) -> _Problem | None:
        found = list(self.rows("SELECT value FROM spendwatch_meta WHERE key = ?", (HEAD_META_KEY,)))
        if not found:
            return ("the chain's sealed head is missing: it was deleted", None) if self.seq else None
        try:
            head = json.loads(found[0][0])
            seq, mac, seal = int(head["seq"]), str(head["mac"]), str(head["seal"])
        except (ValueError, KeyError, TypeError):
            return "the chain's sealed head is unreadable: it was altered", None
        if not hmac.compare_digest(self.key.seal(seq, mac), seal):
            return "the chain's sealed head does not match its seal: it was altered", None
        if seq > self.seq:
            return f"records {self.seq + 1} to {seq} were deleted (the sealed head is record {seq})", self.seq + 1
        if (seq, mac) != (self.seq, self.mac):
            return f"record {seq + 1} was inserted without the key after the sealed head (record {seq})", seq + 1
        return None

    def unchained(self) -> _Problem | None:
        for kind, (table, column) in _KIND_TABLES.items():
            ((count,),) = list(self.rows(f"SELECT COUNT(*) FROM {table}"))
            if int(count) == self.kinds[kind]:
                continue
            query = (
                f"SELECT t.id FROM {table} t LEFT JOIN audit a ON a.kind = ? AND a.{column} = t.id"
                " WHERE a.seq IS NULL ORDER BY t.ts LIMIT 1"
            )
            found = list(self.rows(query, (kind,)))
            shown = repr(found[0][0]) if found else "?"
            return f"{table} row {shown} is in no audit record: it was inserted without the key", None
        return None

    def budget_limits(self) -> _Problem | None:
        """A limit in force must be the one its last chained ``budget_limit_changed`` event set."""
        changes: dict[tuple, tuple[float, float]] = {}
        query = "SELECT ts, detail FROM events WHERE kind = 'budget_limit_changed' ORDER BY id"
        for ts, detail in self.rows(query):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                change = json.loads(detail)
                changes[(change["name"], change["period"])] = (float(change["limit_usd"]), float(ts))
        for name, period, limit_usd, changed_at in self.rows(
            "SELECT name, period, limit_usd, changed_at FROM budget_limits"
        ):
            if changes.get((name, period)) != (float(limit_usd), float(changed_at)):
                shown = f"the {period} limit of budget {name!r} ({limit_usd} USD)"
                return f"{shown} is not its last recorded change: it was altered", None
        return None

    def totals(self) -> _Problem | None:
        """``totals``, ``daily_totals`` and ``hourly_totals`` (what budgets, ``/metrics`` and the API read) must add
        up to the chained calls, every counter of them: cost, tokens, and the request counters (success, error,
        blocked, unpriced, estimated, the duration sum and count). The calls are summed here, with the rules the
        ledger counts them by (an hour is arithmetic the two SQL dialects spell differently; unpriced is
        schema.has_no_price)."""
        daily: dict[tuple, list] = {}
        overall: dict[tuple, list] = {}
        hourly: dict[tuple, list] = {}
        keys = ", ".join(TOTAL_KEYS)
        for ts, day, *row in self.rows(f"SELECT ts, day, {keys}, {', '.join(SCANNED_COLUMNS)} FROM calls"):
            key, (cost, pricing, outcome, estimated, duration, *tokens) = tuple(row[:_KEYS]), row[_KEYS:]
            values = scanned_counters(cost, pricing, outcome, estimated, duration, tokens)
            add_to(daily, (day, *key), values)
            add_to(overall, key, values)
            add_to(hourly, (hour_of(float(ts)), *key), values)
        columns = ", ".join(TOTAL_COUNTERS)
        return (
            self._compare("daily_totals", f"SELECT day, {keys}, {columns} FROM daily_totals", daily)
            or self._compare("totals", f"SELECT {keys}, {columns} FROM totals", overall)
            or self._compare("hourly_totals", f"SELECT hour, {keys}, {columns} FROM hourly_totals", hourly)
        )

    def leases(self) -> _Problem | None:
        """Every lease must carry the MAC of its values (see lease_rows.py), but those an earlier release wrote before
        the upgrade, which expire by the time the upgrade recorded; every lease row must be open in the chain, but
        those an earlier release opened (listed by the upgrade to schema 7); every lease open in the chain must have
        its row."""
        unsealed_until = float(self._meta(UNSEALED_LEASES_KEY) or "-inf")
        try:
            unchained = set(json.loads(self._meta(UNCHAINED_LEASES_KEY) or "[]"))
        except (ValueError, TypeError):
            return "the list of leases opened before the audit chain held leases is unreadable: it was altered", None
        for *row, mac in self.rows(f"SELECT {', '.join(LEASE_COLUMNS)}, mac FROM leases ORDER BY lease_id"):
            shown = f"lease {row[0]!r} of budget {row[1]!r} ({row[4]} USD)"
            unsealed = mac is None and float(row[LEASE_COLUMNS.index("expires_at")]) <= unsealed_until
            if not unsealed and (mac is None or not hmac.compare_digest(lease_mac(self.key, row), str(mac))):
                return f"{shown} does not match its MAC: it was forged or altered without the key", None
            lease_id = str(row[0])
            opened = self.open_leases.pop(lease_id, None) is not None
            if not opened and (lease_id not in unchained or lease_id in self.closed_leases):
                return f"{shown} was never opened in the audit chain, or was closed: it was inserted by hand", None
        if self.open_leases:  # those with a row were taken out above
            lease_id, seq = next(iter(self.open_leases.items()))
            return f"lease {lease_id!r}, opened by record {seq} and never closed, was deleted", seq
        return None

    def _meta(self, key: str) -> str | None:
        found = list(self.rows("SELECT value FROM spendwatch_meta WHERE key = ?", (key,)))
        return str(found[0][0]) if found else None

    def _compare(self, table: str, query: str, scanned: dict[tuple, list]) -> _Problem | None:
        width = len(TOTAL_COUNTERS)
        for row in self.rows(query):
            key, values = tuple(row[:-width]), [float(value) for value in row[-width:]]
            expected = scanned.pop(key, [0.0] * width)
            for name, value, wanted in zip(TOTAL_COUNTERS, values, expected, strict=True):
                if not math.isclose(value, wanted, rel_tol=1e-9, abs_tol=1e-9):
                    shown = "/".join(str(part) for part in key)
                    sums = f"({name} {value:g}; its calls: {wanted:g})"
                    return f"{table} for {shown} does not add up to its calls {sums}: it was altered", None
        if scanned:
            shown = "/".join(str(part) for part in next(iter(scanned)))
            return f"{table} has no row for {shown}, which its calls need: it was deleted", None
        return None


def _content(kind: str, row: Sequence) -> list:
    return call_content(row) if kind == "call" else event_content(row) if kind == "event" else repricing_content(row)
