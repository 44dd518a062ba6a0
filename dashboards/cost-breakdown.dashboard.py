"""Cost breakdown: what the spend goes on, by model, operation and category, and the tokens behind it."""

from dashboards import house, promql
from dashboards.house import stat, target, timeseries
from dashboards.promql import COST_LABELS

USAGE = 'category=~"$category", model=~"$model"'
COST = "llm_cost_usd_total"
TOKENS = "llm_tokens_total"


def spend(window: str) -> str:
    return promql.increase(COST, COST_LABELS, window, USAGE)


def cost_per_hour(by: str) -> str:
    return f"sum by ({by}) ({promql.per_hour(COST, COST_LABELS, USAGE)})"


def tokens_per_second(token_type: str) -> str:
    matchers = f'{USAGE}, type="{token_type}"'
    return f"sum({promql.per_second(TOKENS, (*COST_LABELS, 'type'), matchers)})"


spend_in_range = stat(
    "Spend in range",
    [target(f"sum({spend('$__range')})", "spend")],
    unit=house.USD,
    description="USD spent on the selected categories and models over the dashboard's time range.",
)

top_spenders = stat(
    "Top spenders in range",
    [target(f"topk(10, sum by (category, model) ({spend('$__range')}))", "{{category}} / {{model}}")],
    unit=house.USD,
    description="The ten category and model pairs that spent the most over the dashboard's time range.",
    horizontal=True,
)

by_dimension = [
    timeseries(
        f"Cost by {label} ($/h)",
        [target(cost_per_hour(label), f"{{{{{label}}}}}")],
        unit=house.USD,
        description=f"USD per hour, stacked by {label}: the stack's top is the total.",
        stacked=True,
    )
    for label in ("model", "operation", "category")
]

# cache_read is part of input and reasoning part of output (DESIGN.md), so input and output stack to the total
# while the subsets are drawn as lines of their own, never added on top.
tokens = timeseries(
    "Tokens by type (tokens/s)",
    [
        target(tokens_per_second(token_type), token_type)
        for token_type in ("input", "output", "cache_read", "reasoning")
    ],
    unit=house.COUNT,
    description="Input and output tokens per second. cache_read is the cached part of input and reasoning the "
    "reasoning part of output: subsets, not additional tokens.",
)

cache_hit = timeseries(
    "Cached share of input tokens",
    [target(f"{tokens_per_second('cache_read')} / {tokens_per_second('input')}", "cached / input")],
    unit=house.PERCENT,
    description="The part of input tokens served from the provider's prompt cache (billed at the cached price).",
)

dashboard = house.dashboard(
    "spendwatch / Cost breakdown",
    uid="spendwatch-cost-breakdown",
    description="What LLM spend goes on: by model, operation and category, and the tokens behind it.",
    variables=[house.CATEGORY, house.MODEL],
    sections=[
        ("Totals", [spend_in_range, top_spenders]),
        ("Spend rate", by_dimension),
        ("Tokens", [tokens, cache_hit]),
    ],
).auto_panel_ids()
