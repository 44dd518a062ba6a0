"""One LLM call, from request to span, cost, semantic-convention metrics and usage record.

Every instrumentor (and ``spendwatch.track``) records calls through a :class:`CallRecorder`, so a call looks the same
wherever it came from. This is the hot path: it does the least it can per call (one span, one dict of attributes,
a cached price multiplied out, one record handed to the sinks) and never raises into the caller's code.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from opentelemetry import baggage, context, trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode

from spendwatch.instrumentation import records
from spendwatch.instrumentation.admission import Ticket
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.pricing import USD_DECIMALS, PriceTable
from spendwatch.instrumentation.semconv_metrics import SemconvMetrics

__all__ = [
    "CALL_ATTRIBUTES_KEY",
    "CATEGORY_BAGGAGE_KEY",
    "NOT_BILLED",
    "PROVIDER",
    "REPORTED",
    "Call",
    "CategoryTokens",
    "CallRecorder",
    "attach_category",
    "current_category",
    "detach_category",
    "reset_category_variable",
    "set_category_variable",
    "Usage",
    "apply_usage",
    "safe_instrumentation",
    "storable",
]

_logger = logging.getLogger(__name__)

CATEGORY_BAGGAGE_KEY = "spendwatch.category"
# Attributes (str -> str) that every LLM call started inside this context carries on its span and usage record;
# set by instrumentors of frameworks that make calls for the user (the LightRAG stage of a call, say).
CALL_ATTRIBUTES_KEY = context.create_key("spendwatch.call_attributes")
NOT_BILLED = "not billed"
_MAX_CATEGORY_LENGTH = 100
# What no text store or exporter takes: a lone surrogate cannot be encoded as UTF-8 (SQLite, PostgreSQL, OTLP all
# refuse it) and PostgreSQL's text type refuses NUL. One such model name would make every ledger write of its batch
# fail, and an OTLP export drop the whole batch of spans, so they are replaced before they leave the call.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with lone surrogates and NUL replaced by U+FFFD; the same object in the usual (ASCII) case."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


# The category spendwatch set (spendwatch.category, the web middleware) is kept in three places. In the
# OpenTelemetry context (a value of its own, and the baggage entry that travels to downstream services), so it
# follows that context wherever it is carried. And in a context variable: web frameworks' OpenTelemetry
# instrumentations attach a context extracted from the request headers, which starts empty, and so drop what a
# middleware around them put in the OpenTelemetry context; they never touch this variable.
_CATEGORY_SET_KEY = context.create_key("spendwatch.category_set")
_category_set: ContextVar[str | None] = ContextVar("spendwatch.category", default=None)
# Where the OpenTelemetry API keeps the baggage in a context (a private name: None if a release renames it, and the
# baggage is then read through get_baggage).
_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)

CategoryTokens = tuple[object, Token]


def attach_category(category: str) -> CategoryTokens:
    """Make ``category`` the one of every LLM call in this context (and its baggage entry, which travels to
    downstream services); undo with :func:`detach_category` in the same context."""
    category = storable(str(category)[:_MAX_CATEGORY_LENGTH])
    ctx = context.set_value(_CATEGORY_SET_KEY, category, baggage.set_baggage(CATEGORY_BAGGAGE_KEY, category))
    return context.attach(ctx), _category_set.set(category)


def detach_category(tokens: CategoryTokens) -> None:
    context_token, category_token = tokens
    reset_category_variable(category_token)
    context.detach(context_token)


def set_category_variable(category: str) -> Token:
    """Set only the context variable, leaving the OpenTelemetry context alone: for a response body a server iterates
    chunk by chunk, while an instrumentation may keep its own context attached from one chunk to the next."""
    return _category_set.set(storable(str(category)[:_MAX_CATEGORY_LENGTH]))


def reset_category_variable(token: Token) -> None:
    with safe_instrumentation("restoring the category"):
        _category_set.reset(token)


def current_category(ctx: context.Context | None = None) -> str | None:
    """The attribution category in force: the one spendwatch set, else the ``spendwatch.category`` baggage (which
    can come from upstream services, so it is cut to 100 characters and made storable); None when neither is."""
    category = _category_set.get()
    if category is None:  # spendwatch set none here (or only in a context carried over from another thread)
        if ctx is None or _BAGGAGE_KEY is None:
            category = baggage.get_baggage(CATEGORY_BAGGAGE_KEY, ctx)
        else:  # what get_baggage does, without its three calls: this runs on every call
            entries = ctx.get(_BAGGAGE_KEY)
            category = entries.get(CATEGORY_BAGGAGE_KEY) if isinstance(entries, dict) else None
        return None if category is None else storable(str(category)[:_MAX_CATEGORY_LENGTH])
    # The OpenTelemetry context in force says which, unless it was extracted from request headers and lacks it.
    return (context.get_current() if ctx is None else ctx).get(_CATEGORY_SET_KEY, category)


@contextmanager
def safe_instrumentation(what: str) -> Iterator[None]:
    """Contain spendwatch's own failures: log at debug and carry on, so the user's call is never affected."""
    try:
        yield
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: %s failed", what, exc_info=True)


@dataclass(slots=True)
class Usage:
    """What a finished call used, as read from the provider's response (or estimated, then flagged)."""

    input_tokens: int = 0  # includes cache_read_tokens
    output_tokens: int = 0  # includes reasoning_tokens
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    # Subsets of input_tokens / output_tokens billed at their own rates (0 when the response does not say).
    cache_write_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    # Other billed quantities by name, e.g. web_search_calls, file_search_calls, code_interpreter_sessions, images,
    # audio_seconds, characters, cache_write_1h_tokens (the part of cache_write_tokens held for an hour). None: none.
    units: dict[str, float] | None = None
    response_model: str | None = None
    service_tier: str | None = None  # priced by; on the span unless "default"
    estimated: bool = False
    reported_cost_usd: float | None = None  # a cost the caller knows (spendwatch.track's set_cost): not priced here
    provider_cost_usd: float | None = None  # what the provider said it charged (OpenRouter's usage.cost): it wins
    calls: int = 1  # API calls this usage stands for (a batch recorded at once)
    failed_calls: int = 0


