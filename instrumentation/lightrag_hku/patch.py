"""Wrapper factories for LightRAG: public operations (sync/async twins), stage scopes, and cache accounting.

- **Operations** (``insert``/``ainsert``, ``query``/``aquery``, ``query_llm``/``aquery_llm``,
  ``query_data``/``aquery_data``, ``apipeline_process_enqueue_documents``, ``adelete_by_doc_id``) get one INTERNAL
  span ``lightrag.{operation}`` whose children are the OpenAI calls LightRAG makes. A sync method drives its async
  twin (and ``aquery`` calls ``aquery_llm``): an operation started inside another one passes straight through, so
  there is one span per public call.
- **Stages** set ``spendwatch.lightrag.stage`` (and ``doc_id``) on every call made inside them; see
  :func:`llm_cache_stage` for the mapping.
- **Cache**: ``handle_cache`` hits and ``save_to_cache`` writes go to :class:`~.cache.CacheAccounting`.

LightRAG's own results and exceptions pass through untouched; our work around them is contained.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind, Status, StatusCode
from wrapt import wrap_function_wrapper

from spendwatch.instrumentation.calls import current_category, safe_instrumentation
from spendwatch.instrumentation.lightrag_hku.cache import CacheAccounting
from spendwatch.instrumentation.lightrag_hku.scopes import Scope, current_scope, pop, push

__all__ = ["OPERATIONS", "apply", "llm_cache_stage"]

_logger = logging.getLogger(__name__)
_PREFIX = "spendwatch.lightrag."

# (module, attribute, operation, is_async). Modules are imported before anything is wrapped, so modules that
# import a function by name (``from lightrag.utils import handle_cache``) hold the original, wrapped once below.
OPERATIONS = (
    ("lightrag.lightrag", "LightRAG.insert", "insert", False),
    ("lightrag.lightrag", "LightRAG.ainsert", "insert", True),
    ("lightrag.lightrag", "LightRAG.query", "query", False),
    ("lightrag.lightrag", "LightRAG.aquery", "query", True),
    ("lightrag.lightrag", "LightRAG.query_llm", "query", False),
    ("lightrag.lightrag", "LightRAG.aquery_llm", "query", True),
    ("lightrag.lightrag", "LightRAG.query_data", "query_data", False),
    ("lightrag.lightrag", "LightRAG.aquery_data", "query_data", True),
    ("lightrag.lightrag", "LightRAG.adelete_by_doc_id", "delete", True),
    ("lightrag.pipeline", "_PipelineMixin.apipeline_process_enqueue_documents", "process_documents", True),
)
# The stage of calls made in an operation outside any finer stage (a bypass-mode answer, say).
_DEFAULT_STAGE = {"query": "answer"}
_MODULES = ("lightrag.utils", "lightrag.operate", "lightrag.pipeline", "lightrag.lightrag")


def llm_cache_stage(cache_type: Any, history_messages: Any) -> str:
    """The stage of a ``use_llm_func_with_cache`` call: its cache type, with extraction split in two — the
    first pass (``extraction``) and the "continue" pass that replays it as history (``gleaning``)."""
    if cache_type == "extract":
        return "gleaning" if history_messages else "extraction"
    return str(cache_type)


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _llm_cache_attributes(instance, args, kwargs) -> dict:
    cache_type = _argument(args, kwargs, 6, "cache_type", "extract")
    return {_PREFIX + "stage": llm_cache_stage(cache_type, _argument(args, kwargs, 5, "history_messages"))}


def _document_attributes(instance, args, kwargs) -> dict:
    doc_id = kwargs.get("doc_id")
    if doc_id is None:
        return {}
    scope = current_scope()
    if scope is not None:
        scope.root.doc_ids.add(str(doc_id))
    return {_PREFIX + "doc_id": str(doc_id)}


def _fixed(stage: str) -> Callable[..., dict]:
    attributes = {_PREFIX + "stage": stage}
    return lambda instance, args, kwargs: attributes


# (module, attribute, how the stage's call attributes are found)
STAGES = (
    ("lightrag.utils", "use_llm_func_with_cache", _llm_cache_attributes),
    ("lightrag.operate", "use_llm_func_with_cache", _llm_cache_attributes),
    ("lightrag.operate", "extract_keywords_only", _fixed("keywords")),
    ("lightrag.utils", "EmbeddingFunc.__call__", _fixed("embedding")),
    ("lightrag.pipeline", "_PipelineMixin.analyze_multimodal", _fixed("multimodal")),
    ("lightrag.pipeline", "_PipelineMixin.process_single_document", _document_attributes),
)
_CACHE_MODULES = ("lightrag.utils", "lightrag.operate", "lightrag.pipeline")


# --- operations -----------------------------------------------------------------------------------------------------


def _operation_attributes(operation: str, args: tuple, kwargs: dict) -> dict:
    attributes = {_PREFIX + "operation": operation}
    if operation in ("query", "query_data"):
        param = _argument(args, kwargs, 1, "param")
        mode = getattr(param, "mode", None) if param is not None else _default_query_mode()
        if mode:
            attributes[_PREFIX + "query_mode"] = str(mode)
    if operation == "insert":
        track_id = _argument(args, kwargs, 5, "track_id")
        if track_id:
            attributes[_PREFIX + "track_id"] = str(track_id)
    return attributes


def _default_query_mode() -> str | None:
    from lightrag import QueryParam

    return getattr(QueryParam, "mode", None)


def _requested_doc_ids(operation: str, args: tuple, kwargs: dict) -> tuple[str, ...]:
    if operation == "delete":
        ids = _argument(args, kwargs, 0, "doc_id")
    elif operation == "insert":
        ids = _argument(args, kwargs, 3, "ids")
    else:
        return ()
    if ids is None:
        return ()
    return (str(ids),) if isinstance(ids, str) else tuple(str(i) for i in ids)


class _Operation:
    """An operation in flight: its span, its scope, and the context token that made both current."""

    __slots__ = ("operation", "span", "scope", "token", "requested_ids")

    def __init__(self, operation: str, span: trace.Span, scope: Scope, token: object, requested_ids: tuple) -> None:
        self.operation, self.span, self.scope, self.token = operation, span, scope, token
        self.requested_ids = requested_ids

    def close(self, result: Any = None, error: BaseException | None = None) -> None:
        with safe_instrumentation("end a LightRAG operation span"):
            pop(self.token)
            span = self.span
            if span.is_recording():
                span.set_attributes(self.scope.total.span_attributes())
                doc_ids = tuple(sorted(self.scope.doc_ids)) or self.requested_ids
                if doc_ids:
                    span.set_attribute(_PREFIX + "doc_ids", doc_ids)
                if isinstance(result, str) and self.operation == "insert":
                    span.set_attribute(_PREFIX + "track_id", result)
                if error is not None:
                    span.set_attribute("error.type", type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
            span.end()


def _open(tracer: trace.Tracer, operation: str, args: tuple, kwargs: dict) -> _Operation | None:
    """Start the operation, or None when already inside one (a sync method driving its async twin)."""
    if current_scope() is not None:
        return None
    with safe_instrumentation("start a LightRAG operation span"):
        call_attributes = _operation_attributes(operation, args, kwargs)
        span_attributes = dict(call_attributes)
        category = current_category()
        if category is not None:
            span_attributes["spendwatch.category"] = category
        if operation in _DEFAULT_STAGE:
            call_attributes[_PREFIX + "stage"] = _DEFAULT_STAGE[operation]
        span = tracer.start_span(f"lightrag.{operation}", kind=SpanKind.INTERNAL, attributes=span_attributes)
        try:
            scope, token = push(call_attributes, operation=True, ctx=trace.set_span_in_context(span))
        except Exception:
            span.end()
            raise
        return _Operation(operation, span, scope, token, _requested_doc_ids(operation, args, kwargs))
    return None


def sync_operation(tracer: trace.Tracer, operation: str):
    def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        opened = _open(tracer, operation, args, kwargs)
        if opened is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            opened.close(error=error)
            raise
        opened.close(result)
        return result

    return traced


def async_operation(tracer: trace.Tracer, operation: str):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        opened = _open(tracer, operation, args, kwargs)
        if opened is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            opened.close(error=error)
            raise
        opened.close(result)
        return result

    return traced


# --- stages and cache -----------------------------------------------------------------------------------------------


def stage_wrapper(attributes_of: Callable[..., dict]):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        token = None
        with safe_instrumentation("enter a LightRAG stage"):
            _, token = push(attributes_of(instance, args, kwargs))
        try:
            return await wrapped(*args, **kwargs)
        finally:
            if token is not None:
                pop(token)

    return traced


def handle_cache_wrapper(accounting: CacheAccounting):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        result = await wrapped(*args, **kwargs)
        if result is not None:
            with safe_instrumentation("record a LightRAG cache hit"):
                hashing_kv, args_hash, prompt = (_argument(args, kwargs, i, n) for i, n in _HANDLE_CACHE_ARGS)
                mode = _argument(args, kwargs, 3, "mode", "default")
                cache_type = _argument(args, kwargs, 4, "cache_type", "unknown")
                accounting.record_hit(hashing_kv, args_hash, prompt, mode, cache_type, result[0])
        return result

    return traced


_HANDLE_CACHE_ARGS = ((0, "hashing_kv"), (1, "args_hash"), (2, "prompt"))


def save_to_cache_wrapper(accounting: CacheAccounting):
    async def traced(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        with safe_instrumentation("remember a LightRAG cache entry's cost"):
            accounting.remember(_argument(args, kwargs, 1, "cache_data"))
        return await wrapped(*args, **kwargs)

    return traced


# --- applying -------------------------------------------------------------------------------------------------------


def apply(tracer: trace.Tracer, accounting: CacheAccounting) -> list[tuple[Any, str]]:
    """Wrap every target this LightRAG has; returns ``(owner, attribute)`` pairs for unwrapping."""
    modules = {name: importlib.import_module(name) for name in _MODULES}
    factories = {False: sync_operation, True: async_operation}
    planned = [(m, a, factories[is_async](tracer, op)) for m, a, op, is_async in OPERATIONS]
    planned += [(m, a, stage_wrapper(attributes_of)) for m, a, attributes_of in STAGES]
    for module in _CACHE_MODULES:
        planned.append((module, "handle_cache", handle_cache_wrapper(accounting)))
        planned.append((module, "save_to_cache", save_to_cache_wrapper(accounting)))
    wrapped = []
    for module_name, attribute, wrapper in planned:
        owner_path, _, name = attribute.rpartition(".")
        owner = getattr(modules[module_name], owner_path, None) if owner_path else modules[module_name]
        if owner is None or not hasattr(owner, name):
            _logger.debug("spendwatch: this LightRAG has no %s.%s; not instrumented", module_name, attribute)
            continue
        wrap_function_wrapper(module_name, attribute, wrapper)
        wrapped.append((owner, name))
    return wrapped
