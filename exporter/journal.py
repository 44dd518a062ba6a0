"""An append-only, memory-mapped journal: how a returned call survives ``kill -9`` for a few microseconds.

A durable SQLite commit costs ~50 µs, as much as the whole instrumented call, so the caller's path does not commit.
It copies the encoded record into a memory-mapped file instead. Pages of a shared mapping belong to the kernel's
page cache, so the record outlives the process the moment the copy is done, whatever kills it. A background thread
drains the journal into the ledger; a process opening the ledger later replays journals whose writer died.

File layout: a 64-byte header (magic, drained offset), then records ``[u32 length][u32 crc32][payload]``. The
length is written last: it is the commit mark, so a reader stops at a zero length (the end, or a copy cut short by
the process dying mid-write, which was then a call that had not returned yet). Each writer holds an exclusive
``flock`` on its file for its lifetime; a file whose lock can be taken belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

__all__ = [
    "DEFAULT_MEMORY_RECORDS",
    "SUFFIX",
    "JournalFile",
    "JournalUnavailable",
    "JournalWriter",
    "dead_files",
    "orphaned_journals",
]

T = TypeVar("T")
_logger = logging.getLogger(__name__)

SUFFIX = ".journal"
MAGIC = b"SWJ1"
HEADER = struct.Struct("<4sQ")  # magic, drained offset
HEADER_SIZE = 64
RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of payload
LENGTH = struct.Struct("<I")
DEFAULT_FILE_SIZE = 4 * 1024 * 1024
DEFAULT_MEMORY_RECORDS = 100_000  # records kept in memory while no journal file can be written (~30 MB)


@dataclass
class JournalFile:
    """One journal file, readable by the drainer (ours) or by recovery (a dead writer's)."""

    path: Path
    file_id: str
    mm: mmap.mmap
    fd: int

    @classmethod
    def open(cls, path: Path, fd: int | None = None) -> JournalFile:
        if fd is None:
            fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size)
        if size < HEADER_SIZE or mm[:4] != MAGIC:
            mm.close()
            os.close(fd)
            raise ValueError(f"{path} is not a spendwatch journal")
        return cls(path, path.stem, mm, fd)

    @property
    def drained(self) -> int:
        return HEADER.unpack_from(self.mm, 0)[1]

    def mark_drained(self, offset: int) -> None:
        HEADER.pack_into(self.mm, 0, MAGIC, offset)

    def records(self, start: int | None = None) -> Iterator[tuple[int, bytes]]:
        """``(offset, payload)`` of each committed record from ``start`` (default: the drained offset)."""
        offset = self.drained if start is None else start
        size = len(self.mm)
        while offset + RECORD_HEAD.size <= size:
            length, checksum = RECORD_HEAD.unpack_from(self.mm, offset)
            end = offset + RECORD_HEAD.size + length
            if length == 0 or end > size:
                return
            payload = self.mm[offset + RECORD_HEAD.size : end]
            if zlib.crc32(payload) != checksum:
                _logger.warning("spendwatch: journal %s has a damaged record at %d; stopping there", self.path, offset)
                return
            yield offset, payload
            offset = end

    def end_of(self, offset: int, payload: bytes) -> int:
        return offset + RECORD_HEAD.size + len(payload)

    def close(self, *, delete: bool = False) -> None:
        # Unlinked while still locked: closing first would let another process lock the file in between and take
        # a live writer's retired file for a dead writer's.
        if delete:
            self.path.unlink(missing_ok=True)
        try:
            self.mm.close()
        finally:
            os.close(self.fd)


class JournalUnavailable(OSError):
    """No directory of the chain takes a new journal file now (each one's reason in the message)."""


