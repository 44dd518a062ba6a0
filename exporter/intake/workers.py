"""Intake workers: processes that read and price OTLP bodies beside ``spendwatch serve``'s own.

One Python process does about one core's work (the interpreter lock), and reading and pricing are over a third of
what a span costs. So serve hands each body to a worker and stores the records it gets back, while the worker reads
the next body: serve's own process only receives, stores and answers. Nothing else changes: the records are the ones
serve would have made (the same function makes them, with the same prices), and serve alone writes the ledger.

Workers start with the first export, not with serve: a serve that takes no spans runs none. Starting one (a new
Python importing spendwatch) takes a second or so, which the first export waits, for at most :data:`START_WAIT_S`. A
body is read in serve's own process, as before workers existed, whenever no worker can take it: still starting after
that wait, died (its process is replaced on the next export), or failed to start (tried again after :data:`RETRY_S`).
So an export is never refused, or lost, for want of a worker. A worker exits when serve does, even when serve is
killed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from spendwatch.exporter.codec import decode_batch, encode_batch
from spendwatch.exporter.intake.handler import read_export
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["IntakeWorkers", "default_worker_count"]

_logger = logging.getLogger(__name__)

START_WAIT_S = 5.0
RETRY_S = 30.0
_MOST_BY_DEFAULT = 2  # serve's own process stores every record: beyond two readers it is the limit anyway
_PARENT_CHECK_S = 1.0


def default_worker_count() -> int:
    """One per CPU this process may run on, less the one serve's own process needs, at most two."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cpus - 1, _MOST_BY_DEFAULT))


class IntakeWorkers:
    """``count`` worker processes reading OTLP bodies with the prices of ``settings`` (its ``price_table()``)."""

    def __init__(self, count: int, settings) -> None:
        self.count = count
        self._settings = settings
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._started: list[concurrent.futures.Future] = []
        self._waited_until = 0.0  # exports wait for starting workers until then, and are read here after it
        self._retry_at = 0.0
        self._closed = False

    def read_export(self, content_type: str, body: bytes) -> tuple[int, list[UsageRecord], int] | None:
        """What :func:`~spendwatch.exporter.intake.handler.read_export` returns, read by a worker; None when no worker
        can take the body now (the caller reads it itself). A malformed body raises as there."""
        pool = self._ready_pool()
        if pool is None:
            return None
        try:
            future = pool.submit(_read_in_worker, content_type, body)
        except BrokenProcessPool:
            return self._worker_died(pool)
        except RuntimeError:  # shut down meanwhile: serve is stopping, or another request replaced a broken pool
            return None
        try:
            total, payload, rejected = future.result()
        except BrokenProcessPool:  # only a worker's death: what the reading itself raises is raised here as is
            return self._worker_died(pool)
        return total, decode_batch(payload), rejected

    def _worker_died(self, pool) -> None:
        _logger.warning("spendwatch: an OTLP intake worker stopped; this export is read in serve's process")
        self._discard(pool, retry_after=0.0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _ready_pool(self) -> concurrent.futures.ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is None and not self._closed and time.monotonic() >= self._retry_at:
                self._start()
            pool, started, waited_until = self._pool, self._started, self._waited_until
        if pool is None:
            return None
        done, waiting = concurrent.futures.wait(started, timeout=max(0.0, waited_until - time.monotonic()))
        if waiting:
            return None
        failed = next((future.exception() for future in done if future.exception() is not None), None)
        if failed is not None:
            _logger.warning("spendwatch: OTLP intake workers could not start (%s); serve reads exports itself", failed)
            self._discard(pool, retry_after=RETRY_S)
            return None
        return pool

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # never a fork of serve's threads and open ledger
        pool = concurrent.futures.ProcessPoolExecutor(
            self.count, mp_context=context, initializer=_start_worker, initargs=(self._settings, os.getpid())
        )
        self._pool, self._started = pool, [pool.submit(_started) for _ in range(self.count)]
        self._waited_until = time.monotonic() + START_WAIT_S

    def _discard(self, pool, *, retry_after: float) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool, self._retry_at = None, time.monotonic() + retry_after
        with contextlib.suppress(Exception):
            pool.shutdown(wait=False, cancel_futures=True)


# --- in the worker process ---------------------------------------------------------------------------------------
_prices = None


def _start_worker(settings, serve_pid: int) -> None:
    global _prices
    # Ctrl-C in a terminal reaches the whole process group: serve stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(serve_pid,), name="spendwatch-intake-parent", daemon=True).start()
    _prices = settings.price_table()


def _exit_with(serve_pid: int) -> None:
    """Exit once serve has: a killed serve never tells its workers, which would wait for work forever."""
    while os.getppid() == serve_pid:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


def _started() -> bool:
    return True


def _read_in_worker(content_type: str, body: bytes) -> tuple[int, bytes, int]:
    total, records, rejected = read_export(content_type, body, _prices)
    return total, encode_batch(records), rejected
