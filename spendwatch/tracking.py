"""``spendwatch.track(...)``: record an LLM call (or a batch of them) that no instrumentor covers.

    with spendwatch.track("chat", model="claude-sonnet-4", provider="anthropic") as op:
        reply = my_client.send(prompt)
        op.set_tokens(input=reply.usage.input, output=reply.usage.output)

It gets the same span, ledger row, metrics and budget guard as an instrumented call: the guard is asked on entry
(so ``BudgetExceededError`` comes from the ``with`` line, before your call is made), the call is settled on exit.
Tokens are priced from the bundled prices unless ``op.set_cost(usd)`` says what it cost. An exception leaving the
block is recorded (``error.type``) and re-raised unchanged. Also a decorator, on plain and ``async`` functions.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from opentelemetry.metrics import get_meter
from opentelemetry.trace import get_tracer

from spendwatch.attribution import clean_category
from spendwatch.instrumentation import admission
from spendwatch.instrumentation.calls import Call, CallRecorder, Usage, attach_category, detach_category
from spendwatch.instrumentation.errors import BudgetExceededError, ReportedError
from spendwatch.instrumentation.pricing import price_table_from_env

__all__ = ["track", "TrackedCall"]

_logger = logging.getLogger(__name__)
_recorder: CallRecorder | None = None


def _shared_recorder() -> CallRecorder:
    """The recorder of every tracked call; it prices with the table of ``configure()`` once that has run."""
    global _recorder
    from spendwatch import runtime

    if _recorder is None:
        _recorder = CallRecorder(get_tracer("spendwatch.track"), get_meter("spendwatch.track"), price_table_from_env())
    attached = runtime.current()
    if attached is not None:
        _recorder.prices = attached.prices
    return _recorder


class TrackedCall:
    """What the ``with`` block reports: tokens, a known cost, an error, or a whole batch."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._usage = Usage()
        self._error: tuple[str, str] | None = None

    def set_tokens(self, input: int = 0, output: int = 0, cache_read: int = 0, reasoning: int = 0) -> None:  # noqa: A002
        usage = self._usage
        usage.input_tokens, usage.output_tokens = int(input), int(output)
        usage.cache_read_tokens, usage.reasoning_tokens = int(cache_read), int(reasoning)

    def set_cost(self, usd: float) -> None:
        self._usage.reported_cost_usd = float(usd)

    def set_error(self, type: str, message: str = "") -> None:  # noqa: A002 - DESIGN.md's own names
        """Record the call as failed without raising (the message is kept off the span, like provider errors)."""
        self._error = (str(type), str(message))

    def record_batch(
        self,
        size: int,
        successes: int,
        errors: int,
        *,
        input: int = 0,
        output: int = 0,
        cost_usd: float | None = None,  # noqa: A002
    ) -> None:
        """Report a batch of ``size`` calls at once: its totals become one ledger row counting ``size`` requests."""
        if successes + errors != size:
            raise ValueError(f"a batch of {size} calls cannot have {successes} successes and {errors} errors")
        self.set_tokens(input=input, output=output)
        if cost_usd is not None:
            self.set_cost(cost_usd)
        self._usage.calls, self._usage.failed_calls = size, errors
        self._call.span.set_attributes(
            {"spendwatch.batch.size": size, "spendwatch.batch.successes": successes, "spendwatch.batch.errors": errors}
        )

    def _finish(self, exception: BaseException | None) -> None:
        call = self._call
        call.deactivate()
        if exception is not None:
            call.fail(exception, self._usage)
        elif self._error is not None:
            call.fail(ReportedError(self._error[0]), self._usage)
        else:
            call.succeed(self._usage)


class track:  # noqa: N801 - used like a function: `with spendwatch.track(...)`
    def __init__(
        self,
        operation: str,
        *,
        model: str,
        provider: str = "openai",
        category: str | None = None,
        estimated_input_tokens: int = 0,
        max_output_tokens: int | None = None,
    ) -> None:
        self.operation, self.model, self.provider = operation, model, provider
        self.category = clean_category(category) if category is not None else None
        self.estimate = (estimated_input_tokens, max_output_tokens)
        self._open: list[tuple[TrackedCall, object | None]] = []

    def __enter__(self) -> TrackedCall:
        token = None
        if self.category is not None:
            token = attach_category(self.category)
        call = _shared_recorder().start(self.operation, self.provider, self.model, guarded=True)
        call.activate()
        op = TrackedCall(call)
        self._admit(call)
        call.leaving()
        self._open.append((op, token))
        return op

    def _admit(self, call: Call) -> None:
        guard = admission.current_guard()
        if guard is None:
            return
        input_tokens, max_output = self.estimate
        request = admission.CallRequest(
            self.provider, self.operation, self.model, call.category, input_tokens, max_output, None
        )
        try:
            call.ticket = admission.admit(guard, request)
        except BudgetExceededError as refusal:
            call.deactivate()
            call.fail(refusal)
            raise

    def __exit__(self, exc_type, exception, traceback) -> None:
        op, token = self._open.pop()
        try:
            op._finish(exception)
        except Exception:  # noqa: BLE001 - recording must never replace the caller's own outcome
            _logger.debug("spendwatch: could not record a tracked call", exc_info=True)
        if token is not None:
            detach_category(token)

    async def __aenter__(self) -> TrackedCall:
        return self.__enter__()

    async def __aexit__(self, exc_type, exception, traceback) -> None:
        self.__exit__(exc_type, exception, traceback)

    def __call__(self, function):
        """As a decorator: each call of ``function`` is one tracked call (the op is not reachable from inside)."""
        options = self._options()
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def tracked_async(*args: Any, **kwargs: Any):
                async with track(**options):
                    return await function(*args, **kwargs)

            return tracked_async

        @functools.wraps(function)
        def tracked(*args: Any, **kwargs: Any):
            with track(**options):
                return function(*args, **kwargs)

        return tracked

    def _options(self) -> dict[str, Any]:
        input_tokens, max_output = self.estimate
        return {
            "operation": self.operation,
            "model": self.model,
            "provider": self.provider,
            "category": self.category,
            "estimated_input_tokens": input_tokens,
            "max_output_tokens": max_output,
        }
