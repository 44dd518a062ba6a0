"""The budget guard: refuse (or degrade, or throttle) a call before it is sent, when it could break a budget.

Before a call, its worst-case cost (:mod:`spendwatch.exporter.guard_bound`: the request's input bound, its output
cap or the model's maximum output, the service tier asked for, cache writes and tool calls) is reserved against
every budget it counts against. The reservation is local arithmetic on a lease
(:mod:`spendwatch.exporter.ledger.leases`) — a few µs — and the ledger is asked only when the lease runs short. After
the call the reservation is settled to the actual cost: the rest goes back to the lease, and the cost moves from
lease to spend when the ledger ingests the call's record.
So concurrent callers in any number of processes never take a budget past its limit, and a call is refused only
when the budget could not cover its worst case.

Under faults: a heartbeat renews the leases of calls in flight, so a call of any length keeps its reservation, and a
lease's life is timed here on the monotonic clock from before each renewal was asked (never later than the database,
which decides expiry, ends it). A lease names this process as its owner: past its TTL the ledger keeps it until this
process's journal is in (:mod:`spendwatch.exporter.recovery`), so a killed process's calls are never paid for twice.
When the ledger cannot be reached to renew, ``[guard] on_ledger_error`` decides: "block" refuses, "admit" admits up
to ``[guard] outage_allowance_usd`` of worst cases per budget period unchecked.
Either way such a decision carries the cause ``ledger_unavailable`` and the budget label
:data:`~spendwatch.exporter.guard_rules.OUTAGE_BUDGET`, apart from budget refusals. A call's period is decided once,
from the guard's one clock read, which is also the start time its cost is charged at.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from spendwatch.exporter.guard_bound import WorstCase, worst_case
from spendwatch.exporter.guard_rules import CEILING_BUDGET, OUTAGE_BUDGET, GuardConfig, ShareRule
from spendwatch.exporter.ledger import Ledger, first_line
from spendwatch.exporter.ledger.leases import LeaseGrant, release_lease, renew_lease
from spendwatch.exporter.ledger.schema import ASSUMED_PRICE
from spendwatch.exporter.periods import period_bounds
from spendwatch.exporter.recovery import process_owner
from spendwatch.exporter.settings import BudgetSpec, Settings
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.pricing import Price, PriceTable
from spendwatch.instrumentation.records import UsageRecord

__all__ = ["BudgetGuard", "GuardTicket"]

_logger = logging.getLogger(__name__)

_RENEW_MARGIN_S = 30.0  # renew a lease this long before it would expire (a fifth of a shorter TTL)
_BEATS_PER_TTL = 3  # the heartbeat renews live leases this often per TTL
LEDGER_UNAVAILABLE = "ledger_unavailable"  # a refusal's cause when the ledger could not be asked
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
    start_ts: float = 0.0
    unspent_usd: float = 0.0  # granted to this process's lease and not yet settled as cost
    inflight_usd: float = 0.0  # worst cases of admitted calls not yet settled
    expires_at: float = 0.0  # monotonic; 0 until the lease was first asked for
    last_used: float = 0.0  # monotonic: when a call last asked for room
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
    reserved_at: float | None = None  # the guard's clock read that chose the call's period: its start time

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
        self._ended: list[_PeriodState] = []  # states of periods that ended with calls still in flight
        self._rules = [_RuleState(rule) for rule in config.rules]
        self._monotonic = time.monotonic
        # [guard] on_ledger_error = "admit": worst cases admitted unchecked, per (budget, period, period start).
        self._unchecked_usd: dict[tuple, float] = {}
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # --- admission (the caller's path) -------------------------------------------------------------------------
    def admit(self, request: CallRequest) -> GuardTicket | None:
        now = self.clock()  # the call's one clock read: its period here, its start time when settled
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
                return self._without_ledger(specs, bound.usd, outage, now)
            self._ledger_back()
            worst = bound.usd
            for state in states:
                state.inflight_usd += worst
            for rule_state in self._rules:
                rule_state.recent.append((now, worst))
            self._start_heartbeat()
        return GuardTicket(self, states, worst, changes, decisions, bound.assumed_price, reserved_at=now)

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
        # First call, or the period rolled over, or the clock was stepped back into an earlier period: a lease of
        # the period the call is charged to (a later period's lease would admit it against the wrong day's spend).
        if state is None or not state.start_ts <= now < state.end_ts:
            if state is not None and state.inflight_usd > 0:
                self._ended.append(state)  # its calls in flight still hold their reservations: keep the lease live
            start, end = period_bounds(spec.period, now, self.settings.timezone)
            lease_id = f"{uuid.uuid4().hex}:{spec.name}:{spec.period}"
            limit = _ask(self.ledger.budget_limits).get(key, spec.limit_usd)
            state = _PeriodState(spec, limit, lease_id, start.date(), end.date(), end.timestamp(), start.timestamp())
            self._states[key] = state
        return state

    def _ensure_room(self, state: _PeriodState, bound: WorstCase, now: float) -> None:
        worst = bound.usd
        tick = state.last_used = self._monotonic()
        room = state.unspent_usd - state.inflight_usd
        if room >= worst and tick < state.expires_at - self._renew_margin:
            return
        limits = _ask(self.ledger.budget_limits)
        state.limit_usd = limits.get((state.spec.name, state.spec.period), state.spec.limit_usd)
        held = state.unspent_usd + state.inflight_usd  # what this process counted on its lease holding
        grant = self._renew(state, max(worst - room, 0.0), None, tick)
        if not grant.existed and held > 0 and state.unspent_usd - state.inflight_usd < worst:
            # The lease had expired: what it held is gone, the reservations of calls in flight too. Ask for all of it.
            grant = self._renew(state, worst - (state.unspent_usd - state.inflight_usd), None, tick)
        if state.unspent_usd - state.inflight_usd < worst:
            spent, reserved = _standing(state, grant)
            spec = state.spec
            raise BudgetExceededError(
                spec.name, spec.period, state.limit_usd, spent, worst, reserved_usd=reserved, assumes=bound.assumptions
            )

    def _renew(self, state: _PeriodState, need: float, want: float | None, tick: float) -> LeaseGrant:
        """Ask the ledger to add to this process's lease (at least ``need``, ``want`` if it can; by default a
        ``lease_fraction`` of the limit) and keep it live one more TTL from ``tick``, a time read before asking."""
        if want is None:
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
            ttl_s=self.config.lease_ttl_s,
            owner=process_owner(),  # kept past its TTL until this process's journal is in (exporter/recovery.py)
        )
        state.unspent_usd = (state.unspent_usd if grant.existed else 0.0) + grant.granted_usd
        state.expires_at = tick + self.config.lease_ttl_s
        state.spent_usd, state.settled_since_usd = grant.spent_usd, 0.0
        return grant

    def _allowance(self, spec: BudgetSpec) -> float:
        configured = self.config.outage_allowance_usd
        return configured if configured is not None else self.config.lease_fraction * spec.limit_usd

    @property
    def _renew_margin(self) -> float:
        return min(_RENEW_MARGIN_S, self.config.lease_ttl_s / 5)

    def _without_ledger(self, specs: list[BudgetSpec], worst: float, outage: _LedgerOutage, now: float) -> GuardTicket:
        """The ledger could not be asked. ``[guard] on_ledger_error`` decides: "block" (the default) refuses the
        call, since the budget can no longer be kept; "admit" lets it through unchecked while this process's
        unchecked worst cases stay within ``[guard] outage_allowance_usd`` for each of its budgets' periods (the most
        this process can take a budget past its limit), and refuses past that. Counted, logged once per outage."""
        self._count_ledger_error()
        why = first_line(outage.__cause__ or outage)
        mode = self.config.on_ledger_error
        if self._outage is None:
            verb = "refuses" if mode == "block" else "lets through, up to [guard] outage_allowance_usd unchecked,"
            _logger.warning(
                "spendwatch: the budget guard cannot reach its ledger (%s); it %s calls that need it until it is back"
                " ([guard] on_ledger_error = %r)",
                why,
                verb,
                mode,
            )
        self._outage = why
        spec = specs[0]
        unchecked = (
            f"means the ledger cannot be reached ({why}), so budget {spec.name!r} ({spec.period}) cannot be checked"
        )
        if mode == "admit":
            periods = {(s.name, s.period, period_bounds(s.period, now, self.settings.timezone)[0]): s for s in specs}
            if all(self._unchecked_usd.get(key, 0.0) + worst <= self._allowance(s) for key, s in periods.items()):
                for key in periods:
                    self._unchecked_usd[key] = self._unchecked_usd.get(key, 0.0) + worst
                return GuardTicket(self, [], worst, None, ((OUTAGE_BUDGET, "allow"),), reserved_at=now)
            reason = f"{unchecked}, and this process has admitted its [guard] outage_allowance_usd this period"
        else:
            reason = f'{unchecked}, and [guard] on_ledger_error = "block" refuses such calls'
        raise BudgetExceededError(
            OUTAGE_BUDGET, spec.period, spec.limit_usd, 0.0, worst, reason=reason, cause=LEDGER_UNAVAILABLE
        )

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
        if ticket.reserved_at is not None:  # the period its reservation was made in is the one it is charged to
            record.start_time = ticket.reserved_at
        record.leases = tuple(state.lease_id for state in ticket.states)
        if record.outcome != "blocked":
            record.guard_actions = ticket.decisions

    # --- the heartbeat ------------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if self._heartbeat is None and not self._closed.is_set():
            self._heartbeat = threading.Thread(target=self._beat, name="spendwatch-guard-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._closed.wait(self.config.lease_ttl_s / _BEATS_PER_TTL):
            try:
                self.renew_live_leases()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive anything; admissions still ask the ledger
                _logger.debug("spendwatch: the guard's heartbeat failed", exc_info=True)

    def renew_live_leases(self) -> None:
        """Keep live, for one more TTL, the leases of calls in flight and of recent use, so a call of any length
        keeps its reservation. Asks for no more money. A lease that cannot be renewed keeps its local expiry: past
        it, admissions ask the ledger and ``[guard] on_ledger_error`` decides; a lease found expired is started
        over (admissions then ask for the reservations of the calls still in flight too)."""
        tick = self._monotonic()
        ttl = self.config.lease_ttl_s
        with self._lock:
            self._ended = [state for state in self._ended if state.inflight_usd > 0]
            for state in [*self._states.values(), *self._ended]:
                idle = state.inflight_usd <= 0 and tick - state.last_used > ttl
                if state.expires_at == 0.0 or idle:
                    continue  # an idle process's lease expires, handing its rest back to the others
                try:
                    self._renew(state, 0.0, 0.0, tick)
                except _LedgerOutage:
                    self._count_ledger_error()
                    return

    def _after_fork_in_child(self) -> None:
        # A forked worker is another owner with its own journal: it takes leases of its own (its parent's stay its
        # parent's), and runs its own heartbeat.
        self._lock = threading.Lock()
        self._states, self._ended, self._heartbeat = {}, [], None

    def close(self) -> None:
        """Stop the heartbeat and give this process's leases back (call after the journal was drained)."""
        self._closed.set()
        with self._lock:
            states, self._states, self._ended = [*self._states.values(), *self._ended], {}, []
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
