"""Errors spendwatch raises on purpose."""

import math
import threading

__all__ = ["BudgetExceededError", "ConfigError", "ReportedError", "as_sdk_error", "refusal_class"]


class ConfigError(SystemExit):
    """Bad configuration, said in one sentence that names the setting and its value.

    A ``SystemExit`` on purpose: ``opentelemetry-instrument`` logs and swallows an instrumentor's ordinary
    exceptions, and bad configuration must stop the app at start-up instead of silently counting nothing.
    Catch it as ``spendwatch.ConfigError`` where a program wants to handle it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"spendwatch: {message}")
        self.message = message


class BudgetExceededError(Exception):
    """A call refused before it was sent, because it would take a budget past its limit (or a guard rule said no).

    Raised only when the user enabled enforcement (``SPENDWATCH_ENFORCE=block``); no request left the process and
    no money was spent. ``spent_usd`` is the budget's settled spend and ``reserved_usd`` what calls still in flight
    hold of it. A refusal of an SDK's call is raised by :func:`as_sdk_error` as an instance of that SDK's base error
    class too, so the app's existing handlers catch it.
    """

    # The SDK base error class this refusal also is (set on the classes as_sdk_error makes).
    sdk_error: type[Exception] | None = None

    def __init__(
        self,
        budget: str,
        period: str,
        limit_usd: float,
        spent_usd: float,
        estimated_cost_usd: float,
        *,
        action: str = "block",
        reason: str = "",
        reserved_usd: float = 0.0,
        assumes: tuple[str, ...] = (),
        cause: str = "budget",
    ) -> None:
        self.budget = budget
        self.period = period
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.estimated_cost_usd = estimated_cost_usd
        self.action = action
        self.reason = reason
        self.reserved_usd = reserved_usd
        self.assumes = tuple(assumes)  # what the worst case rests on beyond the request and the bundled data
        # Why: "budget" (the budget, a ceiling or a rule said no), or "ledger_unavailable" (the guard could not reach
        # its ledger to check, under [guard] on_ledger_error = "block" or past the outage allowance).
        self.cause = cause
        super().__init__(self._message())

    @property
    def remaining_usd(self) -> float:
        """What the budget had left for this call: its limit less settled spend and in-flight reservations."""
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def _message(self) -> str:
        cost = f"it could cost up to {_usd(self.estimated_cost_usd)}"
        if self.assumes:
            cost += f" (a bound that assumes {'; '.join(self.assumes)})"
        if self.reason:
            tail = f" ({cost})" if self.estimated_cost_usd > 0 else ""
            return f"spendwatch refused the call: budget {self.budget!r} {self.reason}{tail}"
        limit = f"{_usd(self.limit_usd)} {_PERIOD_ADJECTIVES.get(self.period, self.period)} limit"
        left = f"budget {self.budget!r} has {_usd(max(self.remaining_usd, 0.0))} of its {limit} left"
        held = f"{_usd(self.spent_usd)} spent"
        if self.reserved_usd > 0:
            held += f", {_usd(self.reserved_usd)} reserved by calls in flight"
        return f"spendwatch refused the call: {cost}, and {left} ({held})"

    def _fields(self) -> tuple[tuple, dict]:
        positional = (self.budget, self.period, self.limit_usd, self.spent_usd, self.estimated_cost_usd)
        keywords = {"action": self.action, "reason": self.reason, "reserved_usd": self.reserved_usd}
        return positional, {**keywords, "assumes": self.assumes, "cause": self.cause}

    def __reduce__(self):
        # The default would call the class with the message alone; a refusal must cross processes whole.
        return _rebuild, (self.sdk_error, *self._fields())


_PERIOD_ADJECTIVES = {"day": "daily", "month": "monthly"}
_refusal_classes: dict[type[Exception], type[BudgetExceededError]] = {}
_refusal_classes_lock = threading.Lock()


def _usd(amount: float) -> str:
    """Dollars with cents, and for an amount below a dollar enough decimals to show four significant digits."""
    if not math.isfinite(amount) or amount == 0 or abs(amount) >= 1:
        return f"${amount:,.2f}"
    decimals = max(2, 3 - math.floor(math.log10(abs(amount))))
    text = f"{amount:.{decimals}f}".rstrip("0")
    return "$" + (text if len(text.partition(".")[2]) >= 2 else f"{amount:.2f}")


def refusal_class(sdk_error: type[Exception]) -> type[BudgetExceededError]:
    """``BudgetExceededError`` that is also an ``sdk_error`` (such as ``openai.OpenAIError``); one class per SDK
    base error, made on first use, so instrumentation never imports an SDK it does not instrument."""
    with _refusal_classes_lock:
        made = _refusal_classes.get(sdk_error)
        if made is None:
            namespace = {"__doc__": BudgetExceededError.__doc__, "__module__": __name__, "sdk_error": sdk_error}
            made = type("BudgetExceededError", (BudgetExceededError, sdk_error), namespace)
            _refusal_classes[sdk_error] = made
        return made


def as_sdk_error(refusal: BudgetExceededError, sdk_error: type[Exception]) -> BudgetExceededError:
    """The same refusal, raised as an instance of ``sdk_error`` too (its ``error.type`` stays BudgetExceededError)."""
    if isinstance(refusal, sdk_error):
        return refusal
    positional, keywords = refusal._fields()
    return refusal_class(sdk_error)(*positional, **keywords)


def _rebuild(sdk_error: type[Exception] | None, positional: tuple, keywords: dict) -> BudgetExceededError:
    cls = BudgetExceededError if sdk_error is None else refusal_class(sdk_error)
    return cls(*positional, **keywords)


class ReportedError(Exception):
    """Stands for a failure reported as data, not raised: ``spendwatch.track``'s ``set_error``, a Responses stream's
    ``error`` or ``response.failed`` event. Its ``spendwatch_error_type`` is what ``error.type`` says."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.spendwatch_error_type = type_name
