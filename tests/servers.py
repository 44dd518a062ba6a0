"""Real servers for the tests: PostgreSQL, Prometheus and Alertmanager, started on 127.0.0.1 and stopped by PID.

Debian's packages provide them (``make test-servers`` installs them as root). A missing binary skips the test
locally and fails it in CI (``CI=true``): CI must never pass by skipping. Nothing here is mocked. Processes start,
wait and stop with the demo's helpers (:mod:`spendwatch.demo.processes`), re-exported here for the tests.

Use from ``tests/conftest.py``::

    from tests.servers import *  # noqa: F403  (every fixture and helper in __all__)

Fixtures: ``postgres_server`` (session; a URL), ``postgres_url`` (a fresh empty database per test),
``postgres_cluster`` (a cluster of the test's own, to stop and start again),
``prometheus_binary``, ``promtool_binary``, ``alertmanager_binary``, ``amtool_binary`` (session; paths),
``prometheus_factory`` and ``alertmanager_factory`` (start servers from a config; stopped after the test).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
import yaml

from spendwatch.demo.processes import (
    LocalServer,
    ServerExitedError,
    ServerProcess,
    answers_ready,
    free_port,
    http_get,
    start_on_free_port,
    start_process,
    wait_until,
)

__all__ = [
    "AlertmanagerServer",
    "PostgresCluster",
    "PrometheusServer",
    "ServerExitedError",
    "ServerProcess",
    "alertmanager_binary",
    "alertmanager_factory",
    "amtool_binary",
    "free_port",
    "http_get",
    "in_ci",
    "postgres_bindir",
    "postgres_cluster",
    "postgres_server",
    "postgres_url",
    "prometheus_binary",
    "prometheus_factory",
    "promtool_binary",
    "require_binary",
    "self_signed_cert",
    "start_process",
    "wait_until",
]

READY_TIMEOUT = 60.0  # seconds; generous for a loaded two-core CI machine (typical: well under 2 s)


# --- helpers -----------------------------------------------------------------------------------------------------


def in_ci() -> bool:
    """True when running in CI, where a missing server is a failure, never a skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_binary(path_or_name: str, package: str) -> str:
    """Return the executable's path, or skip naming the Debian package to install (fail instead in CI)."""
    if os.sep in path_or_name:
        found = path_or_name if os.path.isfile(path_or_name) and os.access(path_or_name, os.X_OK) else None
    else:
        found = shutil.which(path_or_name)
    if found:
        return found
    _missing(f"{path_or_name} not found: install Debian's {package} (`make test-servers` as root)")


def _missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing server is a failure]", pytrace=False)
    pytest.skip(reason)


# --- PostgreSQL --------------------------------------------------------------------------------------------------


