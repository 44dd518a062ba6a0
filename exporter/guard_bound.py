"""The most a call can cost, from what its request says: what the budget guard reserves before the call.

- Input: the request's token bound (UTF-8 bytes), every token at the dearest input rate the model has: plain, cache
  write (any input may be written to the prompt cache; 1-hour writes where priced), audio or image input.
- Output: the request's cap, else the model's maximum output from the bundled data (LiteLLM's table), else
  ``[guard] max_output_tokens`` — an assumption — each token at the dearest output rate (text, audio, image).
- Service tier: the one the request asks for; one that names none, or "auto", is priced at
  ``[guard] auto_service_tier`` (OpenAI bills "auto" at the project's default tier).
- Tools the provider runs within the request (web and file search, code interpreter, MCP): up to ``max_tool_calls``
  calls (the request's, else ``[guard] max_tool_calls`` — an assumption), each billed at the dearest such tool's
  per-call price, and each adding a model turn that reads the input, the output so far and every tool result again
  (``[guard] tool_result_tokens`` per result — an assumption).
- A model without a price: ``[guard] unpriced`` = "admit" (no bound), "block" (refused), or "upper-bound": the
  dearest known model of its provider and family (:func:`~spendwatch.instrumentation.pricing.limits.model_family`),
  an assumption.

What a bound assumes is returned with it in words, for the refusal and ``spendwatch status`` to say.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from spendwatch.exporter.guard_rules import GuardConfig
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.pricing import Price, PriceTable
from spendwatch.instrumentation.pricing.limits import family_models, max_output_tokens, model_family

__all__ = ["WorstCase", "assumed_models", "assumption_notes", "worst_case"]

UNPRICED_BUDGET = "unpriced"  # the budget label of a refusal by [guard] unpriced = "block"


@dataclass(frozen=True, slots=True)
class WorstCase:
    usd: float
    assumptions: tuple[str, ...] = ()  # what the bound rests on beyond the request and the bundled data, in words
    assumed_price: Price | None = None  # the upper-bound price a model without one is charged at


def worst_case(request: CallRequest, prices: PriceTable, config: GuardConfig) -> WorstCase:
    provider = request.price_provider or request.provider
    tier = config.auto_service_tier if request.service_tier in (None, "auto") else request.service_tier
    price = prices.lookup(request.model, provider=provider, service_tier=tier)
    if price is not None:
        output, output_assumed = _output_bound(request, request.model, provider, config)
        usd, tools_assumed = _bound(price, request, output, config)
        return WorstCase(usd, output_assumed + tools_assumed)
    if config.unpriced == "block":
        reason = f"has no price for model {request.model!r} and [guard] unpriced = 'block'"
        raise BudgetExceededError(UNPRICED_BUDGET, "day", 0.0, 0.0, 0.0, reason=reason)
    if config.unpriced == "admit":
        return WorstCase(0.0, (f"{request.model!r} has no price and is not bounded ([guard] unpriced = 'admit')",))
    return _upper_bound(request, prices, provider, tier, config)


def _output_bound(request: CallRequest, model: str, provider: str, config: GuardConfig) -> tuple[int, tuple]:
    if request.max_output_tokens is not None:
        return request.max_output_tokens, ()
    known = max_output_tokens(model, provider)
    if known is not None:
        return known, ()
    assumed = f"output up to [guard] max_output_tokens = {config.max_output_tokens} (no cap in the request"
    return config.max_output_tokens, (f"{assumed}, no maximum for {model!r} in the bundled data)",)


def _bound(price: Price, request: CallRequest, output: int, config: GuardConfig) -> tuple[float, tuple]:
    """The call's worst case at ``price``, and what its tool bound assumes."""
    if not (request.server_tools or request.tool_units):
        return _tokens_bound(price, request.input_tokens, output, request.cache_write_possible), ()
    calls, assumed = request.max_tool_calls, ()
    if calls is None:
        calls = config.max_tool_calls
        assumed = (f"up to [guard] max_tool_calls = {calls} tool calls (the request sets no max_tool_calls)",)
    assumed += (f"[guard] tool_result_tokens = {config.tool_result_tokens} input tokens per tool result",)
    # Turn k (0..calls) reads the input, at most the whole output so far and the k tool results before it.
    turns = calls + 1
    input_tokens = turns * (request.input_tokens + output) + config.tool_result_tokens * calls * turns // 2
    usd = _tokens_bound(price, input_tokens, output, request.cache_write_possible)
    fees = (_unit_cost(price, unit, calls) for unit in request.tool_units)
    return usd + max(fees, default=0.0), assumed


