"""The budget guard: refuse (or degrade, or throttle) a call before it is sent, when it could break a budget.

Before a call, its worst-case cost (:mod:`spendwatch.exporter.guard_bound`: the request's input bound, its output
cap or the model's maximum output, the service tier asked for, cache writes and tool calls) is reserved against
every budget it counts against. The reservation is local arithmetic on a lease
(:mod:`spendwatch.exporter.ledger.leases`) — a few µs — and the ledger is asked only when the lease runs short. After
the call the reservation is settled to the actual cost: the rest goes back to the lease, and the cost moves from
lease to spend when the ledger ingests the call's record.
So concurrent callers in any number of processes never take a budget past its limit, and a call is refused only
when the budget could not cover its worst case.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from spendwatch.exporter.guard_bound import WorstCase, worst_case
from spendwatch.exporter.guard_rules import CEILING_BUDGET, GuardConfig, ShareRule
from spendwatch.exporter.ledger import Ledger, first_line
from spendwatch.exporter.ledger.leases import LeaseGrant, release_lease, renew_lease
from spendwatch.exporter.ledger.schema import ASSUMED_PRICE
from spendwatch.exporter.periods import period_bounds
from spendwatch.exporter.settings import BudgetSpec, Settings
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.pricing import Price, PriceTable
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["BudgetGuard", "GuardTicket"]

_logger = logging.getLogger(__name__)

_RENEW_MARGIN_S = 30.0  # renew a lease this long before it would expire
_NOTHING = WorstCase(0.0)  # asks for no room: learns a new period's spend


@dataclass
class _PeriodState:
    """This process's standing against one budget in its current period."""

    spec: BudgetSpec
    limit_usd: float
    lease_id: str
    first_day: object
    end_day: object
    end_ts: float
    unspent_usd: float = 0.0  # granted to this process's lease and not yet settled as cost
    inflight_usd: float = 0.0  # worst cases of admitted calls not yet settled
    expires_at: float = 0.0
    spent_usd: float = 0.0  # the period's ledger spend at the last renewal
    settled_since_usd: float = 0.0  # costs settled here since then

    @property
    def spent(self) -> float:
        """The period's spend as this process knows it: at the last renewal, plus what it settled since."""
        return self.spent_usd + self.settled_since_usd

    @property
    def share(self) -> float:
        return self.spent / self.limit_usd if self.limit_usd > 0 else float("inf")


@dataclass
class _RuleState:
    rule: ShareRule
    active_until: float = 0.0
    recent: collections.deque = field(default_factory=collections.deque)  # (time, worst case) of admitted calls


@dataclass
class GuardTicket:
    """An admitted call's reservation; ``settle`` runs once when the call ends (the instrumentation calls it)."""

    guard: BudgetGuard
    states: list[_PeriodState]
    worst_usd: float
    request_changes: dict | None
    decisions: tuple[tuple[str, str], ...]
    assumed_price: Price | None = None  # the upper-bound price of a model without one ([guard] unpriced)

    def settle(self, record: UsageRecord) -> None:
        self.guard._settle(self, record)


