"""Budgets against the ledger: how much of each budget's current calendar period is spent.

:func:`budget_statuses` answers "where does every budget stand now?" for the CLI and the Prometheus collector;
:class:`Budgets` is the small Python API behind ``spendwatch.budgets()``::

    budgets = Budgets(ledger, settings)
    budgets.get("global", "day").remaining_usd
    budgets.set_limit("global", "day", 80, reason="conference week")

A limit changed at run time (``Ledger.set_budget_limit``, ``spendwatch budget set``) overrides the configured one
for that budget and period until it is cleared (``spendwatch budget clear``); each change is kept in the ledger as a
``budget_limit_changed`` or ``budget_limit_cleared`` event, and a status says which limit is in force
(``limit_source``) and why (:func:`run_time_changes`).

Every app records the budgets it starts with in the ledger, so a reader such as the CLI knows them without being
given the app's environment again: :class:`LedgerConfiguration` completes the reader's own settings with them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spendwatch.exporter.periods import local_day, period_bounds, period_days
from spendwatch.exporter.settings import ENV, PERIODS, BudgetSpec, Settings

__all__ = [
    "BudgetStatus",
    "Budgets",
    "LEVELS",
    "LIMIT_SOURCES",
    "LedgerConfiguration",
    "budget_statuses",
    "describe_scope",
    "run_time_changes",
    "status_as_dict",
]

LEVELS = ("warning", "critical", "exceeded")
# Where the limit in force comes from: the configuration (environment, file, or an app's recorded start-up), or a
# run-time change kept in the ledger.
LIMIT_SOURCES = ("config", "runtime")


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
    service: str | None = None
    limit_source: str = "config"  # one of LIMIT_SOURCES
    configured_limit_usd: float | None = None  # the configured limit, in force or not

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
    run_time_limit = run_time_limits.get((spec.name, spec.period))
    return BudgetStatus(
        name=spec.name,
        period=spec.period,
        limit_usd=spec.limit_usd if run_time_limit is None else run_time_limit,
        spent_usd=ledger.spend(first_day, end_day, category=spec.category, model=spec.model, service=spec.service),
        period_start=period_start,
        period_end=period_end,
        thresholds=dict(thresholds),
        category=spec.category,
        model=spec.model,
        service=spec.service,
        limit_source="config" if run_time_limit is None else "runtime",
        configured_limit_usd=spec.limit_usd,
    )


def describe_scope(status: BudgetStatus) -> str:
    """Which calls a budget counts, in words: ``all calls``, or ``category=x``, ``model=y``, ``service=z`` joined."""
    scopes = (("category", status.category), ("model", status.model), ("service", status.service))
    parts = [f"{key}={value}" for key, value in scopes if value]
    return ", ".join(parts) or "all calls"


def status_as_dict(status: BudgetStatus) -> dict:
    """A JSON-ready view of a status. An infinite used ratio (money spent against a zero limit) becomes None,
    because JSON has no infinity; ``level`` still says ``exceeded``."""
    return {
        "name": status.name,
        "period": status.period,
        "category": status.category,
        "model": status.model,
        "service": status.service,
        "limit_usd": status.limit_usd,
        "limit_source": status.limit_source,
        "configured_limit_usd": status.configured_limit_usd,
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

    def set_limit(self, name: str, period: str, usd: float, reason: str = "", *, by: str = "") -> BudgetStatus:
        """Change a configured budget's limit from now on (kept in the ledger, with ``reason`` and who did it,
        ``by``, as an event), until :meth:`clear_limit`.

        Raises KeyError for a budget that is not configured and ValueError for a limit that is not a finite,
        non-negative number. Returns the budget's status under the new limit.
        """
        self._require_configured(name, period)
        limit = _checked_limit(name, period, usd)
        self._ledger.set_budget_limit(name, period, limit, reason=reason, by=by)
        return self.get(name, period)

    def clear_limit(self, name: str, period: str, reason: str = "", *, by: str = "") -> BudgetStatus:
        """Drop a run-time limit set with :meth:`set_limit`, so the configured one is in force again (kept in the
        ledger as an event; nothing is recorded when there was none). Returns the budget's status."""
        self._require_configured(name, period)
        self._ledger.clear_budget_limit(name, period, reason=reason, by=by)
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


def run_time_changes(ledger) -> dict[tuple[str, str], dict]:
    """Why each run-time limit in force is there: the detail of the last ``budget_limit_changed`` event of each
    budget and period (``limit_usd``, ``reason``, ``by`` when known) with its time as ``at`` (unix seconds)."""
    in_force = ledger.budget_limits()
    changes: dict[tuple[str, str], dict] = {}
    for event in ledger.events_since("budget_limit_changed"):
        detail = _parsed(event["detail"])
        key = (detail.get("name"), detail.get("period"))
        if key in in_force:
            changes[key] = {**detail, "at": float(event["ts"])}
    return changes


