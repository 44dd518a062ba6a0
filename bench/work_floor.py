"""The floor of spendwatch's job: span-floor plus the least per-call work the job itself needs, and nothing else.

Around each call: the suppression check, the category baggage read, one CLIENT span made current with the request's
attributes; after it: the response's usage and model read, the price looked up (spendwatch's cached lookup) and
multiplied out, the usage and cost attributes set, the semantic-convention metrics' values queued. Nothing of the
rest: no usage record for sinks, no guard, no error handling, no estimates, no streams (a stream's span ends when it is
returned, as in span-floor).

A reference for ``python -m bench`` (the ``work-floor`` column), not a peer and not a product: the gap between it and
span-floor is what reading, pricing and counting a call costs when done with no care for anything else, so no
instrumentation doing spendwatch's job can cost less than it.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter

from opentelemetry import baggage, context, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import wrap_function_wrapper

from bench.span_floor import METHODS
from spendwatch.instrumentation.pricing import price_table_from_env

__all__ = ["instrument"]

# (operation, input tokens' name, output tokens' name) per method of span_floor.METHODS.
_USAGE = {
    "Completions.create": ("chat", "prompt_tokens", "completion_tokens"),
    "AsyncCompletions.create": ("chat", "prompt_tokens", "completion_tokens"),
    "Responses.create": ("chat", "input_tokens", "output_tokens"),
    "Embeddings.create": ("embeddings", "prompt_tokens", None),
}
_queued: deque = deque(maxlen=8192)  # the metrics' values, as spendwatch queues them (never recorded here)


def instrument() -> None:
    tracer = trace.get_tracer("bench.work_floor")
    prices = price_table_from_env()
    span_starts: dict[tuple[str, str], tuple[str, dict]] = {}

    def start(operation: str, kwargs: dict):
        current = context.get_current()
        category = baggage.get_baggage("spendwatch.category", current)
        model = kwargs.get("model")
        key = (operation, model)
        name, attributes = span_starts.get(key) or span_starts.setdefault(key, _span_start(operation, model))
        if category is not None:
            attributes = {**attributes, "spendwatch.category": category}
        span = tracer.start_span(name, context=current, kind=trace.SpanKind.CLIENT, attributes=attributes)
        return span, context.attach(trace.set_span_in_context(span, current)), model, perf_counter()

    def end(span, token, model: str, started: float, result, usage_names: tuple[str, str, str | None]) -> None:
        context.detach(token)
        usage = getattr(result, "usage", None)
        if usage is not None:  # a stream has none: its span ends here, unpriced, as in span-floor
            operation, input_name, output_name = usage_names
            input_tokens = getattr(usage, input_name)
            output_tokens = getattr(usage, output_name) if output_name else 0
            response_model = result.model
            price = prices.lookup_call(response_model, model, "openai")
            cost = price.cost(input_tokens, output_tokens)
            span.set_attributes(
                {
                    "gen_ai.response.model": response_model,
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": output_tokens,
                    "gen_ai.usage.cost": cost,
                    "gen_ai.usage.cost.amount": cost,
                    "gen_ai.usage.cost.currency": "USD",
                    "gen_ai.usage.cost.source": "local",
                    "spendwatch.cost.estimated": False,
                    "spendwatch.pricing": price.source,
                }
            )
            key = (operation, "openai", model, response_model, None)
            _queued.append((key, perf_counter() - started, input_tokens, output_tokens))
        span.end()

    for module, method in METHODS:
        usage_names = _USAGE[method]
        wrap_function_wrapper(module, method, _wrapper(method.startswith("Async"), usage_names, start, end))


def _span_start(operation: str, model: str) -> tuple[str, dict]:
    return f"{operation} {model}", {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": model,
    }


def _wrapper(is_async: bool, usage_names: tuple, start, end):
    operation = usage_names[0]

    def sync_call(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        span, token, model, started = start(operation, kwargs)
        result = wrapped(*args, **kwargs)
        end(span, token, model, started, result, usage_names)
        return result

    async def async_call(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        span, token, model, started = start(operation, kwargs)
        result = await wrapped(*args, **kwargs)
        end(span, token, model, started, result, usage_names)
        return result

    return async_call if is_async else sync_call