REPORTED = "reported"
PROVIDER = "provider"  # the price source of a call whose cost the provider reported (usage.provider_cost_usd)


class CallRecorder:
    """Starts :class:`Call` objects for one instrumentor; holds its tracer, semconv metrics and price table."""

    def __init__(self, tracer: trace.Tracer, meter: Meter, prices: PriceTable) -> None:
        self.tracer = tracer
        self.prices = prices
        self.metrics = SemconvMetrics(meter)
        self.active = True  # False once its instrumentor is uninstrumented

    def start(
        self,
        operation: str,
        provider: str,
        request_model: str,
        attributes: dict | None = None,
        price_provider: str | None = None,
        current: context.Context | None = None,
        guarded: bool = False,
    ) -> Call:
        """Open the CLIENT span ``"{operation} {model}"``; ``activate()`` makes it current for the wrapped call.
        ``price_provider`` is whose price list prices the call when it is not ``provider``'s (see PriceTable);
        ``current`` is the OpenTelemetry context in force, when the caller has already read it. A ``guarded`` call
        is asked of the budget guard first: its caller calls :meth:`Call.leaving` once the request is let go."""
        request_model = storable(request_model)
        span_attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": request_model,
        }
        if current is None:
            current = context.get_current()
        category = current_category(current)
        if category is not None:
            span_attributes["spendwatch.category"] = category
        if attributes:
            span_attributes.update(attributes)
        context_attributes = current.get(CALL_ATTRIBUTES_KEY)
        if context_attributes:
            context_attributes = {key: _storable_value(value) for key, value in context_attributes.items()}
            span_attributes.update(context_attributes)
        span = self.tracer.start_span(
            f"{operation} {request_model}", context=current, kind=SpanKind.CLIENT, attributes=span_attributes
        )
        call = Call(self, span, operation, provider, request_model, category, context_attributes, current)
        if price_provider is not None:
            call.price_provider = price_provider
        if records.beginners and not guarded:  # a sink counts calls on the wire when the process dies: mark it now
            call.mark = records.begin(call)
        return call


