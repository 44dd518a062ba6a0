"""spendwatch as committed at a git revision, importable by the rounds' processes (``--against REV``).

A soak takes minutes while the working tree may change under it; against a revision, every app, ``serve`` and the
check import one fixed spendwatch. ``git archive`` extracts the revision, and a directory put first on PYTHONPATH
holds ``spendwatch`` with its subpackages linked in as the installed package maps them (``spendwatch.exporter`` is
``exporter/``, ...), so it wins over the virtualenv's editable install of the working tree.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

# The package-dir mapping of pyproject.toml: import name under spendwatch → top-level directory.
SUBPACKAGES = ("exporter", "instrumentation", "alert_rules", "dashboards")


def snapshot(repo: Path, revision: str, dest: Path) -> Path:
    """Extract ``revision`` under ``dest``; returns the directory to put first on PYTHONPATH."""
    tree, site = dest / "tree", dest / "site"
    tree.mkdir(parents=True)
    site.mkdir()
    archive = dest / "tree.tar"
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), revision], check=True, timeout=120)
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    for name in SUBPACKAGES:
        (tree / "spendwatch" / name).symlink_to(tree / name, target_is_directory=True)
    (site / "spendwatch").symlink_to(tree / "spendwatch", target_is_directory=True)
    return site


def revision_name(repo: Path, revision: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()
