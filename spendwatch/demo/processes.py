"""Start local servers as processes, wait until they answer, and stop them by PID.

The demo starts Prometheus and Alertmanager with these helpers, and the tests (``tests/servers.py``) start
PostgreSQL, Prometheus, Alertmanager and spendwatch's own processes with them, so both behave alike. A started
process writes its output to a log file, is stopped with its stop signal and then SIGKILL after a timeout, and also
gets the stop signal when this Python process dies first (``setpriv --pdeathsig``), so nothing is left running.

Waiting polls, with no fixed sleeps: :func:`wait_until` retries a check until it answers, and a server that exits
meanwhile ends the wait at once with its log. :func:`start_on_free_port` picks a free 127.0.0.1 port and tries
another when the chosen one was taken before the server could bind it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "STOP_TIMEOUT",
    "LocalServer",
    "ServerExitedError",
    "ServerProcess",
    "answers_ready",
    "free_port",
    "http_get",
    "start_on_free_port",
    "start_process",
    "wait_until",
]

T = TypeVar("T")

STOP_TIMEOUT = 15.0  # seconds a stopped server gets to exit before SIGKILL
_BIND_RETRIES = 3  # a free port can be taken between free_port() and the server binding it


def free_port(preferred: int = 0) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: ``preferred`` when it is free, else any free one."""
    for port in dict.fromkeys((preferred, 0)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; no fixed sleeps.

    Exceptions from ``predicate`` count as "not yet" (the last one is named in the timeout message), except
    ``ServerExitedError``, which ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ServerExitedError:
            raise
        except Exception as exc:  # anything else means "not ready yet"
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; return (status, body) for any HTTP answer, raise ``OSError`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers_ready(port: int) -> Callable[[], bool]:
    """The readiness check of Prometheus and Alertmanager on ``port``: ``/-/ready`` answers 200."""
    return lambda: http_get(f"http://127.0.0.1:{port}/-/ready", timeout=2)[0] == 200


class ServerExitedError(RuntimeError):
    """The server process exited while we waited for it."""


class ServerProcess:
    """A started server: ``.pid``, ``.stop()`` (signal, wait, SIGKILL on timeout), its output in ``.log_path``."""

    def __init__(self, popen: subprocess.Popen, argv: Sequence[str], log_path: Path, stop_signal: int) -> None:
        self.popen = popen
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, check: Callable[[], Any], timeout: float, what: str) -> None:
        """Poll ``check`` until truthy; fail early, with the log, if the process exits or time runs out."""

        def ready() -> Any:
            if not self.running():
                raise ServerExitedError(
                    f"{what}: process {self.pid} exited with {self.popen.returncode}; log {self.log_path}:\n"
                    + self.log_tail()
                )
            return check()

        try:
            wait_until(ready, timeout, what)
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}; log {self.log_path}:\n{self.log_tail()}") from None
        except ServerExitedError:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Send the stop signal to our PID, wait, then SIGKILL if it has not exited. Idempotent."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __repr__(self) -> str:
        return f"<ServerProcess pid={self.pid} {self.argv[0]} log={self.log_path}>"


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path | str | None = None,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> ServerProcess:
    """Start ``argv`` with stdout and stderr in ``log_path``; return a handle to stop it by PID.

    ``user`` runs it as that (unprivileged) user, which needs root. The process also gets ``stop_signal`` if
    this Python process dies first (``setpriv --pdeathsig``), so a killed run leaves no server behind.
    """
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"{Path(argv[0]).name}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    setpriv = shutil.which("setpriv")
    full_argv = [setpriv, f"--pdeathsig={signal.Signals(stop_signal).name[3:]}", "--", *argv] if setpriv else argv
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            full_argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **kwargs,
        )
    return ServerProcess(popen, argv, log_path, stop_signal)


def start_on_free_port(
    start: Callable[[int], ServerProcess], check: Callable[[int], Callable[[], Any]], what: str, timeout: float
) -> tuple[ServerProcess, int]:
    """Start a server on a fresh free port and wait until ``check(port)`` answers; return it and its port.

    When the server exits because the port was taken meanwhile, it starts again on another port. Otherwise a
    server that exits or is not ready within ``timeout`` seconds is stopped and the error names its log.
    """
    for attempt in range(_BIND_RETRIES):
        port = free_port()
        process = start(port)
        try:
            process.wait_ready(check(port), timeout, f"{what} on 127.0.0.1:{port}")
            return process, port
        except ServerExitedError:
            if attempt + 1 == _BIND_RETRIES or "address already in use" not in process.log_tail().lower():
                raise
    raise AssertionError("unreachable")


@dataclass
class LocalServer:
    """A server process we started and the 127.0.0.1 port it listens on."""

    process: ServerProcess
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``, as a Prometheus target or ``alertmanagers`` static config wants it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()