# Token kinds a price may list at a rate of their own: when it lists none, every token is at the text rates.
_OWN_RATE_TOKENS = (
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "output_audio_tokens",
    "output_image_tokens",
    "reasoning_tokens",
)


def _tokens_bound(price: Price, input_tokens: int, output_tokens: int, cache_write_possible: bool) -> float:
    """Every input token at the dearest input rate, every output token at the dearest output rate. Price.cost is
    linear in each count once the input size has chosen the tier, so the two maxima add up."""
    if not any(kind in listed.per_unit for listed in _with_tiers(price) for kind in _OWN_RATE_TOKENS):
        return price.cost(input_tokens, output_tokens)  # the usual price: text tokens only
    inputs = [
        price.cost(input_tokens, 0),
        price.cost(input_tokens, 0, input_audio_tokens=input_tokens),
        price.cost(input_tokens, 0, input_image_tokens=input_tokens),
    ]
    if cache_write_possible:
        inputs.append(price.cost(input_tokens, 0, 0, input_tokens))
        inputs.append(price.cost(input_tokens, 0, 0, input_tokens, units={"cache_write_1h_tokens": input_tokens}))
    text_input = inputs[0]
    outputs = (
        price.cost(input_tokens, output_tokens),
        price.cost(input_tokens, output_tokens, output_audio_tokens=output_tokens),
        price.cost(input_tokens, output_tokens, output_image_tokens=output_tokens),
        price.cost(input_tokens, output_tokens, reasoning_tokens=output_tokens),
    )
    return max(inputs) + max(outputs) - text_input


def _with_tiers(price: Price) -> tuple[Price, ...]:
    return (price, *(tier for _, tier in price.tiers))


def _unit_cost(price: Price, unit: str, count: int) -> float:
    """What ``count`` of ``unit`` add to a call (cost() counts the call's own per-request charge already)."""
    return price.cost(0, 0, units={unit: count}) - price.cost(0, 0)


def _upper_bound(
    request: CallRequest, prices: PriceTable, provider: str, tier: str | None, config: GuardConfig
) -> WorstCase:
    """An unknown model priced as the dearest known model of its provider and family (of its provider when the
    family has none): the worst case of this request at each of their prices, the largest kept."""
    family = model_family(request.model)
    in_family, candidates = _family_prices(prices, provider, family, tier, config.max_output_tokens, _today())
    own_limit = request.max_output_tokens
    if own_limit is None:
        own_limit = max_output_tokens(request.model, provider)
    best, best_model = None, None
    for model, price, model_limit in candidates:
        usd, tools_assumed = _bound(price, request, own_limit if own_limit is not None else model_limit, config)
        if best is None or usd > best.usd:
            best, best_model = WorstCase(usd, tools_assumed, price), model
    if best is None:
        reason = f"has no price for model {request.model!r} nor for any model of provider {provider!r}"
        raise BudgetExceededError(UNPRICED_BUDGET, "day", 0.0, 0.0, 0.0, reason=reason)
    if in_family:
        what = f"the dearest {family!r} model of {provider}"
    else:
        what = f"the dearest model of {provider}, which lists none of the {family!r} family"
    priced_as = f"{request.model!r} has no price: priced as {best_model!r}, {what} ([guard] unpriced = 'upper-bound')"
    return WorstCase(best.usd, (priced_as, *best.assumptions), best.assumed_price)


