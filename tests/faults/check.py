"""After a round, in a fresh process: bring every journal into the ledger, then hold the ledger to its promises.

``python -m tests.faults.check ROUND_DIR`` reads ``ROUND_DIR/round.json`` (written by :mod:`tests.faults.rounds`),
runs with the round's environment (ledger, state and runtime directories, audit key), and prints one JSON object:

- ``acknowledged``: calls that returned to an app (an answer, a refusal or an error), each fsync'd by the app;
- ``lost``: acknowledged calls with no completed row in the ledger (an interrupted estimate is not the call);
- ``counted_twice``: calls with more than one row;
- ``served_missing``: calls the stub received that have no row at all (a call on the wire when its process died
  must come back as an interrupted, estimated call; an estimate without a trace id makes up for one such call);
- ``overshoot_usd``: the most any day's settled spend went past the daily limit, when the round ran a guard;
- ``audit``: ``spendwatch audit verify --json``'s verdict and exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

INTERRUPTED = "interrupted"  # the error type (or outcome) of the estimate of a call on the wire when its app died
_DRAIN_ATTEMPTS = 20


def acknowledged(acks_dir: Path) -> dict[str, tuple[str, str]]:
    """call id → (outcome, its ack file), from every app's acknowledgement file (a line without its newline was never
    acknowledged: the app died writing it)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(acks_dir.glob("*.acks")):
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n") and " " in line:
                call_id, outcome = line.split(maxsplit=1)
                found[call_id] = (outcome.strip(), path.name)
    return found


def drain_journals(location: str) -> bool:
    """Replay what every process journaled (dead ones included) into the ledger, as a new app process would."""
    from spendwatch.exporter import Ledger, LedgerSink, journal_directory, load_settings, open_backend

    settings = load_settings()
    ledger = Ledger(open_backend(location), settings.timezone)
    sink = LedgerSink(ledger, journal_directory(location), drain_interval=3600)
    try:
        return any(sink.flush() for _ in range(_DRAIN_ATTEMPTS))
    finally:
        sink.close()
        ledger.close()


def journals_left(round_dir: Path) -> dict[str, int]:
    """Journal files still holding undrained records after the drain, anywhere in the round's directories."""
    from spendwatch.exporter.journal import SUFFIX, JournalFile

    left = {}
    for path in sorted(round_dir.rglob(f"*{SUFFIX}")):
        try:
            journal = JournalFile.open(path)
        except (OSError, ValueError) as error:
            left[str(path.relative_to(round_dir))] = f"unreadable: {error}"
            continue
        try:
            count = sum(1 for _ in journal.records())
        finally:
            journal.close()
        if count:
            left[str(path.relative_to(round_dir))] = count
    return left


def ledger_rows(location: str) -> list[tuple]:
    """(trace id, outcome, estimated, cost, day, error type) of every call row."""
    from spendwatch.exporter import open_backend  # where every release exports it

    backend = open_backend(location)
    try:
        return list(backend.select("SELECT trace_id, outcome, estimated, cost_usd, day, error_type FROM calls"))
    finally:
        backend.close()


def audit_verdict() -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "audit", "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        verdict = json.loads(done.stdout)
    except ValueError:
        verdict = {"intact": False, "problem": (done.stdout + done.stderr).strip()[-500:]}
    verdict["exit_status"] = done.returncode
    return verdict


def compare(plan: dict, acks: dict[str, tuple[str, str]], served: set[str], rows: list[tuple]) -> dict:
    """The round's figures from the acknowledgements, the stub's log and the ledger's rows."""
    estimate = [row[5] == INTERRUPTED or row[1] == INTERRUPTED for row in rows]
    rows_per_call = Counter(row[0] for row in rows if row[0])
    completed = {row[0] for row, guessed in zip(rows, estimate, strict=True) if row[0] and not guessed}
    # An interrupted call's estimate may carry no trace id (its in-flight mark holds none): those are only counted.
    anonymous = sum(1 for row, guessed in zip(rows, estimate, strict=True) if guessed and not row[0])
    lost = sorted(call for call in acks if call not in completed)
    twice = sorted(call for call, count in rows_per_call.items() if count > 1)
    missing = sorted(call for call in served if call not in rows_per_call)
    result = {
        "acknowledged": len(acks),
        "served": len(served),
        "rows": len(rows),
        "lost": len(lost),
        "counted_twice": len(twice),
        "served_missing": max(0, len(missing) - anonymous),
        "estimates": sum(estimate),
        "estimates_without_a_served_call": max(0, anonymous - len(missing)),
        "examples": {"lost": lost[:3], "counted_twice": twice[:3], "served_missing": missing[:3]},
        "outcomes": dict(Counter(outcome.split(":")[0] for outcome, _ in acks.values())),
        "lost_by_app": dict(Counter(acks[call][1] for call in lost)),
    }
    limit = plan.get("daily_limit_usd")
    if limit is not None:
        per_day: Counter = Counter()
        for row in rows:
            per_day[row[4]] += row[3] or 0.0
        result["spend_by_day"] = {day: round(spend, 9) for day, spend in sorted(per_day.items())}
        result["overshoot_usd"] = max([spend - limit for spend in per_day.values()] + [0.0])
    return result


def modules_elsewhere() -> list[str]:
    """spendwatch modules this process loaded from outside the revision under test (when the soak runs against
    one): a module the revision lacks falls through to the working tree's editable install, mixing two versions."""
    expected = os.environ.get("SOAK_SPENDWATCH_PATH")
    if not expected:
        return []
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "spendwatch"
        and not (getattr(module, "__file__", None) or expected).startswith(expected)
    )


def main(argv: list[str] | None = None) -> int:
    round_dir = Path((argv or sys.argv[1:])[0])
    plan = json.loads((round_dir / "round.json").read_text())
    drained = drain_journals(plan["ledger"])
    served_file = round_dir / "served.txt"
    served = set(served_file.read_text().split()) if served_file.exists() else set()
    result = compare(plan, acknowledged(round_dir / "acks"), served, ledger_rows(plan["ledger"]))
    result["drained"] = drained
    result["journals_left"] = journals_left(round_dir)
    result["modules_elsewhere"] = modules_elsewhere()
    result["audit"] = audit_verdict()
    (round_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