class BudgetGuard:
    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        prices: PriceTable,
        config: GuardConfig,
        *,
        clock: Callable[[], float] = time.time,
        count_ledger_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self._count_ledger_error = count_ledger_error
        self._outage: str | None = None  # why the ledger could not be asked, while it cannot
        self.settings = settings
        self.prices = prices
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], _PeriodState] = {}
        self._rules = [_RuleState(rule) for rule in config.rules]

    # --- admission (the caller's path) -------------------------------------------------------------------------
    def admit(self, request: CallRequest) -> GuardTicket | None:
        now = self.clock()
        bound = worst_case(request, self.prices, self.config)
        self._check_ceilings(request, bound)
        specs = [spec for spec in self.settings.budgets if spec.covers(request.category, request.model)]
        if not specs:
            return None
        with self._lock:
            try:
                states = [self._state(spec, now) for spec in specs]
                for state in states:
                    if state.expires_at == 0.0:  # new: learn the period's spend before any share rule reads it
                        self._ensure_room(state, _NOTHING, now)
                changes, decisions = self._apply_rules(request, states, now)
                if changes:
                    bound = worst_case(_changed(request, changes), self.prices, self.config)
                for state in states:
                    self._ensure_room(state, bound, now)
            except _LedgerOutage as outage:
                return self._without_ledger(specs, bound.usd, outage)
            self._ledger_back()
            worst = bound.usd
            for state in states:
                state.inflight_usd += worst
            for rule_state in self._rules:
                rule_state.recent.append((now, worst))
        return GuardTicket(self, states, worst, changes, decisions, bound.assumed_price)

    def _check_ceilings(self, request: CallRequest, bound: WorstCase) -> None:
        for ceiling in self.config.ceilings:
            if ceiling.applies(request.operation, request.model) and bound.usd > ceiling.max_usd:
                reason = f"refuses any single call that could cost more than ${ceiling.max_usd:g}"
                raise BudgetExceededError(
                    CEILING_BUDGET, "call", ceiling.max_usd, 0.0, bound.usd, reason=reason, assumes=bound.assumptions
                )

    def _state(self, spec: BudgetSpec, now: float) -> _PeriodState:
        key = (spec.name, spec.period)
        state = self._states.get(key)
        if state is None or now >= state.end_ts:  # first call, or the period rolled over: a new lease
            start, end = period_bounds(spec.period, now, self.settings.timezone)
            lease_id = f"{uuid.uuid4().hex}:{spec.name}:{spec.period}"
            limit = _ask(self.ledger.budget_limits).get(key, spec.limit_usd)
            state = _PeriodState(spec, limit, lease_id, start.date(), end.date(), end.timestamp())
            self._states[key] = state
        return state

    def _ensure_room(self, state: _PeriodState, bound: WorstCase, now: float) -> None:
        worst = bound.usd
        room = state.unspent_usd - state.inflight_usd
        if room >= worst and now < state.expires_at - _RENEW_MARGIN_S:
            return
        limits = _ask(self.ledger.budget_limits)
        state.limit_usd = limits.get((state.spec.name, state.spec.period), state.spec.limit_usd)
        need = max(worst - room, 0.0)
        want = max(need, self.config.lease_fraction * state.limit_usd)
        grant = _ask(
            renew_lease,
            self.ledger,
            state.lease_id,
            state.spec,
            state.limit_usd,
            (state.first_day, state.end_day),
            need_usd=need,
            want_usd=want,
            now=now,
            ttl_s=self.config.lease_ttl_s,
        )
        state.unspent_usd = (state.unspent_usd if grant.existed else 0.0) + grant.granted_usd
        state.expires_at = now + self.config.lease_ttl_s
        state.spent_usd, state.settled_since_usd = grant.spent_usd, 0.0
        if state.unspent_usd - state.inflight_usd < worst:
            spent, reserved = _standing(state, grant)
            spec = state.spec
            raise BudgetExceededError(
                spec.name, spec.period, state.limit_usd, spent, worst, reserved_usd=reserved, assumes=bound.assumptions
            )

    def _without_ledger(self, specs: list[BudgetSpec], worst: float, outage: _LedgerOutage) -> GuardTicket:
        """The ledger could not be asked. ``[guard] on_ledger_error`` decides: "block" (the default) refuses the
        call, since the budget can no longer be kept; "admit" lets it through unguarded. Counted, logged once."""
        self._count_ledger_error()
        why = first_line(outage.__cause__ or outage)
        mode = self.config.on_ledger_error
        if self._outage is None:
            verb = "refuses" if mode == "block" else "lets through, unguarded,"
            _logger.warning(
                "spendwatch: the budget guard cannot reach its ledger (%s); it %s calls that need it until it is back"
                " ([guard] on_ledger_error = %r)",
                why,
                verb,
                mode,
            )
        self._outage = why
        if mode == "block":
            spec = specs[0]
            reason = (
                f"cannot be checked because the ledger cannot be reached ({why});"
                ' [guard] on_ledger_error = "admit" would let calls through meanwhile'
            )
            raise BudgetExceededError(spec.name, spec.period, spec.limit_usd, 0.0, worst, reason=reason)
        return GuardTicket(self, [], worst, None, tuple(sorted({(spec.name, "allow") for spec in specs})))

    def _ledger_back(self) -> None:
        if self._outage is not None:
            self._outage = None
            _logger.warning("spendwatch: the budget guard reaches its ledger again")

    def _apply_rules(self, request: CallRequest, states: list[_PeriodState], now: float):
        """Share rules, in configuration order: a block or throttle refuses, degrades accumulate."""
        changes: dict = {}
        by_key = {(s.spec.name, s.spec.period): s for s in states}
        actions = {(s.spec.name, s.spec.period): "allow" for s in states}
        for rule_state in self._rules:
            rule = rule_state.rule
            matching = [
                s for (name, period), s in by_key.items() if name == rule.budget and rule.period in (None, period)
            ]
            if not matching or not self._rule_active(rule_state, matching, now):
                continue
            state = matching[0]
            if rule.action == "block":
                raise BudgetExceededError(
                    rule.budget,
                    state.spec.period,
                    state.limit_usd,
                    state.spent,
                    0.0,
                    reason=f"is past {rule.at:.0%} of its limit, where a guard rule blocks calls",
                )
            if rule.action == "throttle":
                self._throttle(rule_state, state, now)
                continue
            changes.update(_degrade(rule, request))
            for matched in matching:
                actions[(matched.spec.name, matched.spec.period)] = "degrade"
        decisions = tuple(sorted({(name, action) for (name, _), action in actions.items()}))
        return changes or None, decisions

    def _rule_active(self, rule_state: _RuleState, states: list[_PeriodState], now: float) -> bool:
        if now < rule_state.active_until:
            return True
        if any(state.share >= rule_state.rule.at for state in states):
            rule_state.active_until = now + rule_state.rule.cooldown_s
            return True
        return False

    def _throttle(self, rule_state: _RuleState, state: _PeriodState, now: float) -> None:
        recent = rule_state.recent
        while recent and recent[0][0] <= now - 60.0:
            recent.popleft()
        rule = rule_state.rule
        over_count = rule.max_calls_per_minute is not None and len(recent) >= rule.max_calls_per_minute
        over_usd = rule.max_usd_per_minute is not None and sum(w for _, w in recent) >= rule.max_usd_per_minute
        if over_count or over_usd:
            raise BudgetExceededError(
                rule.budget,
                state.spec.period,
                state.limit_usd,
                state.spent,
                0.0,
                action="throttle",
                reason=f"is past {rule.at:.0%} of its limit and throttled to {_rate(rule)}",
            )

    # --- settling (when the call ends) -------------------------------------------------------------------------
    def _settle(self, ticket: GuardTicket, record: UsageRecord) -> None:
        if record.cost_usd is None and ticket.assumed_price is not None:
            _price_as_assumed(record, ticket.assumed_price)
        cost = record.cost_usd or 0.0
        with self._lock:
            for state in ticket.states:
                state.inflight_usd -= ticket.worst_usd
                state.unspent_usd -= cost
                state.settled_since_usd += cost
        record.leases = tuple(state.lease_id for state in ticket.states)
        if record.outcome != "blocked":
            record.guard_actions = ticket.decisions

    def close(self) -> None:
        """Give this process's leases back (call after the journal was drained)."""
        with self._lock:
            states, self._states = list(self._states.values()), {}
        for state in states:
            try:
                release_lease(self.ledger, state.lease_id)
            except Exception:  # noqa: BLE001 - an unreachable ledger lets the lease expire after its TTL instead
                _logger.debug("spendwatch: cannot release lease %s", state.lease_id, exc_info=True)


