"""``python -m bench --against REV``: spendwatch as committed at a git revision, timed in the same run as the working
tree.

This machine's noise moves a variant's overhead by several µs between runs, more than most optimisations save, so a
before/after comparison across two runs cannot tell. Here the revision's code is one more variant of the same run,
interleaved with the others round by round, and the report gives the median of the per-round paired differences.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import ROOT, variants

__all__ = ["checkout", "specs", "variant_name"]


def specs(names: list[str], against: str | None, cleanup: contextlib.ExitStack) -> list[tuple[str, str, Path]]:
    """``(name in the report, variant, directory to start it in)`` for each of ``names``; with ``against``, spendwatch
    too (what the revision is compared with) and the revision's spendwatch, checked out until ``cleanup`` closes."""
    if against and variants.SPENDWATCH[0] not in names:
        names = [*names, variants.SPENDWATCH[0]]
    chosen = [(name, name, ROOT) for name in names]
    if against:
        chosen.append((variant_name(against), variants.SPENDWATCH[0], cleanup.enter_context(checkout(against))))
    return chosen


def variant_name(rev: str) -> str:
    return f"spendwatch@{rev}"


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A directory to start ``python -m bench.worker spendwatch`` in: there ``import spendwatch`` finds the code of
    ``rev`` (a detached git worktree, laid out as installed) and ``import bench`` this checkout's harness. Removed on
    exit."""
    scratch = Path(tempfile.mkdtemp(prefix="spendwatch-bench-against-"))
    tree, run_dir = scratch / "tree", scratch / "run"
    added = subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=ROOT, capture_output=True, text=True
    )
    if added.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise SystemExit(f"--against {rev}: git worktree add failed: {added.stderr.strip()}")
    try:
        package = run_dir / "spendwatch"
        shutil.copytree(tree / "spendwatch", package)
        for subpackage in _subpackages(tree):
            (package / subpackage).symlink_to(tree / subpackage, target_is_directory=True)
        (run_dir / "bench").symlink_to(ROOT / "bench", target_is_directory=True)
        yield run_dir
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _subpackages(tree: Path) -> list[str]:
    """The folders the revision's pyproject.toml installs as ``spendwatch.X`` (its ``package-dir``)."""
    package_dir = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return [folder for name, folder in package_dir.items() if name.startswith("spendwatch.")]
