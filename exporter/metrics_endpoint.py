"""This process's share of the ``/metrics`` address, which the processes of one deployment have in common.

Usage::

    endpoint = MetricsEndpoint(registry, settings)   # serves if the address is free, else waits for it
    endpoint.serving, endpoint.holder, endpoint.url
    ...
    endpoint.stop()

Every process of a deployment (uvicorn's or gunicorn's workers, a second script on the host) has the same default
address, and ``/metrics`` is a view over the shared ledger's running totals, so one server shows every process's
calls: the first process to bind the address serves it, and the others record into the ledger as usual. A process
that found the address taken is not stopped (a busy port is the environment, not a mistake in its configuration):
it says once who holds the address (at INFO when that is spendwatch over the same ledger, so an N-worker server
prints nothing; else a WARNING naming the address and what to do), then tries every ``TAKEOVER_INTERVAL_S`` to take
the address over, so ``/metrics`` stays up while any process lives (gunicorn recycling the worker that held it).

A forked child leaves its parent's server to the parent (see :mod:`spendwatch.exporter.server`) and waits for the
address like any other process, without a word: its parent is the holder.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass

from spendwatch.exporter.ledger import shown_location
from spendwatch.exporter.server import (
    LEDGER_HEADER,
    PID_HEADER,
    AddressInUseError,
    MetricsServer,
    ledger_fingerprint,
    metrics_url,
    server_options,
    try_start,
)

__all__ = ["TAKEOVER_INTERVAL_S", "Holder", "MetricsEndpoint", "identify_holder"]

_logger = logging.getLogger(__name__)

# Often enough that a scrape every 15 s rarely misses a recycled holder; a failed bind costs microseconds.
TAKEOVER_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Holder:
    """Who answers at a ``/metrics`` address: ``kind`` is ``same ledger``, ``other ledger``, ``not spendwatch`` or
    ``no answer``; ``pid`` the serving process when it is spendwatch; ``detail`` why nothing answered."""

    kind: str
    pid: int | None = None
    detail: str = ""

    def describe(self) -> str:
        process = f"process {self.pid}" if self.pid is not None else "a process"
        return {
            "same ledger": f"spendwatch ({process}) over the same ledger",
            "other ledger": f"spendwatch ({process}) over another ledger",
            "not spendwatch": "another program",
        }.get(self.kind, f"something that does not answer ({self.detail})")


def identify_holder(url: str, settings) -> Holder:
    """Ask ``url`` (with the configured credentials, trusting the configured certificate) who serves it."""
    request = urllib.request.Request(url)
    if settings.metrics_basic_auth is not None:
        token = base64.b64encode(":".join(settings.metrics_basic_auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S, context=_trusting(settings)) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:
        headers = error.headers
    except (OSError, ssl.SSLError, ValueError) as error:
        return Holder("no answer", detail=str(getattr(error, "reason", error)) or type(error).__name__)
    fingerprint, pid = headers.get(LEDGER_HEADER), headers.get(PID_HEADER, "")
    if fingerprint is None:
        return Holder("not spendwatch")
    same = fingerprint == ledger_fingerprint(settings.ledger)
    return Holder("same ledger" if same else "other ledger", int(pid) if pid.isdigit() else None)


def _trusting(settings) -> ssl.SSLContext | None:
    if not settings.metrics_tls_certfile:
        return None
    context = ssl.create_default_context(cafile=settings.metrics_tls_certfile)
    context.check_hostname = False  # the address is our own; the certificate chain is what identifies the server
    return context


class MetricsEndpoint:
    """Serves ``registry`` at the configured address when it is free, else waits for it in a daemon thread."""

    def __init__(self, registry, settings, *, retry_interval: float = TAKEOVER_INTERVAL_S) -> None:
        self._registry = registry
        self._settings = settings
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reported = threading.Event()
        self.holder: Holder | None = None  # who serves instead of this process, once known
        self.server: MetricsServer | None = None
        self.url = metrics_url(settings.metrics_address, tls=bool(settings.metrics_tls_certfile))
        try:
            self._adopt(try_start(registry, settings.metrics_address, **server_options(settings)))
        except AddressInUseError as busy:
            self._wait_for_address(str(busy), report=True)
        else:
            self._reported.set()
        _endpoints.add(self)

    @property
    def serving(self) -> bool:
        """Whether this process serves ``/metrics`` now."""
        return self.server is not None

    def stop(self) -> None:
        """Stop serving, or stop waiting for the address. Start-up did not wait to learn who holds the address; a
        process that ends this soon waits for the answer (milliseconds, at most ``PROBE_TIMEOUT_S``), so its one
        line about it is not lost."""
        self._reported.wait(PROBE_TIMEOUT_S)
        with self._lock:
            self._stopped.set()
            server, self.server = self.server, None
        if server is not None:
            server.stop()

    def _adopt(self, server: MetricsServer) -> None:
        self.server, self.url, self.holder = server, server.url, None

    def _wait_for_address(self, why: str, *, report: bool) -> None:
        watcher = threading.Thread(target=self._watch, args=(why, report), name="spendwatch-metrics-takeover")
        watcher.daemon = True
        watcher.start()

    def _watch(self, why: str, report: bool) -> None:
        try:
            if report:
                try:
                    self._report_holder(why)
                finally:
                    self._reported.set()
            while not self._stopped.wait(self._retry_interval):
                if self._take_over():
                    return
        except Exception:  # noqa: BLE001 - the app goes on; the address stays with whoever holds it
            _logger.debug("spendwatch: waiting for the /metrics address failed", exc_info=True)

    def _take_over(self) -> bool:
        try:
            server = try_start(self._registry, self._settings.metrics_address, **server_options(self._settings))
        except AddressInUseError:
            return False
        with self._lock:
            if self._stopped.is_set():  # stopped while binding: do not leave a server behind
                server.stop()
                return True
            self._adopt(server)
        _logger.info("spendwatch: this process (%d) now serves %s", os.getpid(), server.url)
        return True

    def _report_holder(self, why: str) -> None:
        holder = identify_holder(self.url, self._settings)
        self._log_holder(holder, why)
        self.holder = holder

    def _log_holder(self, holder: Holder, why: str) -> None:
        if holder.kind == "same ledger":
            _logger.info("spendwatch: %s is served by %s; this process's calls show there", self.url, holder.describe())
            return
        where = shown_location(self._settings.ledger)
        _logger.warning(
            "spendwatch: %s (held by %s). This process's calls are recorded in the ledger %s as usual, but do not "
            "show there: give this app its own SPENDWATCH_METRICS_ADDRESS (or off), or serve its ledger with "
            "`spendwatch serve --address HOST:PORT`. This process serves the address if it becomes free.",
            why,
            holder.describe(),
            where,
        )

    def _after_fork_in_child(self) -> None:
        # The parent's server thread and watcher did not come along, and either may have held these locks.
        self._lock, stopped, self._stopped = threading.Lock(), self._stopped.is_set(), threading.Event()
        self._reported = threading.Event()
        self._reported.set()  # the parent reported, or is reporting; the child has nothing to add
        if stopped:
            self._stopped.set()
            return
        if self.server is not None:
            self.server, self.holder = None, Holder("same ledger", os.getppid())
        self._wait_for_address("", report=False)


_endpoints: weakref.WeakSet[MetricsEndpoint] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for endpoint in list(_endpoints):
        endpoint._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
