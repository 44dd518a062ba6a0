"""``python -m bench --against REV`` times spendwatch as committed at REV in the same run as the working tree: the
baseline's worker must import that revision's code and this checkout's harness, and nothing may be left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import baseline

# Builds the revision's worker and runs the benchmark against it: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parent.parent
_WHERE_FROM = "import bench, spendwatch.instrumentation.calls as c; print(c.__file__); print(bench.__file__)"


def _worktrees() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=_ROOT, capture_output=True, text=True, check=True).stdout


def _revision_before_the_last_change_to(path: str) -> str:
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", path], cwd=_ROOT, capture_output=True, text=True)
    return f"{last.stdout.strip()}~1"


def test_the_baseline_worker_imports_the_revision_and_this_harness():
    # A revision whose calls.py differs from the working tree's: a checkout of the working tree would fail this.
    revision = _revision_before_the_last_change_to("instrumentation/calls.py")
    before = _worktrees()
    with baseline.checkout(revision) as run_dir:
        where = subprocess.run(
            [sys.executable, "-c", _WHERE_FROM], cwd=run_dir, capture_output=True, text=True, check=True
        ).stdout.split()
        calls, bench = (Path(path).resolve() for path in where)
        assert not calls.is_relative_to(_ROOT)  # the worktree's copy, not the installed working tree
        committed = subprocess.run(
            ["git", "show", f"{revision}:instrumentation/calls.py"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert calls.read_text() == committed != (_ROOT / "instrumentation" / "calls.py").read_text()
        assert bench == (_ROOT / "bench" / "__init__.py").resolve()
    assert not run_dir.exists()
    assert _worktrees() == before


def test_the_report_compares_the_working_tree_with_the_revision(tmp_path):
    out = tmp_path / "against.md"
    command = ["-m", "bench", "--rounds", "1", "--calls", "3", "--warmup", "1", "--mem-calls", "0"]
    subprocess.run(
        [sys.executable, *command, "--variants", "spendwatch", "--against", "HEAD", "--out", str(out)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = out.read_text()
    assert "| kind | spendwatch − spendwatch@HEAD µs | spendwatch ÷ spendwatch@HEAD |" in report
    assert report.count("| embeddings |") == 2  # the overhead table and the baseline table (no peers here)