class Call:
    """An LLM call in flight. ``succeed`` or ``fail`` ends it; the first one wins, later calls do nothing."""

    __slots__ = (
        "recorder",
        "span",
        "operation",
        "provider",
        "price_provider",
        "request_model",
        "category",
        "start_time",
        "_start_perf",
        "_context_token",
        "_parent_context",
        "_ended",
        "attributes",
        "ticket",
        "mark",
    )

    def __init__(
        self,
        recorder: CallRecorder,
        span: trace.Span,
        operation: str,
        provider: str,
        model: str,
        category: str | None,
        attributes: dict[str, str] | None = None,
        parent_context: context.Context | None = None,
    ) -> None:
        self.recorder = recorder
        self.span = span
        self.operation = operation
        self.provider = self.price_provider = provider
        self.request_model = model
        self.category = category
        self.start_time = time.time()
        self._start_perf = time.perf_counter()
        self._context_token = None
        self._parent_context = parent_context  # the context the span was started in: activate() builds on it
        self._ended = False
        self.attributes = attributes  # from the context: e.g. a LightRAG stage
        self.ticket: Ticket | None = None  # the budget guard's reservation, settled when the call ends
        self.mark = 0  # its in-flight mark (records.begin), completed by its record

    def leaving(self) -> None:
        """The guard admitted the call (or there is none): its request leaves now. Marked only now, so a process that
        dies while the guard waits on its ledger leaves no estimate of a call it never sent."""
        if records.beginners:
            self.mark = records.begin(self)

    def activate(self) -> None:
        """Make the span current, so spans the library makes inside the call (HTTP, retries) are its children."""
        self._context_token = context.attach(trace.set_span_in_context(self.span, self._parent_context))

    def deactivate(self) -> None:
        if self._context_token is not None:
            context.detach(self._context_token)
            self._context_token = None

    def succeed(self, usage: Usage, extra_attributes: dict | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._finish(usage, None, extra_attributes)

    def fail(self, error: BaseException, usage: Usage | None = None) -> None:
        """End the call as failed. Tokens a broken stream already produced (``usage``) are still counted."""
        if self._ended:
            return
        self._ended = True
        self._finish(usage, error, None)

    def _finish(self, usage: Usage | None, error: BaseException | None, extra_attributes: dict | None) -> None:
        duration = time.perf_counter() - self._start_perf
        recorder = self.recorder
        record = records.UsageRecord(self.provider, self.operation, self.request_model)
        record.duration_s, record.start_time, record.category = duration, self.start_time, self.category
        record.mark = self.mark
        if self.attributes:
            record.attributes = dict(self.attributes)
        attributes: dict = {}
        if usage is not None:
            apply_usage(record, usage, recorder.prices, attributes, self.price_provider)
        elif error is not None:
            # A request the provider refused produced nothing to bill: known to cost nothing, not unpriced.
            record.cost_usd = 0.0
            record.pricing = attributes["spendwatch.pricing"] = NOT_BILLED
        if error is not None:
            record.outcome = "error"
            record.error_type = _error_type(error)
            attributes["error.type"] = record.error_type
            if isinstance(error, BudgetExceededError):
                record.outcome = attributes["spendwatch.outcome"] = "blocked"
                attributes["spendwatch.guard.cause"] = error.cause  # "budget" or "ledger_unavailable"
                record.guard_actions = ((error.budget, error.action),)
        if self.ticket is not None:
            _settle(self.ticket, record)
        span = self.span
        if span.is_recording():
            if extra_attributes:
                attributes.update(extra_attributes)
            span.set_attributes(attributes)
            if error is not None:
                # The type only: provider error messages can quote a (masked) API key or the prompt.
                span.set_status(Status(StatusCode.ERROR, record.error_type))
        span_context = span.get_span_context()
        record.trace_id = span_context.trace_id
        record.span_id = span_context.span_id
        try:
            span.end()
        except Exception:  # noqa: BLE001 - a span processor's failure must not cost the record: spend is counted anyway
            _logger.debug("spendwatch: ending a span failed", exc_info=True)
        records.emit(record)  # first: the record is what counts the spend; the metrics below only describe it
        recorder.metrics.add(record)


def _storable_value(value):
    return storable(value) if isinstance(value, str) else value


def apply_usage(
    record: records.UsageRecord, usage: Usage, prices: PriceTable, attributes: dict, price_provider: str
) -> None:
    """Copy ``usage`` into the record and the span attributes, and price it: the one pricing of a call, whether an
    instrumentor saw it or it was read from another instrumentation's span (exporter/spans/records.py)."""
    response_model = usage.response_model
    if response_model:
        response_model = storable(response_model)
        attributes["gen_ai.response.model"] = record.response_model = response_model
    tier, batch = usage.service_tier, False
    if tier == "default":  # what every response says unless the caller picked a tier: nothing to tell
        tier = None
    elif tier:
        attributes["openai.response.service_tier"] = record.service_tier = tier = storable(tier)
        if tier == "batch":  # the Batch API's discount is not a service tier in the price data
            tier, batch = None, True
    input_tokens, output_tokens, estimated = usage.input_tokens, usage.output_tokens, usage.estimated
    cache_read, cache_write = usage.cache_read_tokens, usage.cache_write_tokens
    least_input, least_output = cache_read, usage.reasoning_tokens
    units = usage.units
    subsets = (
        cache_write
        or usage.input_audio_tokens
        or usage.output_audio_tokens
        or usage.input_image_tokens
        or usage.output_image_tokens
        or units
    )
    if subsets:  # rare: most calls bill text tokens only
        least_input, least_output, cache_write, raised = _apply_subsets(record, usage, attributes)
        estimated = estimated or raised
    if input_tokens < least_input or output_tokens < least_output:
        # A whole below its own parts (a proxy's inconsistent usage, a caller's set_tokens): raised to the parts and
        # flagged, so the call is never undercounted and never priced below zero.
        input_tokens, output_tokens = max(input_tokens, least_input), max(output_tokens, least_output)
        estimated = True
    record.input_tokens = attributes["gen_ai.usage.input_tokens"] = input_tokens
    record.output_tokens = attributes["gen_ai.usage.output_tokens"] = output_tokens
    if cache_read:
        record.cache_read_tokens = attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
    if usage.reasoning_tokens:
        record.reasoning_tokens = attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    record.estimated = attributes["spendwatch.cost.estimated"] = estimated
    record.calls, record.failed_calls = usage.calls, usage.failed_calls
    cost_source = "local"
    if usage.reported_cost_usd is not None:
        cost, source = usage.reported_cost_usd, REPORTED
    elif usage.provider_cost_usd is not None:  # what the provider says it charged beats any price list
        cost, source = usage.provider_cost_usd, PROVIDER
        cost_source = PROVIDER
    else:
        price = prices.lookup_call(response_model, record.request_model, price_provider, tier, batch)
        if price is None:
            attributes["spendwatch.pricing"] = "unpriced"
            return
        if subsets:
            cost = price.cost(
                input_tokens,
                output_tokens,
                cache_read,
                cache_write,
                input_audio_tokens=usage.input_audio_tokens,
                output_audio_tokens=usage.output_audio_tokens,
                input_image_tokens=usage.input_image_tokens,
                output_image_tokens=usage.output_image_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                units=units,
            )
        else:
            cost = price.cost(input_tokens, output_tokens, cache_read, reasoning_tokens=usage.reasoning_tokens)
        source = price.source
    record.cost_usd = cost
    record.pricing = source
    # The span shows the cost as pricing.rounded_usd does (inlined: this is the hot path); the record keeps it raw.
    shown = round(cost, USD_DECIMALS)
    attributes["gen_ai.usage.cost"] = shown
    attributes["gen_ai.usage.cost.amount"] = shown
    attributes["gen_ai.usage.cost.currency"] = "USD"
    attributes["gen_ai.usage.cost.source"] = cost_source
    attributes["spendwatch.pricing"] = source


def _apply_subsets(record: records.UsageRecord, usage: Usage, attributes: dict) -> tuple[int, int, int, bool]:
    """Copy the parts billed at their own rates (besides cache reads and reasoning) and the other billed units into
    the record and the span. Returns the least input and output that hold those parts, the cache writes (raised to
    the part of them held for an hour, flagged by the last value when it was)."""
    cache_write, raised = usage.cache_write_tokens, False
    units = usage.units
    if units:
        record.units = dict(units)
        for name, quantity in units.items():
            attributes[f"spendwatch.usage.{name}"] = _count(quantity)
        one_hour = units.get("cache_write_1h_tokens", 0)
        if cache_write < one_hour:
            cache_write, raised = _count(one_hour), True
    if cache_write:
        record.cache_write_tokens = attributes["gen_ai.usage.cache_write.input_tokens"] = cache_write
    if usage.input_audio_tokens:
        record.input_audio_tokens = attributes["gen_ai.usage.audio.input_tokens"] = usage.input_audio_tokens
    if usage.output_audio_tokens:
        record.output_audio_tokens = attributes["gen_ai.usage.audio.output_tokens"] = usage.output_audio_tokens
    if usage.input_image_tokens:
        record.input_image_tokens = attributes["gen_ai.usage.image.input_tokens"] = usage.input_image_tokens
    if usage.output_image_tokens:
        record.output_image_tokens = attributes["gen_ai.usage.image.output_tokens"] = usage.output_image_tokens
    # Cache reads and writes are disjoint parts of the input, and so are its audio and its image tokens.
    least_input = max(usage.cache_read_tokens + cache_write, usage.input_audio_tokens + usage.input_image_tokens)
    least_output = max(usage.reasoning_tokens, usage.output_audio_tokens + usage.output_image_tokens)
    return least_input, least_output, cache_write, raised


def _count(quantity: float) -> int | float:
    """A billed quantity as the span shows it: an int, unless it has a fraction (seconds of audio)."""
    return int(quantity) if float(quantity).is_integer() else quantity


def _settle(ticket: Ticket, record: records.UsageRecord) -> None:
    try:
        ticket.settle(record)
    except Exception:  # noqa: BLE001 - a guard's bookkeeping failure must not reach the caller
        _logger.debug("spendwatch: could not settle a guard reservation", exc_info=True)


def _error_type(error: BaseException) -> str:
    # spendwatch.track's set_error reports an error by name, without an exception class of that name.
    return getattr(error, "spendwatch_error_type", None) or type(error).__qualname__
