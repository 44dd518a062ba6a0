"""Responses the caller reads later: ``messages.with_raw_response`` and ``messages.with_streaming_response``.

The caller gets the SDK's ``APIResponse`` behind a transparent proxy whose ``parse()`` ends the call from what it
returns (a stream goes behind our stream proxy); a response closed or dropped unparsed ends the call from its request
alone, flagged as estimated.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from anthropic import AsyncStream, Stream

from spendwatch.instrumentation.calls import Call
from spendwatch.instrumentation.unparsed_responses import AsyncParses, ClosesUnparsed, UnparsedResponseProxy

from .failures import end_failed
from .streams import proxy_stream
from .usage import usage_from_message, usage_from_request

__all__ = ["AsyncResponseProxy", "ResponseProxy", "end_unread"]

_logger = logging.getLogger(__name__)


class _ResponseProxyBase(UnparsedResponseProxy):
    def _self_adopt(self, parsed: Any) -> Any:
        call, self._self_call = self._self_call, None
        if call is not None:
            try:
                if isinstance(parsed, Stream | AsyncStream):
                    self._self_stream = proxy_stream(parsed, call, self._self_kwargs, isinstance(parsed, AsyncStream))
                else:
                    call.succeed(usage_from_message(parsed, self._self_kwargs))
            except Exception:  # noqa: BLE001
                _logger.debug("spendwatch: could not read a parsed response", exc_info=True)
                end_unread(call, self._self_kwargs)
        return self._self_stream if self._self_stream is not None else parsed

    def _self_end_failed(self, call: Call, error: BaseException) -> None:
        end_failed(call, error, self._self_kwargs, sent=True)

    def _self_unread_end(self, call: Call) -> Callable[[], None]:
        return functools.partial(end_unread, call, self._self_kwargs)


class ResponseProxy(ClosesUnparsed, _ResponseProxyBase):
    pass


class AsyncResponseProxy(AsyncParses, _ResponseProxyBase):
    pass


def end_unread(call: Call, kwargs: dict) -> None:
    """End ``call`` from the request alone (its answer was never read); never raises."""
    try:
        call.succeed(usage_from_request(kwargs))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record an unread call", exc_info=True)
