"""The soak's PostgreSQL: one private cluster (initdb'd as tests/servers.py does) for a whole run, its data on a small
tmpfs so a round can fill its disk; a fresh database per round. Restarts are fast (SIGINT) or immediate (SIGQUIT:
no checkpoint, crash recovery at the next start), as a deploy or a crashed server does.

Unlike the tests' clusters it commits synchronously: with ``synchronous_commit=off`` an immediate shutdown loses
transactions PostgreSQL had already reported committed, which no client can defend against. ``fsync`` stays off:
the operating system does not crash here, so what PostgreSQL wrote survives its own crash."""

from __future__ import annotations

import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from spendwatch.demo.processes import ServerProcess, start_on_free_port, start_process
from tests.faults.disks import SmallDisk
from tests.servers import READY_TIMEOUT, PostgresCluster

DISK_MB = 160  # initdb takes ~40 MB; each round's database a few more, dropped after the round
STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class SoakPostgres:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="spendwatch-soak-pg-"))
        self.base.chmod(0o755)  # the postgres user must reach its data directory inside
        user = pwd.getpwnam("postgres")
        self.disk = SmallDisk(self.base / "disk", DISK_MB, owner=(user.pw_uid, user.pw_gid))
        self.process: ServerProcess | None = None
        self.port: int | None = None
        try:
            self.cluster = PostgresCluster(self.disk.path)
            self.start()
        except BaseException:
            self.close()
            raise

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def launch(self, port: int) -> ServerProcess:
        cluster = self.cluster
        argv = [cluster.postgres, "-D", str(cluster.data), "-h", "127.0.0.1", "-p", str(port)]
        argv += ["-k", str(cluster.sockets), "-c", "fsync=off", "-c", "synchronous_commit=on"]
        log = self.base / "postgres.log"
        return start_process(argv, log_path=log, env=cluster.env, user=cluster.user, stop_signal=signal.SIGINT)

    def start(self) -> None:
        """On a free port the first time, on the same port after that (as a restarted server comes back)."""
        if self.port is None:
            self.process, self.port = start_on_free_port(self.launch, self._answers, "PostgreSQL", READY_TIMEOUT)
            return
        self.process = self.launch(self.port)
        self.process.wait_ready(self._answers(self.port), READY_TIMEOUT, f"PostgreSQL on 127.0.0.1:{self.port}")

    @staticmethod
    def _answers(port: int):
        def check() -> bool:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
                return True

        return check

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.ensure_running()
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self, mode: str = "fast") -> None:
        process = self.process
        if process is not None and process.running():
            process.popen.send_signal(STOP_SIGNALS[mode])
            try:
                process.popen.wait(60)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(60)

    def ensure_running(self) -> None:
        """Started again if it is down (stopped by a round, or crashed on a full disk)."""
        if not self.running():
            self.start()

    def close(self) -> None:
        self.stop()
        self.disk.unmount()  # lazily, so a server that would not die cannot keep it mounted
        shutil.rmtree(self.base, ignore_errors=True)