@functools.lru_cache(maxsize=256)
def _family_prices(
    prices: PriceTable, provider: str, family: str, tier: str | None, fallback_output: int, day: int
) -> tuple[bool, tuple[tuple[str, Price, int], ...]]:
    """Whether ``family`` has priced models at ``provider``, and ``(model, price, maximum output)`` of the models an
    unknown one is bounded by (those of the family, else every model of the provider), less those another one is
    at least as dear as on every count. Cached per day, as prices change on dates."""
    found = []
    for in_family, candidates in ((True, family_models(provider, family)), (False, family_models(provider, ""))):
        for owner, model in candidates:
            price = prices.lookup(model, provider=owner, service_tier=tier)
            if price is not None:
                found.append((model, price, max_output_tokens(model, owner) or fallback_output))
        if found:
            return in_family, _undominated(found)
    return False, ()


def _undominated(found: list[tuple[str, Price, int]]) -> tuple[tuple[str, Price, int], ...]:
    """The candidates no other candidate is at least as dear as on every count (the first of equals kept). Only
    prices of text tokens and per-unit charges without tiers are compared; the others are all kept."""
    plain = [entry for entry in found if _plain(entry[1])]
    kept = [entry for entry in found if not _plain(entry[1])]
    for index, entry in enumerate(plain):
        if not any(
            _at_least_as_dear(other, entry) and (other_index < index or not _at_least_as_dear(entry, other))
            for other_index, other in enumerate(plain)
            if other_index != index
        ):
            kept.append(entry)
    return tuple(kept)


def _plain(price: Price) -> bool:
    return not price.tiers and not any(kind in price.per_unit for kind in _OWN_RATE_TOKENS)


def _at_least_as_dear(one: tuple[str, Price, int], other: tuple[str, Price, int]) -> bool:
    _, price, limit = one
    _, other_price, other_limit = other
    return (
        price.input >= other_price.input
        and price.output >= other_price.output
        and limit >= other_limit
        and all(price.per_unit.get(unit, 0.0) >= rate for unit, rate in other_price.per_unit.items())
    )


def _today() -> int:
    return int(time.time() // 86_400)


def assumption_notes(config: GuardConfig) -> list[str]:
    """Where the guard's worst cases rest on an assumption under ``config``, in words (for ``spendwatch status``)."""
    notes = [
        f"a call with no output cap, to a model the bundled data has no maximum output for, is bounded at "
        f"[guard] max_output_tokens = {config.max_output_tokens}",
        f"a call that lets the provider run tools (web or file search, code interpreter, MCP) and sets no "
        f"max_tool_calls is bounded at [guard] max_tool_calls = {config.max_tool_calls}, each result at "
        f"[guard] tool_result_tokens = {config.tool_result_tokens} tokens",
        f"a call that names no service tier, or 'auto', is priced at the {config.auto_service_tier!r} tier "
        "([guard] auto_service_tier: set 'priority' if your project defaults to priority processing)",
    ]
    if config.unpriced == "upper-bound":
        notes.append("a model without a price is bounded at the dearest known model of its provider and family")
    elif config.unpriced == "admit":
        notes.append("a model without a price is not bounded at all ([guard] unpriced = 'admit')")
    return notes


def assumed_models(models: Iterable[tuple[str, str]], prices: PriceTable, config: GuardConfig) -> list[str]:
    """Of ``(provider, model)`` pairs (those the ledger has seen), the ones whose worst case rests on an assumption
    whatever the request says: no price, or (for a request without an output cap) no maximum output in the data."""
    notes = []
    for provider, model in sorted(set(models)):
        if prices.lookup(model, provider=provider) is None:
            notes.append(f"{model} ({provider}) has no price: [guard] unpriced = {config.unpriced!r}")
        elif max_output_tokens(model, provider) is None:
            notes.append(
                f"{model} ({provider}): a call without an output cap is bounded at [guard] max_output_tokens = "
                f"{config.max_output_tokens}, the bundled data having no maximum for it"
            )
    return notes
