"""The async twin of :mod:`.patch`: ``aiobotocore``'s ``AioBaseClient._make_api_call`` (``aioboto3`` clients, and so
LightRAG's ``lightrag.llm.bedrock`` binding), which never passes through botocore's own ``_make_api_call``.

The same call, guard and usage as the sync wrapper. What differs is reading the answer: an InvokeModel body is read
with ``await`` and handed back as :class:`ReadBody` (``read``/``json``/``text`` answer the same bytes); a stream is
handed back behind :class:`AsyncEventStreamProxy`, which the caller reads with ``async for``.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import ObjectProxy

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.bedrock_sdk import patch
from spendwatch.instrumentation.bedrock_sdk.streams import (
    ConverseStreamState,
    EventStreamProxy,
    InvokeStreamState,
)
from spendwatch.instrumentation.bedrock_sdk.usage import body_json, headers_of, invoke_usage, request_estimate
from spendwatch.instrumentation.calls import Call, CallRecorder, safe_instrumentation
from spendwatch.instrumentation.errors import BudgetExceededError

__all__ = ["AsyncEventStreamProxy", "ReadBody", "api_call_wrapper"]

_logger = logging.getLogger(__name__)


class ReadBody(ObjectProxy):
    """An InvokeModel body already read for its usage: reading it again gives the same bytes."""

    def __init__(self, body: Any, data: bytes) -> None:
        super().__init__(body)
        self._self_data = io.BytesIO(data)

    async def read(self, amt: int | None = None) -> bytes:
        return self._self_data.read(-1 if amt is None else amt)

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return self._self_data.getvalue().decode(encoding or "utf-8", errors)

    async def json(self, *args: Any, loads: Any = json.loads, **kwargs: Any) -> Any:  # aiohttp's ClientResponse.json
        return loads(self._self_data.getvalue().decode("utf-8"))


class AsyncEventStreamProxy(EventStreamProxy):
    """``aiobotocore``'s ``AioEventStream`` behind the sync proxy's ending rules, read with ``async for``."""

    def __aiter__(self):
        return self._self_aiterate()

    async def _self_aiterate(self):
        observe = self._self_state.observe
        try:
            async for event in self.__wrapped__:
                try:
                    observe(event)
                except Exception:  # noqa: BLE001 - a malformed event must not break the caller's stream
                    _logger.debug("spendwatch: could not read a stream event", exc_info=True)
                yield event
        except GeneratorExit:  # the caller left the loop: it may close or drop the stream later
            raise
        except BaseException as error:
            self._self_end(error)
            raise
        self._self_end()


async def _finish_invoke(call: Call, result: dict, api_params: dict, capture: bool) -> None:
    body = result.get("body")
    if not hasattr(body, "read"):
        call.succeed(invoke_usage(None, headers_of(result), api_params))
        return
    try:
        data = await body.read()
    except Exception as error:  # noqa: BLE001 - the caller meets the same error when it reads the body
        result["body"] = patch._UnreadBody(body, error)
        call.fail(error, request_estimate(api_params))
        return
    result["body"] = ReadBody(body, data)
    content = {"gen_ai.output.messages": data.decode("utf-8", "replace")} if capture else None
    call.succeed(invoke_usage(body_json(data), headers_of(result), api_params), content)


async def _finish(call: Call, kind: str, result: Any, api_params: dict, capture: bool) -> Any:
    try:
        if kind == patch.CONVERSE_STREAM:
            call.deactivate()
            result["stream"] = AsyncEventStreamProxy(result["stream"], call, ConverseStreamState(api_params))
        elif kind == patch.INVOKE_STREAM:
            call.deactivate()
            state = InvokeStreamState(api_params, headers_of(result))
            result["body"] = AsyncEventStreamProxy(result["body"], call, state)
        elif kind == patch.INVOKE:
            call.deactivate()
            await _finish_invoke(call, result, api_params, capture)
        else:
            return patch._finish(call, kind, result, api_params, capture)  # Converse: a plain dict, as in sync
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        with safe_instrumentation("counting a call from its request"):
            call.succeed(request_estimate(api_params))  # counted rather than lost (a no-op if it ended)
    return result


def api_call_wrapper(recorder: CallRecorder, capture: bool):
    async def traced(wrapped, instance, args, kwargs):
        if (
            len(args) != 2
            or args[0] not in patch._OPERATIONS
            or not recorder.active
            or not is_instrumentation_enabled()
            or not patch._is_bedrock_runtime(instance)
        ):
            return await wrapped(*args, **kwargs)
        kind, api_params = args
        call = patch._start(recorder, kind, instance, api_params, capture)
        if call is None:
            return await wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                api_params = patch._admit(guard, call, kind, api_params)
            except BudgetExceededError as refusal:
                patch.end_failed(call, refusal, api_params)
                raise
        call.leaving()
        try:
            result = await wrapped(kind, api_params, **kwargs)
        except BaseException as error:
            patch.end_failed(call, error, api_params)
            raise
        return await _finish(call, kind, result, api_params, capture)

    return traced