# --- the configuration apps ran with, as their start-ups recorded it ---------------------------------------------

# Settings a reader takes from the apps' recorded start-ups when its own environment and file leave them unset.
_ADOPTED = ("timezone", "thresholds", "categories")


@dataclass(frozen=True)
class _Recorded:
    """One budget name as the latest app start-up that configured it recorded it."""

    specs: tuple[BudgetSpec, ...]
    at: float
    pid: object
    host: object

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"app start-up {when}, pid {self.pid} on {self.host}"


class LedgerConfiguration:
    """A reader's settings, completed with the configuration apps recorded in the ledger when they started.

    Each app records its budgets, time zone, thresholds and categories (a ``configuration_started`` event). A
    budget name takes its periods, limits and scope from the latest start-up that configured it, unless the
    reader's own settings (its environment, keyword arguments or ``SPENDWATCH_CONFIG`` file) configure that name:
    then those win, as they also do for the time zone, thresholds and categories. :meth:`settings` reads only the
    events recorded since its last call, so a server may call it on every scrape.
    """

    def __init__(self, ledger, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self._ledger = ledger
        self._own = settings
        self._environ = environ
        self._after_id = 0
        self._budgets: dict[str, _Recorded] = {}
        self._latest: dict = {}
        self._lock = threading.Lock()  # a server's scrapes run on concurrent threads

    def settings(self) -> Settings:
        """The reader's settings with the recorded budgets (and unset time zone, thresholds, categories) added."""
        with self._lock:
            self._read_new_events()
            budgets, latest = dict(self._budgets), self._latest
        own_names = {spec.name for spec in self._own.budgets}
        recorded = [spec for name, entry in budgets.items() if name not in own_names for spec in entry.specs]
        changes: dict = {"budgets": tuple(recorded) + self._own.budgets}
        for name in _ADOPTED:
            value = _adopted(name, latest.get(name))
            if value is not None and not self._set_here(name):
                changes[name] = value
        return dataclasses.replace(self._own, **changes)

    def origin(self, name: str) -> str:
        """Where budget ``name``'s configured limits come from, in words."""
        if any(spec.name == name for spec in self._own.budgets):
            return "this environment or SPENDWATCH_CONFIG"
        recorded = self._budgets.get(name)
        return recorded.describe() if recorded is not None else "not configured"

    def recorded(self, name: str) -> bool:
        """Whether budget ``name`` is known from an app's recorded start-up, not from the reader's own settings."""
        return name in self._budgets and not any(spec.name == name for spec in self._own.budgets)

    def _set_here(self, name: str) -> bool:
        return bool(self._environ.get(ENV[name], "").strip()) or name in self._own.raw

    def _read_new_events(self) -> None:
        for event in self._ledger.events_since("configuration_started", self._after_id):
            self._after_id = int(event["id"])
            detail = _parsed(event["detail"])
            specs = _recorded_specs(detail.get("budgets"))
            for name in {spec.name for spec in specs}:
                named = tuple(spec for spec in specs if spec.name == name)
                self._budgets[name] = _Recorded(named, float(event["ts"]), detail.get("pid"), detail.get("host"))
            self._latest = detail


def _parsed(text: str) -> dict:
    try:
        detail = json.loads(text)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def _recorded_specs(rows) -> tuple[BudgetSpec, ...]:
    """Budgets as a start-up recorded them, ``[name, period, limit_usd, category, model]`` each, and ``service`` after
    them since budgets can be scoped by service; a row that does not read as one (damaged) is left out."""
    specs = []
    for row in rows if isinstance(rows, list) else []:
        try:
            name, period, limit, category, model, *rest = row
            service = rest[0] if rest else None
            if len(rest) > 1 or not isinstance(service, str | None):
                continue
            if isinstance(name, str) and period in PERIODS and math.isfinite(float(limit)) and float(limit) >= 0:
                specs.append(BudgetSpec(name, period, float(limit), category or None, model or None, service or None))
        except (TypeError, ValueError):
            continue
    return tuple(specs)


def _adopted(name: str, value):
    """A recorded time zone, thresholds or categories as settings hold them; None when it does not read as one."""
    try:
        if name == "timezone":
            return ZoneInfo(value) if isinstance(value, str) else None
        if name == "thresholds":
            ratios = tuple(float(ratio) for ratio in value)
            return ratios if len(ratios) == 3 and 0 < ratios[0] <= ratios[1] <= ratios[2] else None
        if name == "categories":
            return frozenset(str(category) for category in value)
    except (TypeError, ValueError, ZoneInfoNotFoundError):
        return None
    return None
