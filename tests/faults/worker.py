"""One app process of a fault round: calls the stub through the real ``openai`` SDK under spendwatch, and appends
every call that returned to the app (an answer, a refusal or an error) to its acknowledgement file, fsync'd before
the next call starts. A line is ``<call id> <outcome>``; the call id is the trace id of the app's own span around
the call, which the instrumentation's span (and so the ledger row) shares, and which the stub sees in the
``x-soak-call`` header. A line cut short by a kill has no newline: it was never acknowledged.

``python -m tests.faults.worker --base-url URL --acks FILE [--pause S] [--model M] [--max-tokens N] [--clock FILE]``;
spendwatch is attached by ``spendwatch.configure()`` unless the process runs under ``opentelemetry-instrument``. Runs
until SIGTERM (then exits as an app does, letting spendwatch drain) or SIGKILL.

``--clock FILE`` runs the process on a host whose clock is off: every ``time.time()`` and ``time.time_ns()`` reads
the real clock plus the seconds in FILE, read again on SIGUSR1 (a clock step). It is set before anything imports
spendwatch (whose guard takes ``time.time`` as its default clock at import), so only with ``spendwatch.configure()``.
The database's own clock (PostgreSQL's, SQLite's ``julianday('now')``) stays the real one, as another host's would.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

CALL_HEADER = "x-soak-call"
REFUSED_PAUSE_S = 0.05  # after a refusal: an app backs off rather than spin on a spent budget
_stopping = False


def _stop(signum, frame) -> None:
    global _stopping
    _stopping = True


def _tracing():
    """The app's tracer; an SDK provider (exporting nowhere) unless opentelemetry-instrument set one, so spans have
    ids for the ledger rows to carry."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not hasattr(trace.get_tracer_provider(), "add_span_processor"):
        trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("spendwatch.soak")


def _outcome(error: BaseException | None) -> str:
    import spendwatch

    if error is None:
        return "ok"
    if isinstance(error, spendwatch.BudgetExceededError):
        return f"refused:{getattr(error, 'cause', None) or 'budget'}"
    return f"error:{type(error).__name__}"


def _clock_off_by(path: str) -> None:
    """This process's clock reads ``path``'s seconds off the real one from now on (see the module's docstring)."""
    real_time, real_time_ns = time.time, time.time_ns
    offset = [0.0]

    def load(signum=None, frame=None) -> None:
        with open(path) as file:
            offset[0] = float(file.read())

    load()
    time.time = lambda: real_time() + offset[0]
    time.time_ns = lambda: real_time_ns() + int(offset[0] * 1e9)
    signal.signal(signal.SIGUSR1, load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.worker")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between calls")
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--clock", help="a file holding this host's clock offset in seconds")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.clock:
        _clock_off_by(args.clock)
    acks = os.open(args.acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # exists: ready for SIGUSR1

    tracer = _tracing()
    import openai

    import spendwatch

    spendwatch.configure()  # the same runtime opentelemetry-instrument attached, if it did
    client = openai.OpenAI(api_key="sk-spendwatch-soak", base_url=args.base_url, max_retries=0)
    messages = [{"role": "user", "content": "How much did this call cost?"}]
    while not _stopping:
        with tracer.start_as_current_span("soak call") as span:
            call_id = format(span.get_span_context().trace_id, "032x")
            error = None
            try:
                client.chat.completions.create(
                    model=args.model,
                    messages=messages,
                    max_tokens=args.max_tokens,
                    extra_headers={CALL_HEADER: call_id},
                )
            except openai.OpenAIError as raised:  # a guard refusal is one too
                error = raised
        os.write(acks, f"{call_id} {_outcome(error)}\n".encode())
        os.fsync(acks)
        if args.pause or error is not None:
            time.sleep(max(args.pause, REFUSED_PAUSE_S if error is not None else 0.0))
    os.close(acks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
