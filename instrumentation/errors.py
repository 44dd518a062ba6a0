"""Errors spendwatch raises on purpose."""

__all__ = ["BudgetExceededError", "ConfigError", "ReportedError"]


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
    no money was spent.
    """

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
    ) -> None:
        self.budget = budget
        self.period = period
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.estimated_cost_usd = estimated_cost_usd
        self.action = action
        why = reason or f"would exceed its {period} limit of ${limit_usd:.6f} (spent or reserved ${spent_usd:.6f})"
        super().__init__(
            f"spendwatch refused the call: budget {budget!r} ({period}) {why}; "
            f"the call's worst-case cost was estimated at ${estimated_cost_usd:.6f}"
        )


class ReportedError(Exception):
    """Stands for a failure reported as data, not raised: ``spendwatch.track``'s ``set_error``, a Responses stream's
    ``error`` or ``response.failed`` event. Its ``spendwatch_error_type`` is what ``error.type`` says."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.spendwatch_error_type = type_name
