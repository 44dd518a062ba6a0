"""One seeded fault round: plan it from its seed, run it, check it in a fresh process, and say which promise broke.

A round starts N app processes (:mod:`tests.faults.worker`) under spendwatch against the local OpenAI stub, with
``spendwatch serve`` over the same ledger in some rounds, and plays a timeline of faults drawn from the seed (see
:mod:`tests.faults.kinds`). Then it puts the world back (disks writable and with room, PostgreSQL up), stops the
apps as an orchestrator does (SIGTERM), and runs :mod:`tests.faults.check` in a fresh process. Only the timeline is
seeded: when a kill lands inside a call depends on the machine, so a seed reproduces the round's faults, not its
every interleaving.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spendwatch.demo.processes import ServerProcess, free_port, start_process, wait_until
from tests.faults.clock import clock_file, prepare_clocks
from tests.faults.disks import SmallDisk
from tests.faults.worker import CALL_HEADER

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT_ENV = "SOAK_SPENDWATCH_PATH"
AUDIT_KEY = "spendwatch-soak-audit-key-0123456789abcdef"
OVERSHOOT_TOLERANCE_USD = 1e-9  # float sums of costs, nothing more
READY_TIMEOUT = 300.0  # seconds for the apps' first calls (imports and start-up on a loaded two-core machine)
WORKER_STOP_TIMEOUT = 120.0  # seconds an app gets to drain and exit after SIGTERM (a loaded machine)


@dataclass
class Plan:
    """Everything a round does, drawn from its seed (``kinds.plan_round``)."""

    seed: int
    kind: str
    backend: str = "sqlite"  # or "postgresql"
    workers: int = 2
    duration_s: float = 4.0
    pause_s: float = 0.0
    reply_delay_s: float = 0.0
    launcher: str = "configure"  # or "instrument" (opentelemetry-instrument)
    serve: bool = False
    # On one small tmpfs, as on a host's one disk: the SQLite ledger's directory and the state directory (journals of a
    # PostgreSQL ledger, fallbacks); $XDG_RUNTIME_DIR (a tmpfs of its own on a real host) stays off it, or is unset.
    disk: bool = False
    disk_mb: int = 64  # room for several apps' 4 MiB journals and in-flight tables, until the ballast takes the rest
    runtime_dir: bool = True
    events: list[tuple[float, str, float]] = field(default_factory=list)  # (seconds in, action, a random draw)
    guard: dict | None = None  # {"on_ledger_error", "daily_limit_usd", "allowance_usd", "lease_ttl_s"}
    clock: dict | None = None  # {"kind": "skew", "slot", "ahead_s"} or {"kind": "midnight", "before_s"}
    tamper: list[str] = field(default_factory=list)

    def describe(self) -> str:
        actions = sorted({action for _, action, _ in self.events})
        parts = [self.kind, self.backend, f"{self.workers} workers", self.launcher, f"{len(self.events)} events"]
        parts += [f"({', '.join(actions)})"] if actions else []
        parts += ["serve"] if self.serve else []
        parts += [f"guard {self.guard['on_ledger_error']}"] if self.guard else []
        return " ".join(parts)


@dataclass
class Outcome:
    plan: Plan
    result: dict
    broken: list[str]

    @property
    def passed(self) -> bool:
        return not self.broken


class Round:
    """The processes, disks and directories of one round; ``run()`` plays it and returns its Outcome."""

    def __init__(self, plan: Plan, base: Path, stub, postgres=None, *, spendwatch_path: Path | None = None) -> None:
        self.plan, self.stub, self.postgres = plan, stub, postgres
        # PYTHONPATH of every process the round starts: spendwatch at a revision first, when the run is against one.
        self.pythonpath = f"{spendwatch_path}:{REPO}" if spendwatch_path else str(REPO)
        self.spendwatch_path = spendwatch_path
        self.rng = random.Random(f"run-{plan.seed}")
        self.dir = base / f"round-{plan.seed}"
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ("acks", "logs", "run"):
            (self.dir / sub).mkdir(parents=True)
        os.chmod(self.dir / "run", 0o700)
        self.home = self.dir / "disk"  # the ledger's and the state directory's filesystem
        self.disk: SmallDisk | None = None
        self.database: str | None = None
        self.workers: list[ServerProcess] = []
        self.exits: list[str] = []  # workers that exited without being told to
        self.serve: ServerProcess | None = None
        self.started = 0

    # --- set-up ------------------------------------------------------------------------------------------------
    def environment(self, slot: int = 0) -> dict[str, str]:
        """The environment of the round's processes (an app's slot names its service)."""
        plan = self.plan
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "PYTHONPATH": self.pythonpath,  # and every process runs in the round's directory: no spendwatch in its cwd
            "XDG_STATE_HOME": str(self.home / "state"),
            "SPENDWATCH_LEDGER": self.ledger,
            "SPENDWATCH_AUDIT_KEY": AUDIT_KEY,
            "SPENDWATCH_METRICS_ADDRESS": "off",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai",  # spendwatch's OpenAI instrumentation, not openai-v2
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_SERVICE_NAME": f"soak-{slot}",
        }
        if plan.runtime_dir:
            env["XDG_RUNTIME_DIR"] = str(self.dir / "run")
        if self.spendwatch_path:
            env[SNAPSHOT_ENV] = str(self.spendwatch_path)  # the check makes sure every module came from there
        if plan.guard:
            env["SPENDWATCH_ENFORCE"] = "block"
            env["SPENDWATCH_DAILY_BUDGET_USD"] = repr(plan.guard["daily_limit_usd"])
            env["SPENDWATCH_CONFIG"] = str(self.dir / "spendwatch.toml")
        return env

    def prepare(self) -> None:
        plan = self.plan
        if plan.disk:
            self.disk = SmallDisk(self.home, plan.disk_mb)
        for sub in ("ledger", "state"):
            (self.home / sub).mkdir(parents=True)
        if plan.backend == "postgresql":
            self.database = f"soak_{plan.seed}"
            self.postgres.ensure_running()
            self.postgres.drop_database(self.database)
            self.ledger = self.postgres.create_database(self.database)
        else:
            self.ledger = str(self.home / "ledger" / "ledger.db")
        if plan.guard:
            guard = plan.guard
            lines = ["[guard]", f'on_ledger_error = "{guard["on_ledger_error"]}"']
            lines.append(f"lease_ttl_s = {guard['lease_ttl_s']}")
            if guard.get("allowance_usd") is not None:
                lines.append(f"outage_allowance_usd = {guard['allowance_usd']!r}")
            (self.dir / "spendwatch.toml").write_text("\n".join(lines) + "\n")
        if plan.clock:
            prepare_clocks(self)
        self.stub.reset()
        self.stub.reply_delay_s = plan.reply_delay_s

    # --- processes ---------------------------------------------------------------------------------------------
    def start_worker(self, slot: int) -> None:
        self.started += 1
        number = self.started
        argv = [sys.executable, "-m", "tests.faults.worker", "--base-url", self.stub.base_url]
        acks = self.dir / "acks" / f"w{number}.acks"
        argv += ["--acks", str(acks), "--pause", repr(self.plan.pause_s)]
        if self.plan.clock:
            argv += ["--clock", str(clock_file(self, slot))]
        if self.plan.launcher == "instrument":
            argv = [str(Path(sys.executable).with_name("opentelemetry-instrument")), *argv]
        log = self.dir / "logs" / f"w{number}.log"
        process = start_process(argv, log_path=log, cwd=self.dir, env=self.environment(slot))
        process.slot, process.acks_path = slot, acks
        self.workers.append(process)

    def start_serve(self) -> None:
        argv = [sys.executable, "-m", "spendwatch.cli", "serve", "--address", f"127.0.0.1:{free_port()}"]
        self.serve = start_process(argv, log_path=self.dir / "logs" / "serve.log", cwd=self.dir, env=self.environment())

    def live_workers(self) -> list[ServerProcess]:
        for process in self.workers:
            if not process.running() and not getattr(process, "killed", False) and not getattr(process, "noted", 0):
                process.noted = 1
                self.exits.append(f"{process.log_path.name} exited with {process.popen.returncode}")
        return [process for process in self.workers if process.running()]

    def kill_worker(self, draw: float) -> None:
        live = self.live_workers()
        if live:
            victim = live[int(draw * len(live))]
            victim.killed = True
            victim.popen.send_signal(signal.SIGKILL)
            victim.popen.wait()
            self.start_worker(victim.slot)  # the orchestrator starts a replacement

    def kill_serve(self, draw: float) -> None:
        if self.serve is not None:
            self.serve.popen.send_signal(signal.SIGKILL)
            self.serve.popen.wait()
            self.start_serve()

    # --- the round ---------------------------------------------------------------------------------------------
    def perform(self, action: str, draw: float) -> None:
        from tests.faults.kinds import ACTIONS

        ACTIONS[action](self, draw)

    def restore(self) -> None:
        if self.disk is not None:
            self.disk.restore()
        if self.postgres is not None:
            self.postgres.disk.restore()
            self.postgres.ensure_running()

    def stop_all(self) -> None:
        self.live_workers()
        for process in self.workers:
            if process.running():
                process.killed = True  # told to stop: not an unexpected exit
                process.popen.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.popen.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.exits.append(f"{process.log_path.name} did not exit after SIGTERM")
                process.popen.kill()
                process.popen.wait()
            if process.popen.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):  # SIGTERM before its handler
                self.exits.append(f"{process.log_path.name} exited with {process.popen.returncode} after SIGTERM")
        if self.serve is not None:
            self.serve.stop()

    def run(self) -> Outcome:
        plan = self.plan
        self.prepare()
        try:
            for slot in range(plan.workers):
                self.start_worker(slot)
            if plan.serve:
                self.start_serve()
            self.wait_for_first_calls()
            began = time.monotonic()
            for at, action, draw in sorted(plan.events):
                time.sleep(max(0.0, began + at - time.monotonic()))
                self.perform(action, draw)
                self.live_workers()
            time.sleep(max(0.0, began + plan.duration_s - time.monotonic()))
            self.restore()
            self.stop_all()
            self.write_served()
            result = self.check()
            result["worker_exits"] = self.exits
            result["processes"] = self.started
            from tests.faults.tamper import tamper_and_verify

            if plan.tamper:
                result["tampering"] = tamper_and_verify(self, plan.tamper)
            outcome = Outcome(plan, result, broken_promises(plan, result))
            record = {"plan": asdict(plan), "result": result, "broken": outcome.broken}
            (self.dir / "outcome.json").write_text(json.dumps(record, indent=2))
            if not outcome.passed:
                self.keep_ledger()
            return outcome
        finally:
            self.teardown()

    def wait_for_first_calls(self) -> None:
        """The timeline starts once every app has made a call: start-up takes seconds on a loaded machine."""
        acks = [self.dir / "acks" / f"w{number}.acks" for number in range(1, self.started + 1)]

        def ready() -> bool:
            self.live_workers()
            return all(path.exists() and path.stat().st_size for path in acks) or bool(self.exits)

        wait_until(ready, READY_TIMEOUT, "every app's first call")

    def write_served(self) -> None:
        served = {request["headers"].get(CALL_HEADER) for request in self.stub.requests}
        (self.dir / "served.txt").write_text("\n".join(sorted(call for call in served if call)) + "\n")

    def check(self) -> dict:
        plan = {"ledger": self.ledger, "daily_limit_usd": (self.plan.guard or {}).get("daily_limit_usd")}
        (self.dir / "round.json").write_text(json.dumps({**plan, "plan": asdict(self.plan)}))
        done = subprocess.run(
            [sys.executable, "-m", "tests.faults.check", str(self.dir)],
            cwd=self.dir,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            return {"check_failed": (done.stdout + done.stderr).strip()[-2000:]}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def keep_ledger(self) -> None:
        """The ledger's calls, for a round that broke a promise: its disk or database goes at teardown."""
        from spendwatch.exporter import open_backend

        with contextlib.suppress(Exception):
            backend = open_backend(self.ledger)
            try:
                rows = backend.select("SELECT id, trace_id, outcome, error_type, estimated, cost_usd, day FROM calls")
            finally:
                backend.close()
            (self.dir / "calls.json").write_text(json.dumps(rows))

    def teardown(self) -> None:
        for process in self.workers:
            if process.running():
                process.popen.kill()
                process.popen.wait()
        if self.serve is not None and self.serve.running():
            self.serve.popen.kill()
            self.serve.popen.wait()
        if self.disk is not None:
            with contextlib.suppress(Exception):
                self.disk.unmount()
        if self.database is not None:
            with contextlib.suppress(Exception):
                self.postgres.drop_database(self.database)


