"""Small disks the harness can fill up and make unwritable: a tmpfs mounted for one round (root only).

A full disk is a ballast file taking every free byte (``fill``), freed again by ``free``. An unwritable directory is
a read-only bind mount of the disk over itself (root ignores permission bits, but not a read-only mount): files
already open stay writable through the mount below, as after a ``chmod``, while nothing can be created or opened
for writing; a plain ``remount,ro`` is refused while any file is open for writing. Teardown puts the disk back as
it was and unmounts it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

BALLAST = ".soak-ballast"


def can_mount() -> bool:
    return os.geteuid() == 0


class SmallDisk:
    """A tmpfs of ``size_mb`` at ``path`` (created), owned by ``owner`` (uid, gid) when given."""

    def __init__(self, path: Path, size_mb: int, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path))
        self.mounted = True
        self.read_only = False
        if owner is not None:
            os.chown(path, *owner)

    @property
    def ballast(self) -> Path:
        return self.path / BALLAST

    def fill(self) -> None:
        """Take every free byte, so the next write that needs a block fails with ENOSPC."""
        free = _free_bytes(self.path)
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):  # another writer took some bytes meanwhile: what is left is taken
                os.posix_fallocate(fd, 0, max(free, 4096))
            while _free_bytes(self.path) > 0:  # the rest, a block at a time
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, 4096)
                except OSError:
                    break
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()

    def make_read_only(self) -> None:
        if not self.read_only:
            _run("mount", "--bind", str(self.path), str(self.path))
            self.read_only = True
            _run("mount", "-o", "remount,bind,ro", str(self.path))

    def make_writable(self) -> None:
        if self.read_only:
            # The read-only bind mount on top, lazily: an app may hold a file it opened through it (a SQLite ledger
            # opened read-only when it could not be written), and keeps it; new opens see the writable disk.
            _run("umount", "-l", str(self.path))
            self.read_only = False

    def restore(self) -> None:
        """Writable, with its space back: how the round leaves it for the check."""
        self.make_writable()
        self.free()

    def unmount(self) -> None:
        if self.mounted:
            self.make_writable()
            _run("umount", "-l", str(self.path))
            self.mounted = False


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
