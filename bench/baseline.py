"""``python -m bench --against REV``: spendwatch as committed at a git revision, timed in the same run as the working
tree.

This machine's noise moves a variant's overhead by several µs between runs, more than most optimisations save, so a
before/after comparison across two runs cannot tell. Here the revision's code is one more variant of the same run,
interleaved with the others round by round, and the report gives the median of the per-round paired differences.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["checkout", "variant_name"]

_ROOT = Path(__file__).resolve().parent.parent
# pyproject.toml's package-dir: these top-level folders are installed as subpackages of spendwatch.
_SUBPACKAGES = ("instrumentation", "exporter")


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
        ["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=_ROOT, capture_output=True, text=True
    )
    if added.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise SystemExit(f"--against {rev}: git worktree add failed: {added.stderr.strip()}")
    try:
        package = run_dir / "spendwatch"
        shutil.copytree(tree / "spendwatch", package)
        for subpackage in _SUBPACKAGES:
            (package / subpackage).symlink_to(tree / subpackage, target_is_directory=True)
        (run_dir / "bench").symlink_to(_ROOT / "bench", target_is_directory=True)
        yield run_dir
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=_ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
