"""The budget guard's rules from the ``[guard]`` table of the TOML config, validated at start-up.

[guard]
max_output_tokens = 4096      # output assumed for a request with no cap, to a model the bundled data has no maximum for
unpriced = "admit"            # a model without a price: "admit" (unbounded), "upper-bound" or "block" ("allow" = admit)
max_tool_calls = 4            # tool calls assumed for a request that lets the provider run tools and sets no bound
tool_result_tokens = 8000     # input tokens assumed per tool result (a search's results, file chunks)
auto_service_tier = "default" # the tier a request naming none, or "auto", is priced at ("priority" if the project is)
on_ledger_error = "block"     # or "admit": what to do with a call when the ledger cannot be reached to check it
outage_allowance_usd = 0.10   # "admit": the most one process admits unchecked per budget period (worst cases);
                              # unset: a lease's worth (lease_fraction of the budget's limit)
lease_fraction = 0.02         # how much of a budget one process reserves at a time
lease_ttl_s = 300             # how long a lease lives unrenewed (a dead process's is kept until its journal is in)

[[guard.ceilings]]            # refuse any single call estimated above max_usd
max_usd = 0.50
operations = ["chat"]         # optional: only these operations
models = ["gpt-4o"]           # optional: only these models

[[guard.rules]]               # at a share of a budget: block, throttle or degrade
budget = "global"
period = "day"                # optional: both periods when absent
at = 0.95
action = "degrade"            # "block" | "throttle" | "degrade"
max_output_tokens = 256       # degrade: cap the output
model = "gpt-4o-mini"         # degrade: swap to a cheaper model
max_calls_per_minute = 10     # throttle (and/or max_usd_per_minute)
cooldown_s = 300              # once triggered, the rule holds this long before it is evaluated again
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "CEILING_BUDGET",
    "OUTAGE_BUDGET",
    "UNPRICED_MODES",
    "CallCeiling",
    "GuardConfig",
    "ShareRule",
    "guard_config",
]

ACTIONS = ("block", "throttle", "degrade")
UNPRICED_MODES = ("admit", "upper-bound", "block")
SERVICE_TIERS = ("default", "priority", "flex", "scale")
CEILING_BUDGET = "per-call-ceiling"  # the budget label of a refusal by a ceiling
# The budget label of decisions taken while the ledger cannot be reached (llm_guard_decisions_total): "block" for a
# refusal, "allow" for a call admitted unchecked under on_ledger_error = "admit". Told apart from budget refusals.
OUTAGE_BUDGET = "ledger-unavailable"


@dataclass(frozen=True)
class CallCeiling:
    max_usd: float
    operations: frozenset[str] | None = None
    models: frozenset[str] | None = None

    def applies(self, operation: str, model: str) -> bool:
        return (self.operations is None or operation in self.operations) and (
            self.models is None or model in self.models
        )


@dataclass(frozen=True)
class ShareRule:
    budget: str
    at: float
    action: str
    period: str | None = None
    max_output_tokens: int | None = None
    model: str | None = None
    max_calls_per_minute: int | None = None
    max_usd_per_minute: float | None = None
    cooldown_s: float = 300.0


@dataclass(frozen=True)
class GuardConfig:
    max_output_tokens: int = 4096
    unpriced: str = "admit"
    max_tool_calls: int = 4
    tool_result_tokens: int = 8000
    auto_service_tier: str = "default"
    lease_fraction: float = 0.02
    lease_ttl_s: float = 300.0
    on_ledger_error: str = "block"
    outage_allowance_usd: float | None = None  # None: lease_fraction of each budget's limit
    ceilings: tuple[CallCeiling, ...] = ()
    rules: tuple[ShareRule, ...] = ()


def guard_config(table: Any, where: str) -> GuardConfig:
    """Parse the ``[guard]`` table; ``where`` names the file for error messages."""
    if table is None:
        return GuardConfig()
    known = {"max_output_tokens", "unpriced", "on_ledger_error", "lease_fraction", "ceilings", "rules"}
    known |= {"outage_allowance_usd", "lease_ttl_s"}
    _table(table, "guard", where, known | {"max_tool_calls", "tool_result_tokens", "auto_service_tier"})
    unpriced = table.get("unpriced", "admit")
    unpriced = "admit" if unpriced == "allow" else unpriced  # its name before "upper-bound" came
    if unpriced not in UNPRICED_MODES:
        raise ConfigError(f"guard.unpriced={unpriced!r} in {where} must be one of {', '.join(UNPRICED_MODES)}")
    tier = table.get("auto_service_tier", "default")
    if tier not in SERVICE_TIERS:
        raise ConfigError(f"guard.auto_service_tier={tier!r} in {where} must be one of {', '.join(SERVICE_TIERS)}")
    on_ledger_error = table.get("on_ledger_error", "block")
    if on_ledger_error not in ("block", "admit"):
        raise ConfigError(f"guard.on_ledger_error={on_ledger_error!r} in {where} must be block or admit")
    fraction = _number(table.get("lease_fraction", 0.02), "guard.lease_fraction", where)
    if not 0 < fraction <= 1:
        raise ConfigError(f"guard.lease_fraction={fraction!r} in {where} must be above 0 and at most 1")
    allowance = _optional_number(table.get("outage_allowance_usd"), "guard.outage_allowance_usd", where)
    if allowance is not None and on_ledger_error != "admit":
        raise ConfigError(
            f'guard.outage_allowance_usd={allowance!r} in {where} applies only with on_ledger_error = "admit"'
        )
    ttl = _number(table.get("lease_ttl_s", 300), "guard.lease_ttl_s", where)
    if ttl < 1:
        raise ConfigError(f"guard.lease_ttl_s={ttl!r} in {where} must be at least 1 (seconds)")
    return GuardConfig(
        max_output_tokens=_count(table.get("max_output_tokens", 4096), "guard.max_output_tokens", where),
        unpriced=unpriced,
        max_tool_calls=_count(table.get("max_tool_calls", 4), "guard.max_tool_calls", where),
        tool_result_tokens=_count(table.get("tool_result_tokens", 8000), "guard.tool_result_tokens", where),
        auto_service_tier=tier,
        on_ledger_error=on_ledger_error,
        lease_fraction=fraction,
        lease_ttl_s=ttl,
        outage_allowance_usd=allowance,
        ceilings=tuple(_ceiling(entry, where) for entry in _list(table.get("ceilings"), "guard.ceilings", where)),
        rules=tuple(_rule(entry, where) for entry in _list(table.get("rules"), "guard.rules", where)),
    )


def _ceiling(entry: Any, where: str) -> CallCeiling:
    _table(entry, "guard.ceilings", where, {"max_usd", "operations", "models"})
    if "max_usd" not in entry:
        raise ConfigError(f"guard.ceilings in {where} needs max_usd")
    return CallCeiling(
        _number(entry["max_usd"], "guard.ceilings.max_usd", where),
        _names(entry.get("operations"), "guard.ceilings.operations", where),
        _names(entry.get("models"), "guard.ceilings.models", where),
    )


def _rule(entry: Any, where: str) -> ShareRule:
    known = {"budget", "period", "at", "action", "max_output_tokens", "model", "max_calls_per_minute"}
    _table(entry, "guard.rules", where, known | {"max_usd_per_minute", "cooldown_s"})
    for key in ("budget", "at", "action"):
        if key not in entry:
            raise ConfigError(f"guard.rules in {where} needs {key}")
    action = entry["action"]
    if action not in ACTIONS:
        raise ConfigError(f"guard.rules.action={action!r} in {where} must be one of {', '.join(ACTIONS)}")
    period = entry.get("period")
    if period not in (None, "day", "month"):
        raise ConfigError(f"guard.rules.period={period!r} in {where} must be day or month")
    rule = ShareRule(
        budget=str(entry["budget"]),
        at=_number(entry["at"], "guard.rules.at", where),
        action=action,
        period=period,
        max_output_tokens=_optional_count(entry.get("max_output_tokens"), "guard.rules.max_output_tokens", where),
        model=entry.get("model"),
        max_calls_per_minute=_optional_count(
            entry.get("max_calls_per_minute"), "guard.rules.max_calls_per_minute", where
        ),
        max_usd_per_minute=_optional_number(entry.get("max_usd_per_minute"), "guard.rules.max_usd_per_minute", where),
        cooldown_s=_number(entry.get("cooldown_s", 300), "guard.rules.cooldown_s", where),
    )
    if action == "degrade" and rule.max_output_tokens is None and rule.model is None:
        raise ConfigError(f"guard.rules with action=degrade in {where} needs max_output_tokens or model")
    if action == "throttle" and rule.max_calls_per_minute is None and rule.max_usd_per_minute is None:
        raise ConfigError(
            f"guard.rules with action=throttle in {where} needs max_calls_per_minute or max_usd_per_minute"
        )
    return rule


def _table(value: Any, name: str, where: str, known: set[str]) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} in {where} must be a table")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{name} in {where} has an unknown key {unknown[0]!r}")


def _list(value: Any, name: str, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{name} in {where} must be an array of tables ([[{name}]])")
    return value


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={value!r} in {where} must be a non-negative number")
    return float(value)


def _optional_number(value: Any, name: str, where: str) -> float | None:
    return None if value is None else _number(value, name, where)


def _count(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} in {where} must be a whole number of at least 0")
    return value


def _optional_count(value: Any, name: str, where: str) -> int | None:
    return None if value is None else _count(value, name, where)


def _names(value: Any, name: str, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name} in {where} must be a list of names")
    return frozenset(value)
