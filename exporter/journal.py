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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JournalWriter", "JournalFile", "orphaned_journals", "SUFFIX"]

_logger = logging.getLogger(__name__)

SUFFIX = ".journal"
MAGIC = b"SWJ1"
HEADER = struct.Struct("<4sQ")  # magic, drained offset
HEADER_SIZE = 64
RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of payload
LENGTH = struct.Struct("<I")
DEFAULT_FILE_SIZE = 4 * 1024 * 1024


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
        try:
            self.mm.close()
        finally:
            os.close(self.fd)
        if delete:
            self.path.unlink(missing_ok=True)


class JournalWriter:
    """This process's journal: ``append`` is the caller's-path write. Thread-safe; rotates to a new file when full."""

    def __init__(self, directory: str | os.PathLike, *, file_size: int = DEFAULT_FILE_SIZE) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.file_size = file_size
        self._lock = threading.Lock()
        self.files: list[JournalFile] = []  # oldest first; the last one is being written
        self._open_new_file()

    def _open_new_file(self) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        building, path = self.directory / f"{name}.building", self.directory / f"{name}{SUFFIX}"
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

    def append(self, payload: bytes) -> None:
        length = len(payload)
        with self._lock:
            offset = self._offset
            end = offset + RECORD_HEAD.size + length
            if end > self.file_size:
                if HEADER_SIZE + RECORD_HEAD.size + length > self.file_size:
                    raise ValueError(f"a journal record of {length} bytes does not fit a journal file")
                self._open_new_file()
                offset = self._offset
                end = offset + RECORD_HEAD.size + length
            mm = self._mm
            mm[offset + RECORD_HEAD.size : end] = payload
            LENGTH.pack_into(mm, offset + 4, zlib.crc32(payload))
            LENGTH.pack_into(mm, offset, length)  # the commit mark, written last
            self._offset = end

    def retire_drained(self) -> None:
        """Delete files that are full and wholly drained (all but the one being written)."""
        with self._lock:
            done = [f for f in self.files[:-1] if next(f.records(), None) is None]
            for journal in done:
                self.files.remove(journal)
        for journal in done:
            journal.close(delete=True)

    def close(self, *, delete: bool) -> None:
        with self._lock:
            files, self.files = self.files, []
        for journal in files:
            journal.close(delete=delete and next(journal.records(), None) is None)


def orphaned_journals(directory: str | os.PathLike) -> Iterator[JournalFile]:
    """Journals whose writer is gone (their lock can be taken). The caller replays, then closes with delete."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # another process recovered it first
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer (or a recovery in progress) holds it
        try:
            journal = JournalFile.open(path, fd)
        except ValueError:
            _logger.warning("spendwatch: %s is not a journal; leaving it alone", path)
            os.close(fd)
            continue
        yield journal
