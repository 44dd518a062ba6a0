"""A process that forks while one of its threads is inside the ledger (a gunicorn master whose drainer is writing
when it forks a worker): the child writes the ledger as any process does. Real SQLite, a real fork."""

from __future__ import annotations

import os
import threading

import pytest

from spendwatch.exporter.ledger.ledger import Ledger


def child_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_and_write_an_event(ledger: Ledger) -> int:
    """Fork; the child keeps an event in the ledger and exits 0, or exits 1 if it cannot. The child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ledger.set_busy_timeout(5)  # "database is locked" after this long: the failure, not a pace
            ledger.add_event("written_by_child", {"pid": os.getpid()})
            code = 0
        finally:
            os._exit(code)
    return child_exit_code(pid)


@pytest.mark.parametrize("ledger_location", ["sqlite"], indirect=True)
def test_a_child_forked_while_a_thread_of_its_parent_writes_the_ledger_can_write_it(ledger):
    inside, leave = threading.Event(), threading.Event()

    def write_slowly():
        with ledger.transaction():
            inside.set()
            leave.wait()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    inside.wait()
    # The writer leaves its transaction a moment after the fork began: a fork waits for it, or happens inside it.
    threading.Timer(0.2, leave.set).start()
    code = fork_and_write_an_event(ledger)
    writer.join()

    assert code == 0
    assert len(ledger.events("written_by_child")) == 1
