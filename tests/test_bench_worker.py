"""A benchmark worker leaves nothing behind: a full ``python -m bench`` starts one spendwatch+ledger worker per round,
and each used to leave its ledger (megabytes) in the temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def test_the_ledger_worker_removes_its_ledger_when_it_quits(tmp_path):
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.worker", "spendwatch+ledger"],
        cwd=_ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(worker.stdout.readline())["ok"]
        worker.stdin.write(json.dumps({"cmd": "run", "calls": 3, "warmup": 1, "kind": "embeddings"}) + "\n")
        worker.stdin.flush()
        assert json.loads(worker.stdout.readline())["median_ns"]["embeddings"] > 0
        (ledger_directory,) = tmp_path.glob("spendwatch-bench-*")  # where it keeps its ledger while it runs
        assert (ledger_directory / "ledger.db").exists()
        worker.stdin.write('{"cmd": "quit"}\n')
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert list(tmp_path.iterdir()) == []
