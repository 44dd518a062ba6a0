"""The fault-injection harness's short set (issue 20; tests/faults/): one seeded round of each kind of fault, each
checked by a fresh process against the apps' fsync'd acknowledgements, the stub's log, the guard's limit and
``spendwatch audit verify``. ``make soak ROUNDS=…`` runs many more; a failure here names the seed that replays it.

Real everything: app processes calling the stub through the real ``openai`` SDK under spendwatch, kill -9, tmpfs
disks filled up or made read-only (root), a private PostgreSQL stopped, crashed and filled up.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.disks import can_mount
from tests.servers import in_ci, postgres_bindir, require_binary

pytestmark = pytest.mark.slow

# (kind, seed): one round each, seeds picked for a short round with at least one kill -9, spread over SQLite and
# PostgreSQL, opentelemetry-instrument and configure(), with and without spendwatch serve. PostgreSQL restarts and a
# read-only disk are in the guard's rounds (admit: PostgreSQL crashed; block: the SQLite disk read-only).
SHORT_SET = [
    ("kill", 137),  # SQLite, opentelemetry-instrument, serve, 2 kills
    ("disk-full", 168),  # SQLite, the host's disk full for seconds, an app started inside the outage
    ("pg-disk-full", 130),
    ("guard-block", 180),  # SQLite, its directory read-only, a kill
    ("guard-admit", 194),  # PostgreSQL crashed (immediate shutdown) and restarted, a kill
    ("clock-step", 175),  # every clock a second or three before midnight, then stepped
    ("clock-skew", 190),  # PostgreSQL, one host's clock off, serve killed too
    ("tamper", 185),  # PostgreSQL; calls, events, totals and leases (one deleted), each on a copy of the ledger
]


@pytest.fixture(scope="module")
def soak_postgres():
    if not can_mount():
        reason = "the soak mounts tmpfs disks: run as root"
        if in_ci():
            pytest.fail(f"{reason} [CI=true: a missing server is a failure]", pytrace=False)
        pytest.skip(reason)
    require_binary(os.path.join(postgres_bindir() or "/usr/lib/postgresql/<version>/bin", "postgres"), "postgresql")
    from tests.faults.postgres import SoakPostgres

    postgres = SoakPostgres()
    yield postgres
    postgres.close()


@pytest.mark.parametrize(("kind", "seed"), SHORT_SET, ids=[kind for kind, _ in SHORT_SET])
def test_a_seeded_fault_round_keeps_every_promise(soak_postgres, kind, seed):
    from tests.faults.run import run_rounds

    (outcome,) = run_rounds([seed], [kind], postgres=soak_postgres, say=lambda line: None)

    replay = f"python -m tests.faults --seed {seed} --rounds 1 --kinds {kind}"
    assert outcome.passed, f"{outcome.plan.describe()}: {'; '.join(outcome.broken)} (replay: {replay})"
    assert outcome.result["acknowledged"] > 0
