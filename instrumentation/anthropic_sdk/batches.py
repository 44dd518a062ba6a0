"""Message Batches: each request of a batch is counted when its result is read, at the batch discount.

A batch's requests are billed as they are answered, and the answers (with their usage) arrive only through
``batches.results()``. So the caller gets the SDK's results decoder behind a proxy that records one call per
``succeeded`` result it hands out (service tier ``batch``). Errored, cancelled and expired requests are not billed and
not recorded. A result read twice in this process (the results listed again) is counted once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import ObjectProxy

from spendwatch.instrumentation.calls import CallRecorder
from spendwatch.instrumentation.openai_sdk.usage import text

from .providers import provider_of
from .usage import usage_from_message

__all__ = ["AsyncResultsProxy", "ResultsProxy", "async_results_wrapper", "results_wrapper"]

_logger = logging.getLogger(__name__)

BATCH_TIER = "batch"
_REMEMBERED_BATCHES = 64
# custom_id of each result counted, per batch id, for the most recent batches read.
_counted: OrderedDict[str, set[str]] = OrderedDict()
_counted_lock = threading.Lock()


def _first_time(batch_id: str, custom_id: Any) -> bool:
    with _counted_lock:
        seen = _counted.get(batch_id)
        if seen is None:
            seen = _counted[batch_id] = set()
            if len(_counted) > _REMEMBERED_BATCHES:
                _counted.popitem(last=False)
        if custom_id in seen:
            return False
        seen.add(custom_id)
        return True


class _Results:
    """Records the results of one batch as they are read."""

    __slots__ = ("recorder", "provider", "batch_id")

    def __init__(self, recorder: CallRecorder, provider: str, batch_id: str) -> None:
        self.recorder, self.provider, self.batch_id = recorder, provider, batch_id

    def observe(self, item: Any) -> None:
        try:
            result = getattr(item, "result", None)
            if getattr(result, "type", None) != "succeeded" or not self.recorder.active:
                return
            if not _first_time(self.batch_id, getattr(item, "custom_id", None)):
                return
            message = result.message
            model = text(getattr(message, "model", None)) or "unknown"
            attributes = {"anthropic.message_batch.id": self.batch_id}
            call = self.recorder.start("chat", self.provider, model, attributes)
            usage = usage_from_message(message, {})
            usage.service_tier = BATCH_TIER
            call.succeed(usage)
        except Exception:  # noqa: BLE001 - a malformed result must not break the caller's reading
            _logger.debug("spendwatch: could not record a batch result", exc_info=True)


class ResultsProxy(ObjectProxy):
    def __init__(self, decoder: Any, results: _Results) -> None:
        super().__init__(decoder)
        self._self_results = results

    def __iter__(self):
        observe = self._self_results.observe
        for item in self.__wrapped__:
            observe(item)
            yield item

    def __next__(self):
        item = self.__wrapped__.__next__()
        self._self_results.observe(item)
        return item


class AsyncResultsProxy(ObjectProxy):
    def __init__(self, decoder: Any, results: _Results) -> None:
        super().__init__(decoder)
        self._self_results = results

    async def __aiter__(self):
        observe = self._self_results.observe
        async for item in self.__wrapped__:
            observe(item)
            yield item

    async def __anext__(self):
        item = await self.__wrapped__.__anext__()
        self._self_results.observe(item)
        return item


def _batch_id(args: tuple, kwargs: dict) -> str | None:
    return text(kwargs.get("message_batch_id", args[0] if args else None))


def results_wrapper(recorder: CallRecorder):
    def traced(wrapped, instance, args, kwargs):
        decoder = wrapped(*args, **kwargs)
        if not is_instrumentation_enabled() or not recorder.active:
            return decoder
        batch_id = _batch_id(args, kwargs)
        if batch_id is None:
            return decoder
        return ResultsProxy(decoder, _Results(recorder, provider_of(instance), batch_id))

    return traced


def async_results_wrapper(recorder: CallRecorder):
    async def traced(wrapped, instance, args, kwargs):
        decoder = await wrapped(*args, **kwargs)
        if not is_instrumentation_enabled() or not recorder.active:
            return decoder
        batch_id = _batch_id(args, kwargs)
        if batch_id is None:
            return decoder
        return AsyncResultsProxy(decoder, _Results(recorder, provider_of(instance), batch_id))

    return traced
