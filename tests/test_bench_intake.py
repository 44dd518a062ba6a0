"""``python -m bench.intake --instructions`` counts the instructions of each in-process step of the OTLP intake per
GenAI span: in the range a span's decoding, pricing and storing cost, not the billions a whole process executes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import require_binary

# Counts instructions under valgrind: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parent.parent


def test_each_intake_step_is_counted_per_span(tmp_path):
    require_binary("valgrind", "valgrind")
    out = tmp_path / "intake-instructions.md"
    command = [sys.executable, "-m", "bench.intake", "--instructions", "--out", str(out)]
    done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    rows = {}
    for line in out.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 2 and cells[1].endswith(" k"):
            rows[cells[0]] = float(cells[1].removesuffix(" k").replace(",", ""))
    assert set(rows) == {"decode", "price", "store", "total"}
    for step in ("decode", "price", "store"):
        assert 10 < rows[step] < 1_000, rows  # tens to hundreds of thousands: one span's step, not a whole process
    assert rows["total"] == pytest.approx(rows["decode"] + rows["price"] + rows["store"], abs=0.2)
