"""A small disk a test can fill up or make read-only: a tmpfs of its own, mounted for one test (root only).

The fault harness (``tests/faults/disks.py``) has its own, which also stays usable while an app holds files open on
it (a read-only bind mount rather than a remount)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import in_ci

__all__ = ["SmallDisk", "small_disk"]


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path``: ``fill()`` leaves no byte free, ``free()`` gives the space back."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.filler = path / "filler"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True
        )
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}"
            pytest.fail(reason) if in_ci() else pytest.skip(reason)

    def fill(self) -> None:
        stats = os.statvfs(self.path)
        with open(self.filler, "ab") as file:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size + stats.f_bavail * stats.f_frsize)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def small_disk() -> Iterator[Callable[[str], SmallDisk]]:
    """``small_disk(size)`` mounts a new :class:`SmallDisk`; each is unmounted after the test."""
    disks: list[SmallDisk] = []

    def mount(size: str) -> SmallDisk:
        # Not pytest's tmp_path: the postgres user cannot enter it (a tablespace on the disk).
        disks.append(SmallDisk(Path(tempfile.mkdtemp(prefix="spendwatch-small-disk-")), size))
        return disks[-1]

    yield mount
    for disk in disks:
        disk.unmount()
        disk.path.rmdir()