def _standing(state: _PeriodState, grant: LeaseGrant) -> tuple[float, float]:
    """The budget's settled spend and what calls in flight reserve of it, for a refusal's message.

    The lease in the ledger still holds costs this process settled but the ledger has not ingested yet, and the
    unused rest of earlier reservations, which is room, not spend. Those settled costs are the lease less what this
    process has left of it. Other processes' leases count as reserved by their calls.
    """
    settled_here = max(grant.outstanding_usd - state.unspent_usd, 0.0) if grant.existed else 0.0
    return grant.spent_usd + settled_here, state.inflight_usd + grant.others_usd


class _LedgerOutage(Exception):
    """The guard could not ask its ledger (the cause says why)."""


def _ask(question: Callable, *args, **kwargs):
    """Ask the ledger; any failure of the asking (not a refusal) becomes a :class:`_LedgerOutage`."""
    try:
        return question(*args, **kwargs)
    except Exception as error:
        raise _LedgerOutage() from error


def _degrade(rule: ShareRule, request: CallRequest) -> dict:
    changes: dict = {}
    if rule.model is not None and rule.model != request.model:
        changes["model"] = rule.model
    if rule.max_output_tokens is not None:
        current = request.max_output_tokens
        if current is None or current > rule.max_output_tokens:
            changes[request.output_cap_argument or "max_tokens"] = rule.max_output_tokens
    return changes


def _changed(request: CallRequest, changes: dict) -> CallRequest:
    cap_argument = request.output_cap_argument
    cap = request.max_output_tokens
    for argument in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if argument in changes:
            cap_argument, cap = argument, changes[argument]
    model = changes.get("model", request.model)
    return dataclasses.replace(request, model=model, max_output_tokens=cap, output_cap_argument=cap_argument)


def _price_as_assumed(record: UsageRecord, price: Price) -> None:
    """A call to a model without a price, admitted on an upper-bound price (``[guard] unpriced = "upper-bound"``),
    counts against its budgets at that price for the tokens it really used: otherwise the budget would never see it.
    The ledger's pricing column says so; a price override and ``spendwatch reprice`` replace it."""
    record.cost_usd = price.cost(
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        input_audio_tokens=record.input_audio_tokens,
        output_audio_tokens=record.output_audio_tokens,
        input_image_tokens=record.input_image_tokens,
        output_image_tokens=record.output_image_tokens,
        reasoning_tokens=record.reasoning_tokens,
        units=record.units or None,
    )
    record.pricing = f"{ASSUMED_PRICE}{price.model} ({price.source}; [guard] unpriced = upper-bound)"


def _rate(rule: ShareRule) -> str:
    parts = []
    if rule.max_calls_per_minute is not None:
        parts.append(f"{rule.max_calls_per_minute} calls")
    if rule.max_usd_per_minute is not None:
        parts.append(f"${rule.max_usd_per_minute:.2f}")
    return " or ".join(parts) + " per minute"
