"""Dead processes' journals picked up live, and leases released only once their owner's journal is in the ledger.

A process killed before its drainer caught up leaves its journal behind, its calls unseen by budgets and reports.
Every live drainer (an app's, ``spendwatch serve``'s) looks for such journals every :data:`SCAN_INTERVAL_S`: it lists
the journal directories and tries each file's ``flock`` (a dead writer's is free, see
:func:`~spendwatch.exporter.journal.orphaned_journals`), replays what it takes, and deletes the file once its records
are in the ledger. No restart is waited for.

A guard's lease (:mod:`spendwatch.exporter.ledger.leases`) holds the money its process committed and whose calls the
ledger has not ingested yet. It names its owner, ``host:pid:start`` (``start``: the process's start time in clock
ticks since boot, so a reused pid is another owner). Past its TTL the ledger keeps it, counted against the budget,
and it is released here only when its owner's journal is in:

- the owner is this process: once everything it journaled is in the ledger (its own expired leases, after a drain);
- the owner ran on this host and is dead: once no journal file of its pid is left in the journal directories, but
  files held open by a live process that reuses the pid (it journals there too, under that pid);
- the owner ran on another host: never from here, since its journal cannot be seen from here. A process on that host
  releases it when it replays the journal; until then the budget refuses rather than overshoots, and
  ``spendwatch leases`` shows the lease and releases it by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from spendwatch.exporter import inflight
from spendwatch.exporter.journal import SUFFIX, orphaned_journals
from spendwatch.exporter.ledger.leases import HeldLease, held_leases, release_leases

__all__ = [
    "SCAN_INTERVAL_S",
    "DeadJournalWatch",
    "owner_state",
    "process_owner",
    "release_settled_leases",
    "waiting_in_dead_journals",
    "owner_states",
]

_logger = logging.getLogger(__name__)

SCAN_INTERVAL_S = 2.0
_owner: tuple[int, str] | None = None  # (pid, owner) of this process, computed once per pid (a fork is another)


def process_owner() -> str:
    """This process as a lease's owner: ``host:pid:start``."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}")
    return _owner[1]


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if no such process lives (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command name, which may hold spaces and parentheses
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else start


def _open_by(pid: int) -> set[str] | None:
    """The files process ``pid`` holds open, or None when that cannot be read (another user's process)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    held = set()
    for name in names:
        try:
            held.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue  # closed meanwhile
    return held


def _journal_files(directories: list[Path]) -> dict[str, list[Path]]:
    """A process's journal files and in-flight table (its calls on the wire, recorded as estimates after its journal)
    by their writer's pid: each is named ``<pid>-<id><suffix>``, and is deleted once what it holds is in the ledger."""
    by_pid: dict[str, list[Path]] = {}
    for directory in directories:
        for suffix in (SUFFIX, inflight.SUFFIX):
            for path in directory.glob(f"*{suffix}") if directory.is_dir() else ():
                by_pid.setdefault(path.name.split("-", 1)[0], []).append(path)
    return by_pid


def journal_left(pid: str, directories: list[Path]) -> bool:
    """Whether a journal file of dead process ``pid`` is still here: not replayed yet, or being replayed by another
    process right now. Its calls on the wire wait for it, or an estimate would take the ledger id of a call whose
    record is in that journal. Files a live process holds under the reused pid are its own."""
    left = [path for directory in directories if directory.is_dir() for path in directory.glob(f"{pid}-*{SUFFIX}")]
    if left and _start_ticks(int(pid)) is not None:
        held = _open_by(int(pid))
        left = [path for path in left if held is None or str(path.resolve()) not in held]
    return bool(left)


def owner_state(owner: str, files_by_pid: dict[str, list[Path]], me: str) -> str:
    """Where an owner's journal stands, seen from this process: ``self``, ``other host``, ``alive`` (it releases its
    own), ``waiting`` (dead, a journal file of it still here) or ``in`` (dead and its journal is in the ledger)."""
    if owner == me:
        return "self"
    host, pid, start = owner.rsplit(":", 2)
    if host != me.rsplit(":", 2)[0]:
        return "other host"
    running = _start_ticks(int(pid))
    if running == start:
        return "alive"
    left = files_by_pid.get(pid, [])
    if left and running is not None:  # the pid was reused: the files its new process holds open are not the owner's
        held = _open_by(int(pid))
        left = [path for path in left if held is None or str(path.resolve()) not in held]
    return "waiting" if left else "in"


def release_settled_leases(ledger, directories: list[Path], *, own_journal_in: bool) -> int:
    """Release the leases whose owner's journal is in the ledger (see the module's docstring). Returns how many."""
    held = held_leases(ledger)
    if not held:
        return 0
    me, files = process_owner(), _journal_files(directories)
    mine = [lease.lease_id for lease in held if lease.owner == me and lease.expired and own_journal_in]
    released = release_leases(ledger, mine, expired_only=True) if mine else 0
    dead = [lease for lease in held if lease.owner != me and owner_state(lease.owner, files, me) == "in"]
    if dead:
        released += release_leases(ledger, [lease.lease_id for lease in dead])
        _logger.info("spendwatch: released %d leases of dead processes whose journals are in the ledger", len(dead))
    return released


class DeadJournalWatch:
    """Run by a sink's drainer after each pass (``LedgerSink.after_drain``); acts every :data:`SCAN_INTERVAL_S`."""

    def __init__(self, sink, interval: float = SCAN_INTERVAL_S) -> None:
        self.sink = sink
        self.interval = interval
        self._next = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        sink = self.sink
        with sink._drain_lock:  # one replay at a time in this process, as the drainer's own first pass
            sink.recover()
            own_journal_in = _all_in(sink._journal)
        try:
            release_settled_leases(sink.ledger, sink.directories, own_journal_in=own_journal_in)
        except Exception:  # noqa: BLE001 - the leases stay (counted against their budgets) until a later pass
            _logger.debug("spendwatch: cannot release the leases of replayed journals", exc_info=True)


def _all_in(journal) -> bool:
    """Whether everything this process journaled is in the ledger (no record left in a file or in memory)."""
    if journal is None or getattr(journal, "memory", None):
        return False
    return all(next(file.records(), None) is None for file in list(journal.files))


def owner_states(held: list[HeldLease], directories: list[Path]) -> list[str]:
    """Where each lease's owner's journal stands, seen from here (see :func:`owner_state`)."""
    me, files = process_owner(), _journal_files(directories)
    return [owner_state(lease.owner, files, me) for lease in held]


def waiting_in_dead_journals(directories: list[Path]) -> int:
    """How many calls journals whose writer died hold, not in the ledger yet (read here, not replayed: for read-only
    commands, which say so rather than write the ledger behind the user's back)."""
    waiting = 0
    for directory in directories:
        for journal in orphaned_journals(directory):
            try:
                waiting += sum(1 for _ in journal.records())
            finally:
                journal.close()
    return waiting