def broken_promises(plan: Plan, result: dict) -> list[str]:
    """Each promise the round's result breaks, in a few words."""
    if "check_failed" in result:
        return [f"the check itself failed: {result['check_failed'][-300:]}"]
    broken = []
    if result.get("modules_elsewhere"):
        broken.append(f"the revision under test lacks modules it imports: {result['modules_elsewhere'][:3]}")
    for key, what in (("lost", "lost"), ("counted_twice", "counted twice"), ("served_missing", "served but missing")):
        if result.get(key):
            broken.append(f"{result[key]} {what} (e.g. {result['examples'][key][:1]})")
    if not result.get("acknowledged"):
        broken.append("no call was acknowledged: the round tested nothing")
    if not result["audit"].get("intact"):
        broken.append(f"audit verify failed: {result['audit'].get('problem')}")
    if plan.guard is not None:
        allowed = OVERSHOOT_TOLERANCE_USD
        if plan.guard["on_ledger_error"] == "admit":
            allowed += plan.guard["allowance_usd"] * result.get("processes", 1)  # per process and period
        if result.get("overshoot_usd", 0.0) > allowed:
            broken.append(f"overshoot ${result['overshoot_usd']:.6f} (allowed ${allowed:.6f})")
    broken += [f"app process: {exit}" for exit in result.get("worker_exits", [])]
    tampering = dict(result.get("tampering") or {})
    if tampering and not tampering.pop("control"):
        broken.append("the untouched ledger did not verify after spendwatch reprice")
    missed = [how for how, caught in tampering.items() if caught is False]
    if missed:
        broken.append(f"tampering not detected: {', '.join(missed)}")
    return broken