class JournalWriter:
    """This process's journal: ``append`` is the caller's-path write. Thread-safe.

    A new file (at start, and when the current one is full) goes in the first of ``directories`` that takes one: the
    journal's own directory, then its fallbacks. When none does (every disk full, every directory unwritable), records
    wait in memory, up to ``memory_records`` of them, until the drainer finds a place (:meth:`reopen`) or takes them
    into the ledger itself (:meth:`waiting_in_memory`); only past that bound is a record dropped, and counted."""

    def __init__(
        self,
        directories: str | os.PathLike | list,
        *,
        file_size: int = DEFAULT_FILE_SIZE,
        memory_records: int = DEFAULT_MEMORY_RECORDS,
    ) -> None:
        chain = [directories] if isinstance(directories, str | os.PathLike) else directories
        self.directories = [Path(directory) for directory in chain]
        self.file_size = file_size
        self.memory_records = memory_records
        self._lock = threading.Lock()
        self.files: list[JournalFile] = []  # oldest first; the last one is being written
        self.memory: deque[bytes] = deque()  # records no file could take yet, oldest first
        self.memory_id = f"{os.getpid()}-{uuid.uuid4().hex}-memory"
        self._memory_taken = 0  # records that left memory so far: the next one's number in memory_id
        self.dropped = 0  # records past the memory bound: the only ones ever lost, and counted
        self.problem: str | None = None  # why no file can be written now (None: records go to files)
        self.passed_over: str | None = None  # why the directories before the current file's were passed over
        self._mm: mmap.mmap | None = None
        self._offset = 0
        with self._lock:
            self._open_or_wait_in_memory()

    @property
    def directory(self) -> Path:
        """Where this process journals now (its first directory while records wait in memory)."""
        return self.files[-1].path.parent if self.files and self.problem is None else self.directories[0]

    @property
    def durable(self) -> bool:
        """Whether an append now lands in a file (False: it would wait in memory)."""
        return self.problem is None

    def _open_or_wait_in_memory(self) -> bool:
        try:
            self._open_new_file()
        except JournalUnavailable as error:
            self.problem = str(error)
            self._mm = None
            return False
        self.problem = None
        return True

    def _open_new_file(self) -> None:
        problems = []
        for directory in self.directories:
            try:
                self._open_new_file_in(directory)
                self.passed_over = "; ".join(problems) or None
                return
            except OSError as error:
                problems.append(f"{directory}: {error.strerror or error}")
        raise JournalUnavailable("; ".join(problems))

    def _open_new_file_in(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        building, path = directory / f"{name}.building", directory / f"{name}{SUFFIX}"
        fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Allocate the blocks now: writing a sparse mapping on a full disk kills the process with SIGBUS.
            os.posix_fallocate(fd, 0, self.file_size)
            os.pwrite(fd, HEADER.pack(MAGIC, HEADER_SIZE), 0)
            # Only a locked file with its header gets the name recovery looks for.
            os.rename(building, path)
            journal = JournalFile.open(path, fd)
        except BaseException:
            os.close(fd)
            building.unlink(missing_ok=True)
            raise
        self._mm = journal.mm
        self._offset = HEADER_SIZE
        self.files.append(journal)

    def append(self, payload: bytes) -> bool:
        """Keep ``payload``: True when it is in a file, False when it waits in memory (or, past the bound, was
        dropped and counted in ``dropped``). Never raises for want of a place."""
        length = len(payload)
        with self._lock:
            offset = self._offset
            end = offset + RECORD_HEAD.size + length
            if self.problem is not None or end > self.file_size:
                # Waiting in memory already: the drainer looks for a place, not each caller.
                if self.problem is not None or not self._fits(length) or not self._open_or_wait_in_memory():
                    return self._keep_in_memory(payload)
                offset = self._offset
                end = offset + RECORD_HEAD.size + length
            self._write(payload, offset, end)
            return True

    def _fits(self, length: int) -> bool:
        # A record larger than a file waits in memory; the drainer takes it into the ledger from there.
        return HEADER_SIZE + RECORD_HEAD.size + length <= self.file_size

    def _write(self, payload: bytes, offset: int, end: int) -> None:
        mm = self._mm
        mm[offset + RECORD_HEAD.size : end] = payload
        LENGTH.pack_into(mm, offset + 4, zlib.crc32(payload))
        LENGTH.pack_into(mm, offset, len(payload))  # the commit mark, written last
        self._offset = end

    def _keep_in_memory(self, payload: bytes) -> bool:
        if len(self.memory) < self.memory_records:
            self.memory.append(payload)
        else:
            self.dropped += 1
        return False

    def reopen(self) -> bool:
        """The drainer's retry while records wait in memory: open a file where one can be written now and move them
        there (those that fit a file). True when records go to files again."""
        with self._lock:
            if self.problem is not None and not self._open_or_wait_in_memory():
                return False
            kept = []
            while self.memory and self.problem is None:
                payload = self.memory.popleft()
                if not self._fits(len(payload)):
                    kept.append(payload)
                    continue
                self._memory_taken += 1
                end = self._offset + RECORD_HEAD.size + len(payload)
                if end > self.file_size and not self._open_or_wait_in_memory():
                    self.memory.appendleft(payload)
                    self._memory_taken -= 1
                    break
                self._write(payload, self._offset, self._offset + RECORD_HEAD.size + len(payload))
            self.memory.extendleft(reversed(kept))
            return self.problem is None

    def waiting_in_memory(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` of the oldest records waiting in memory, each with an id no other record has; the drainer
        takes them into the ledger, then :meth:`forget_memory`. Only the drainer removes records from memory."""
        with self._lock:
            first = self._memory_taken
            return [(f"{self.memory_id}:{first + n}", payload) for n, payload in enumerate(islice(self.memory, limit))]

    def forget_memory(self, count: int) -> None:
        """The ``count`` oldest records in memory are in the ledger now."""
        with self._lock:
            for _ in range(count):
                self.memory.popleft()
            self._memory_taken += count

    def retire_drained(self) -> None:
        """Delete files that are wholly drained, but the one being written."""
        with self._lock:
            current = self.files[-1] if self.files and self.problem is None else None
            done = [f for f in self.files if f is not current and next(f.records(), None) is None]
            for journal in done:
                self.files.remove(journal)
        for journal in done:
            journal.close(delete=True)

    def close(self, *, delete: bool) -> None:
        with self._lock:
            files, self.files = self.files, []
            self.problem = "closed"
            self._mm = None
        for journal in files:
            journal.close(delete=delete and next(journal.records(), None) is None)


def _still_named(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``: the usual check after locking a lock file."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def orphaned_journals(directory: str | os.PathLike) -> Iterator[JournalFile]:
    """Journals whose writer is gone (their lock can be taken). The caller replays, then closes with delete."""
    return dead_files(Path(directory), SUFFIX, JournalFile.open, "journal")


def dead_files(directory: Path, suffix: str, open_as: Callable[[Path, int], T], what: str) -> Iterator[T]:
    """The files ``*suffix`` in ``directory`` whose writer is gone (their lock can be taken), each opened, locked, by
    ``open_as(path, fd)``. Journals and in-flight tables are named and locked alike (``<pid>-<id><suffix>``, an
    exclusive ``flock`` held by their writer for its lifetime)."""
    for path in sorted(directory.glob(f"*{suffix}")) if directory.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # another process recovered it first
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer (or a recovery in progress) holds it
        if not _still_named(path, fd):
            os.close(fd)
            continue  # deleted (retired or recovered) between our open and our lock
        try:
            opened = open_as(path, fd)
        except (OSError, ValueError) as error:
            _logger.warning("spendwatch: %s is not a readable %s (%s); leaving it alone", path, what, error)
            os.close(fd)
            continue
        yield opened
