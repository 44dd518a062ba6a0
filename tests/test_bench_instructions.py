"""``python -m bench.instructions`` counts only the marked batches: a variant's instructions over the bare call come
out per call, in the range a span costs, not the billions a whole process executes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import instructions, variants
from tests.servers import require_binary

# Counts instructions under valgrind: make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parent.parent


def _row(report: str, kind: str) -> list[str]:
    (line,) = [line for line in report.splitlines() if line.startswith(f"| {kind} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_span_floor_is_counted_per_call_over_the_bare_call(tmp_path):
    require_binary("valgrind", "valgrind")
    out = tmp_path / "instructions.md"
    command = [
        "-m",
        "bench.instructions",
        "--variants",
        "span-floor",
        "--calls",
        "3",
        "--warmup",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run([sys.executable, *command], cwd=_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    report = out.read_text()
    assert "| kind | bare per call | span-floor over bare | span-floor ÷ lightest peer |" in report
    for kind in ("chat", "chat async", "chat stream", "responses", "embeddings"):
        _, bare, span_floor, ratio = _row(report, kind)
        assert 1_000 < float(bare.removesuffix(" k")) < 100_000  # 1–100 million instructions: one call
        assert 100 < float(span_floor.removesuffix(" k")) < 1_000  # a span: hundreds of thousands
        assert ratio == "—"  # no peer in this run


def _outcome(kinds: dict[str, float], spans: float = 1.0, version: str = "1.0") -> dict:
    versions = {"python": "3.11.7", "openai": "3.57.0", "variant": version}
    return {"ok": True, "versions": versions, "kinds": list(kinds), "instructions": kinds,
            "spans_per_call": dict.fromkeys(kinds, spans)}  # fmt: skip


def test_the_report_gives_ratios_to_the_lightest_peer_that_instruments_the_kind_and_to_the_revision():
    outcomes = {
        variants.BARE: _outcome({"chat": 1_000_000, "responses": 1_000_000}),
        "openai-v2": {
            **_outcome({"chat": 1_400_000, "responses": 1_000_000}),
            "spans_per_call": {"chat": 1, "responses": 0},
        },
        "openllmetry": _outcome({"chat": 1_500_000, "responses": 1_800_000}, version="0.62"),
        "spendwatch": _outcome({"chat": 1_200_000, "responses": 1_300_000}, version="0.1"),
        "spendwatch@abc123": _outcome({"chat": 1_250_000, "responses": 1_300_000}),
        "openllmetry-nocontent": {"ok": False, "error": "not installed"},
    }
    report = instructions.markdown(outcomes, "python -m bench.instructions", 100, "spendwatch@abc123")

    assert _row(report, "chat")[-3:] == ["0.50", "0.62", "0.80"]  # ÷ openai-v2 (400 k), then spendwatch ÷ the revision
    assert _row(report, "responses")[2] == "n/a"  # openai-v2 makes no Responses span
    assert _row(report, "responses")[-3:] == ["0.38", "0.38", "1.00"]  # ÷ openllmetry (800 k)
    assert "- openllmetry-nocontent: not installed" in report
    assert "Versions: python 3.11.7, openai 3.57.0; openai-v2 1.0, openllmetry 0.62, spendwatch 0.1" in report