def postgres_bindir() -> str | None:
    """The newest PostgreSQL server bin directory (Debian: /usr/lib/postgresql/<major>/bin), else PATH's."""
    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.access(os.path.join(d, "initdb"), os.X_OK)]
    candidates.sort(key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: then run it as Debian's ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _missing("running as root and there is no 'postgres' user to run PostgreSQL: install Debian's postgresql")
    return "postgres"


def _with_dbname(url: str, dbname: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{dbname}").geturl()


def _can_connect(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(url, connect_timeout=2):
            return True

    return check


class PostgresCluster:
    """A private PostgreSQL cluster in ``base``: initdb (trust auth), then ``start()`` and ``stop()`` by PID, as often
    as a test needs; it comes back on the same port, as a server restarted during a deploy does.

    ``postgres`` listens on 127.0.0.1 with its socket in ``base`` and durability off (tests need speed, not crash
    safety); ``stop()`` is a fast shutdown.
    """

    def __init__(self, base: Path) -> None:
        bindir = postgres_bindir() or "/usr/lib/postgresql/<version>/bin"
        initdb = require_binary(os.path.join(bindir, "initdb"), "postgresql")
        self.postgres = require_binary(os.path.join(bindir, "postgres"), "postgresql")
        self.user = _postgres_user()
        self.base, self.data, self.sockets = base, base / "data", base / "sockets"
        self.sockets.mkdir()
        self.process: ServerProcess | None = None
        self.port: int | None = None
        as_user: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            for path in (base, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LC_ALL": "C"}
        argv = [initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N"]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180, **as_user)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start on a free port the first time, on the same port after that."""

        def launch(port: int) -> ServerProcess:
            argv = [self.postgres, "-D", str(self.data), "-h", "127.0.0.1", "-p", str(port), "-k", str(self.sockets)]
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            # SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for every client to disconnect.
            log = self.base / "postgres.log"
            return start_process(argv, log_path=log, env=self.env, user=self.user, stop_signal=signal.SIGINT)

        def check(port: int) -> Callable[[], bool]:
            return _can_connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")

        if self.port is None:
            self.process, self.port = start_on_free_port(launch, check, "PostgreSQL", READY_TIMEOUT)
            return
        self.process = launch(self.port)
        self.process.wait_ready(check(self.port), READY_TIMEOUT, f"PostgreSQL on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL cluster for the session; yields ``postgresql://postgres@127.0.0.1:PORT/spendwatch_test``."""
    # Not pytest's tmp_path: that sits under a root-only directory the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="spendwatch-pg-"))
    try:
        cluster = PostgresCluster(base)
        cluster.start()
        try:
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE spendwatch_test")
            yield cluster.url("spendwatch_test")
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own, started, that the test may stop and start again."""
    base = Path(tempfile.mkdtemp(prefix="spendwatch-pg-"))
    try:
        cluster = PostgresCluster(base)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL to a new, empty database (``test_<n>``) on the session's server, dropped after the test."""
    name = f"test_{next(_database_numbers)}"
    admin = _with_dbname(postgres_server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield _with_dbname(postgres_server, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- Prometheus and Alertmanager -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus", "prometheus")


@pytest.fixture(scope="session")
def promtool_binary() -> str:
    return require_binary("promtool", "prometheus")


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    return require_binary("prometheus-alertmanager", "prometheus-alertmanager")


@pytest.fixture(scope="session")
def amtool_binary() -> str:
    return require_binary("amtool", "prometheus-alertmanager")


@dataclass
class _HttpServer(LocalServer):
    config_path: Path

    def get_json(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}{path}{query}")
        if status != 200:
            raise AssertionError(f"GET {path}{query} -> {status}: {body[:500]!r}")
        return json.loads(body)


class PrometheusServer(_HttpServer):
    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's ``result`` list (``/api/v1/query``)."""
        return self.get_json("/api/v1/query", query=expr)["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        return self.get_json("/api/v1/alerts")["data"]["alerts"]


class AlertmanagerServer(_HttpServer):
    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (``/api/v2/alerts``)."""
        return self.get_json("/api/v2/alerts")


def _write_config(
    config: Path | str | dict | None, default: dict, rule_files: Sequence[Path | str], dest: Path
) -> Path:
    """The config file to run with: ``config`` as is, or with ``rule_files`` added (absolute) in a copy."""
    if isinstance(config, (str, Path)) and not rule_files:
        return Path(config)
    if config is None:
        loaded = default
    elif isinstance(config, dict):
        loaded = dict(config)
    else:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
    if rule_files:
        loaded["rule_files"] = [*loaded.get("rule_files", []), *(str(Path(f).resolve()) for f in rule_files)]
    dest.write_text(yaml.safe_dump(loaded, sort_keys=False))
    return dest


class _Factory:
    """Starts servers for one test and stops them all, by PID, when it ends."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[_HttpServer] = []
        self._numbers = itertools.count(1)

    def workdir(self, kind: str) -> Path:
        path = self.base / f"{kind}-{next(self._numbers)}"
        path.mkdir(parents=True)
        return path

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture
def prometheus_factory(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """``start(config=None, *, rule_files=(), extra_args=())`` → a ready ``PrometheusServer`` (``.url``).

    ``config`` is a path or a dict; None scrapes Prometheus itself every second. ``rule_files`` are added to
    the config. Listens on 127.0.0.1 only, keeps its TSDB in the test's tmp_path, has ``/-/reload`` enabled.
    Ready (``/-/ready``) in well under a second, but Prometheus applies scrape targets and Alertmanager targets
    only ~5 s after start, and resends a firing alert every minute unless given ``--rules.alert.resend-delay=1s``.
    """
    factory = _Factory(tmp_path)

    def start(
        config: Path | str | dict | None = None,
        *,
        rule_files: Sequence[Path | str] = (),
        extra_args: Sequence[str] = (),
    ) -> PrometheusServer:
        work = factory.workdir("prometheus")
        config_path = work / "prometheus.yml"

        def launch(port: int) -> ServerProcess:
            nonlocal config_path
            default = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
            }
            config_path = _write_config(config, default, rule_files, work / "prometheus.yml")
            argv = [
                prometheus_binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={work / 'data'}",
                "--web.enable-lifecycle",
                *extra_args,
            ]
            return start_process(argv, log_path=work / "prometheus.log", cwd=work)

        process, port = start_on_free_port(launch, answers_ready, "Prometheus", READY_TIMEOUT)
        server = PrometheusServer(process, port, config_path)
        factory.servers.append(server)
        return server

    yield start
    factory.stop_all()


@pytest.fixture
def alertmanager_factory(alertmanager_binary: str, tmp_path: Path) -> Iterator[Callable[..., AlertmanagerServer]]:
    """``start(config=None, *, extra_args=())`` → a ready ``AlertmanagerServer`` (``.url``, ``.host_port``).

    ``config`` is a path or a dict; None routes everything to a receiver that does nothing. Clustering is off
    (``--cluster.listen-address=``), the web API listens on 127.0.0.1 only, its data is in the test's tmp_path.
    """
    factory = _Factory(tmp_path)

    def start(config: Path | str | dict | None = None, *, extra_args: Sequence[str] = ()) -> AlertmanagerServer:
        work = factory.workdir("alertmanager")
        default = {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}
        config_path = _write_config(config, default, (), work / "alertmanager.yml")

        def launch(port: int) -> ServerProcess:
            argv = [
                alertmanager_binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                f"--storage.path={work / 'data'}",
                *extra_args,
            ]
            return start_process(argv, log_path=work / "alertmanager.log", cwd=work)

        process, port = start_on_free_port(launch, answers_ready, "Alertmanager", READY_TIMEOUT)
        server = AlertmanagerServer(process, port, config_path)
        factory.servers.append(server)
        return server

    yield start
    factory.stop_all()


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory) -> tuple[str, str]:
    """(certfile, keyfile) of a throwaway certificate for 127.0.0.1, made with the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(keyfile), "-out", str(certfile), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(certfile), str(keyfile)
