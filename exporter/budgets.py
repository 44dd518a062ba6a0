"""Budgets against the ledger: how much of each budget's current calendar period is spent.

:func:`budget_statuses` answers "where does every budget stand now?" for the CLI and the Prometheus collector;
:class:`Budgets` is the small Python API behind ``spendwatch.budgets()``::

    budgets = Budgets(ledger, settings)
    budgets.get("global", "day").remaining_usd
    budgets.set_limit("global", "day", 80, reason="conference week")

A limit changed at run time (``Ledger.set_budget_limit``) overrides the configured one for that budget and period
until it is changed again; the change is kept in the ledger as a ``budget_limit_changed`` event.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from spendwatch.exporter.periods import local_day, period_bounds, period_days
from spendwatch.exporter.settings import PERIODS, BudgetSpec, Settings

__all__ = ["BudgetStatus", "Budgets", "LEVELS", "budget_statuses", "describe_scope", "status_as_dict"]

LEVELS = ("warning", "critical", "exceeded")


@dataclass(frozen=True)
class BudgetStatus:
    """One budget in one period, now."""

    name: str
    period: str  # "day" | "month"
    limit_usd: float
    spent_usd: float
    period_start: datetime  # aware, in the configured time zone
    period_end: datetime  # exclusive
    thresholds: dict[str, float]  # level -> ratio of the limit, e.g. {"warning": 0.75, ...}
    category: str | None = None
    model: str | None = None

    @property
    def remaining_usd(self) -> float:
        return self.limit_usd - self.spent_usd

    @property
    def used_ratio(self) -> float:
        if self.limit_usd > 0:
            return self.spent_usd / self.limit_usd
        return 0.0 if self.spent_usd == 0 else float("inf")

    @property
    def level(self) -> str | None:
        """The highest threshold level reached, or None."""
        reached = [level for level in LEVELS if self.used_ratio >= self.thresholds[level]]
        return reached[-1] if reached else None


def budget_statuses(ledger, settings: Settings, *, now: float | None = None) -> list[BudgetStatus]:
    """Every configured budget at ``now`` (unix seconds, default the clock), sorted by name, then day before month.

    Spend is the ledger's spend over the calendar period containing ``now`` in ``settings.timezone``, within the
    budget's category/model scope; the limit is the run-time one when ``ledger.budget_limits()`` has one.
    """
    now = time.time() if now is None else now
    run_time_limits = ledger.budget_limits()
    thresholds = dict(zip(LEVELS, settings.thresholds, strict=True))
    statuses = [_status(ledger, spec, run_time_limits, thresholds, settings, now) for spec in settings.budgets]
    return sorted(statuses, key=lambda status: (status.name, PERIODS.index(status.period)))


def _status(ledger, spec: BudgetSpec, run_time_limits: dict, thresholds: dict, settings: Settings, now: float):
    tz = settings.timezone
    first_day, end_day = period_days(spec.period, local_day(now, tz))
    period_start, period_end = period_bounds(spec.period, now, tz)
    return BudgetStatus(
        name=spec.name,
        period=spec.period,
        limit_usd=run_time_limits.get((spec.name, spec.period), spec.limit_usd),
        spent_usd=ledger.spend(first_day, end_day, category=spec.category, model=spec.model),
        period_start=period_start,
        period_end=period_end,
        thresholds=dict(thresholds),
        category=spec.category,
        model=spec.model,
    )


def describe_scope(status: BudgetStatus) -> str:
    """Which calls a budget counts, in words: ``all calls``, ``category=x``, ``model=y`` or both."""
    parts = [f"{key}={value}" for key, value in (("category", status.category), ("model", status.model)) if value]
    return ", ".join(parts) or "all calls"


def status_as_dict(status: BudgetStatus) -> dict:
    """A JSON-ready view of a status. An infinite used ratio (money spent against a zero limit) becomes None,
    because JSON has no infinity; ``level`` still says ``exceeded``."""
    return {
        "name": status.name,
        "period": status.period,
        "category": status.category,
        "model": status.model,
        "limit_usd": status.limit_usd,
        "spent_usd": status.spent_usd,
        "remaining_usd": status.remaining_usd,
        "used_ratio": status.used_ratio if math.isfinite(status.used_ratio) else None,
        "level": status.level,
        "thresholds": dict(status.thresholds),
        "period_start": status.period_start.isoformat(),
        "period_end": status.period_end.isoformat(),
    }


class Budgets:
    """The budgets of one ledger and settings, read and changed from Python (``spendwatch.budgets()``).

    Only configured budgets exist here: :meth:`set_limit` changes the limit of one, it does not create new ones,
    because a budget's scope (category, model) lives in the configuration, not in the ledger.
    """

    def __init__(self, ledger, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._settings = settings
        self._clock = clock

    def status(self) -> list[BudgetStatus]:
        """Every configured budget now."""
        return budget_statuses(self._ledger, self._settings, now=self._clock())

    def get(self, name: str, period: str) -> BudgetStatus:
        """One budget now; a KeyError naming the configured budgets when there is no such budget."""
        self._require_configured(name, period)
        return next(s for s in self.status() if (s.name, s.period) == (name, period))

    def set_limit(self, name: str, period: str, usd: float, reason: str = "") -> BudgetStatus:
        """Change a configured budget's limit from now on (kept in the ledger, with ``reason``, as an event).

        Raises KeyError for a budget that is not configured and ValueError for a limit that is not a finite,
        non-negative number. Returns the budget's status under the new limit.
        """
        self._require_configured(name, period)
        limit = _checked_limit(name, period, usd)
        self._ledger.set_budget_limit(name, period, limit, reason=reason)
        return self.get(name, period)

    def _require_configured(self, name: str, period: str) -> None:
        configured = [(spec.name, spec.period) for spec in self._settings.budgets]
        if (name, period) not in configured:
            known = ", ".join(f"{n}/{p}" for n, p in sorted(configured)) or "none"
            raise KeyError(f"no budget {name!r} with period {period!r} is configured (configured: {known})")


def _checked_limit(name: str, period: str, usd: float) -> float:
    try:
        limit = float(usd)
    except (TypeError, ValueError):
        limit = math.nan
    if isinstance(usd, bool) or not math.isfinite(limit) or limit < 0:
        message = f"the {period} limit of budget {name!r} must be a finite, non-negative amount of USD, not {usd!r}"
        raise ValueError(message)
    return limit
