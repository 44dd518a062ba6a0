"""The fault-injection harness (issue 20), in the style of SQLite's and TigerBeetle's testing.

Seeded, randomized rounds: app processes make calls through the real ``openai`` SDK under spendwatch against the
local stub and fsync an acknowledgement of each call that returned; faults are injected (kill -9, full and
read-only disks, PostgreSQL restarts and a full PostgreSQL disk, clocks off or stepping across a period's end, the
guard on); then a fresh process compares the acknowledgements and the stub's log with the ledger, holds the guard's
settled spend to its limit, and runs ``spendwatch audit verify``, also after tampering with the ledger.

``make soak ROUNDS=50`` (``python -m tests.faults --rounds 50``) prints the figures table; a failing round names its
seed, and ``make soak SEED=<seed> ROUNDS=1`` plays it again. Needs root (tmpfs mounts) and Debian's postgresql.
"""
