"""The floor any span-making instrumentation stands on: one CLIENT span made current around each call, carrying the
attributes DESIGN.md requires (constant values), and nothing else: no usage read, no price, no metrics, no record.

A reference for ``python -m bench`` (the ``span-floor`` column), not a peer: it shows how much of an overhead is the
OpenTelemetry SDK's own span work, which no instrumentation built on the SDK can avoid.
"""

from __future__ import annotations

from opentelemetry import context, trace
from wrapt import wrap_function_wrapper

__all__ = ["METHODS", "instrument"]

METHODS = (
    ("openai.resources.chat.completions", "Completions.create"),
    ("openai.resources.chat.completions", "AsyncCompletions.create"),
    ("openai.resources.responses", "Responses.create"),
    ("openai.resources.embeddings", "Embeddings.create"),
)
_START_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
}
_END_ATTRIBUTES = {
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 24,
    "gen_ai.usage.cost": 1.62e-05,
    "gen_ai.usage.cost.amount": 1.62e-05,
    "gen_ai.usage.cost.currency": "USD",
    "gen_ai.usage.cost.source": "local",
    "spendwatch.cost.estimated": False,
    "spendwatch.pricing": "genai-prices 0.2.3",
}


def instrument() -> None:
    tracer = trace.get_tracer("bench.span_floor")

    def start(kwargs: dict):
        span = tracer.start_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT, attributes=_START_ATTRIBUTES)
        return span, context.attach(trace.set_span_in_context(span))

    def end(span, token) -> None:
        context.detach(token)
        span.set_attributes(_END_ATTRIBUTES)
        span.end()  # a stream's span ends when it is returned, before it is read: the floor does no per-chunk work

    def sync_call(wrapped, instance, args, kwargs):
        span, token = start(kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            end(span, token)

    async def async_call(wrapped, instance, args, kwargs):
        span, token = start(kwargs)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            end(span, token)

    for module, method in METHODS:
        wrap_function_wrapper(module, method, async_call if method.startswith("Async") else sync_call)
