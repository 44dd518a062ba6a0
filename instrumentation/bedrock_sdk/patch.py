"""The wrapper of ``botocore.client.BaseClient._make_api_call``, through which every boto3 client call passes.

botocore builds each client's methods at run time, so the one place to catch a Bedrock Runtime call is the method
they all call (as the OpenTelemetry botocore instrumentation does). A call of another operation returns at the first
test, a dict lookup of its name; a Bedrock Runtime operation of another service's name at the second. The wrapper
opens a :class:`~spendwatch.instrumentation.calls.Call`, lets botocore do exactly what it would have done (retries
included: one span per call, whatever its attempts), and ends the call from the answer: at once for Converse and
InvokeModel (whose body is read and handed back as an equal ``StreamingBody``), when the caller has read the event
stream for ConverseStream and InvokeModelWithResponseStream (handed back behind a transparent proxy).
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from botocore import exceptions as botocore_errors
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import ObjectProxy

from spendwatch.instrumentation import admission
from spendwatch.instrumentation.admission import CallRequest
from spendwatch.instrumentation.bedrock_sdk.refusals import REFUSALS
from spendwatch.instrumentation.bedrock_sdk.streams import ConverseStreamState, EventStreamProxy, InvokeStreamState
from spendwatch.instrumentation.bedrock_sdk.usage import (
    body_json,
    cap_location,
    converse_input_bound,
    converse_usage,
    headers_of,
    invoke_input_bound,
    invoke_usage,
    request_estimate,
    request_model,
)
from spendwatch.instrumentation.calls import Call, CallRecorder, safe_instrumentation
from spendwatch.instrumentation.errors import BudgetExceededError
from spendwatch.instrumentation.openai_sdk.usage import count

__all__ = ["PROVIDER", "SERVICE", "api_call_wrapper"]

_logger = logging.getLogger(__name__)

PROVIDER = "aws.bedrock"
SERVICE = "bedrock-runtime"
CONVERSE, CONVERSE_STREAM = "Converse", "ConverseStream"
INVOKE, INVOKE_STREAM = "InvokeModel", "InvokeModelWithResponseStream"
_OPERATIONS = frozenset({CONVERSE, CONVERSE_STREAM, INVOKE, INVOKE_STREAM})
_CONVERSE_OPERATIONS = frozenset({CONVERSE, CONVERSE_STREAM})
# Converse's inferenceConfig → the conventions' request attributes.
_INFERENCE_ATTRIBUTES = (
    ("maxTokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("topP", "gen_ai.request.top_p"),
)
_client_attributes: dict[tuple, dict] = {}  # per (endpoint, region): a process has few clients
_MAX_CLIENTS = 256


def _is_bedrock_runtime(client: Any) -> bool:
    try:
        return client.meta.service_model.service_name == SERVICE
    except Exception:  # noqa: BLE001 - not a botocore client as we know it
        return False


def _endpoint_attributes(client: Any) -> dict:
    """``server.address``, ``server.port`` and ``cloud.region`` of a client, worked out once per endpoint."""
    meta = client.meta
    key = (meta.endpoint_url, meta.region_name)
    attributes = _client_attributes.get(key)
    if attributes is None:
        parts = urlsplit(meta.endpoint_url or "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = {"server.address": parts.hostname, "server.port": port, "cloud.region": meta.region_name}
        attributes = {name: value for name, value in found.items() if value is not None}
        if len(_client_attributes) < _MAX_CLIENTS:
            _client_attributes[key] = attributes
    return attributes


def _request_attributes(client: Any, api_params: dict, capture: bool) -> dict:
    attributes = _endpoint_attributes(client)
    config = api_params.get("inferenceConfig")
    if not capture and config is None:
        return attributes  # the usual call; recorder.start copies it
    attributes = dict(attributes)
    if isinstance(config, dict):
        for argument, attribute in _INFERENCE_ATTRIBUTES:
            value = config.get(argument)
            if type(value) in (int, float):
                attributes[attribute] = value
    if capture:
        attributes["gen_ai.input.messages"] = _input_content(api_params)
    return attributes


def _input_content(api_params: dict) -> str:
    body = api_params.get("body")
    if body is not None:
        return body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body)
    return json.dumps({key: api_params[key] for key in ("system", "messages") if key in api_params}, default=str)


def _operation(kind: str, api_params: dict) -> str:
    if kind in _CONVERSE_OPERATIONS:
        return "chat"
    body = api_params.get("body")
    if isinstance(body, bytes) and b'"messages"' in body or isinstance(body, str) and '"messages"' in body:
        return "chat"
    return "text_completion"


def _start(recorder: CallRecorder, kind: str, client: Any, api_params: dict, capture: bool) -> Call | None:
    try:
        model = request_model(api_params.get("modelId"))
        attributes = _request_attributes(client, api_params, capture)
        call = recorder.start(_operation(kind, api_params), PROVIDER, model, attributes, guarded=True)
        call.activate()
        return call
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not start a call span", exc_info=True)
        return None


def _describe(call: Call, kind: str, api_params: dict) -> tuple[CallRequest, Any]:
    """The guard's question, and what a degrade is applied to: the parsed InvokeModel body (None for Converse)."""
    if kind in _CONVERSE_OPERATIONS:
        config = api_params.get("inferenceConfig")
        cap = count(config.get("maxTokens")) if isinstance(config, dict) else None
        bound, body = converse_input_bound(api_params), None
    else:
        raw = api_params.get("body")
        body = body_json(raw) if isinstance(raw, bytes | bytearray | str) else None
        cap = cap_location(call.request_model, body)[1]
        bound = invoke_input_bound(raw)
    request = CallRequest(call.provider, call.operation, call.request_model, call.category, bound, cap, "max_tokens")
    return request, body


def _admit(guard: admission.Guard, call: Call, kind: str, api_params: dict) -> dict:
    """Ask the budget guard; returns the API parameters to send (a guard may degrade them). Its refusal is raised,
    as a ``botocore.exceptions.ClientError`` too (see refusals)."""
    try:
        request, body = _describe(call, kind, api_params)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not describe a call to the guard", exc_info=True)
        return api_params
    call.ticket = ticket = admission.admit(guard, request, REFUSALS[kind])
    if ticket is None or not ticket.request_changes:
        return api_params
    try:
        degraded = _degraded(call, kind, api_params, body, ticket.request_changes)
        call.span.set_attribute("spendwatch.guard.degraded", json.dumps(ticket.request_changes, sort_keys=True))
        return degraded
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not apply the guard's changes", exc_info=True)
        return api_params


def _degraded(call: Call, kind: str, api_params: dict, body: Any, changes: dict) -> dict:
    """``api_params`` with the guard's changes: another model, a lower output cap (where this family keeps it)."""
    params = dict(api_params)
    if "model" in changes:
        params["modelId"] = changes["model"]
    cap = changes.get("max_tokens")
    if cap is None:
        return params
    if kind in _CONVERSE_OPERATIONS:
        params["inferenceConfig"] = {**(params.get("inferenceConfig") or {}), "maxTokens": cap}
        return params
    path = cap_location(call.request_model, body)[0]
    if path is None or not isinstance(body, dict):
        return params  # a family whose cap we do not know: the guard priced its worst case without one
    *outer, last = path
    target = body
    for key in outer:
        target = target.setdefault(key, {})
    target[last] = cap
    params["body"] = json.dumps(body).encode()
    return params


def _may_have_been_billed(error: BaseException) -> bool:
    """Whether the model may have run: not for an error answer (``ClientError``, the guard's refusal too), no
    connection, or botocore's own checks before sending (parameters, credentials, region); yes for an answer lost or
    cut after the request was sent (``HTTPClientError``: a read timeout, a closed connection), and for anything else
    (an answer botocore could not parse, an interrupt while waiting)."""
    if isinstance(error, ClientError | BudgetExceededError | botocore_errors.ConnectionError):
        return False
    if isinstance(error, botocore_errors.HTTPClientError | botocore_errors.IncompleteReadError):
        return True
    return not isinstance(error, botocore_errors.BotoCoreError)


def end_failed(call: Call, error: BaseException, api_params: dict) -> None:
    """End ``call`` as failed; one that may have been billed is counted from its request, flagged as estimated."""
    try:
        call.deactivate()
        call.fail(error, request_estimate(api_params) if _may_have_been_billed(error) else None)
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a failed call", exc_info=True)


class _UnreadBody(ObjectProxy):
    """The answer's body, which failed when read for its usage: the caller's read fails the same way."""

    def __init__(self, body: Any, error: BaseException) -> None:
        super().__init__(body)
        self._self_error = error

    def read(self, *args, **kwargs):
        raise self._self_error


def _finish_invoke(call: Call, result: dict, api_params: dict, capture: bool) -> None:
    body = result.get("body")
    if not hasattr(body, "read"):  # no body to read usage from: the token-count headers, else the request
        call.succeed(invoke_usage(None, headers_of(result), api_params))
        return
    try:
        data = body.read()
    except Exception as error:  # noqa: BLE001 - the caller meets the same error when it reads the body
        result["body"] = _UnreadBody(body, error)
        call.fail(error, request_estimate(api_params))
        return
    result["body"] = StreamingBody(io.BytesIO(data), len(data))
    content = {"gen_ai.output.messages": data.decode("utf-8", "replace")} if capture else None
    call.succeed(invoke_usage(body_json(data), headers_of(result), api_params), content)


def _finish(call: Call, kind: str, result: Any, api_params: dict, capture: bool) -> Any:
    """End ``call`` from ``result`` (or hand it a stream proxy); returns ``result``, the caller's own dict."""
    try:
        call.deactivate()
        if kind == CONVERSE:
            content = {"gen_ai.output.messages": json.dumps(result.get("output"), default=str)} if capture else None
            call.succeed(converse_usage(result, api_params), content)
        elif kind == CONVERSE_STREAM:
            result["stream"] = EventStreamProxy(result["stream"], call, ConverseStreamState(api_params))
        elif kind == INVOKE:
            _finish_invoke(call, result, api_params, capture)
        else:
            result["body"] = EventStreamProxy(result["body"], call, InvokeStreamState(api_params, headers_of(result)))
    except Exception:  # noqa: BLE001
        _logger.debug("spendwatch: could not record a call", exc_info=True)
        with safe_instrumentation("counting a call from its request"):
            call.succeed(request_estimate(api_params))  # counted rather than lost (a no-op if it ended)
    return result


def api_call_wrapper(recorder: CallRecorder, capture: bool):
    def traced(wrapped, instance, args, kwargs):
        if (
            len(args) != 2
            or args[0] not in _OPERATIONS
            or not recorder.active
            or not is_instrumentation_enabled()
            or not _is_bedrock_runtime(instance)
        ):
            return wrapped(*args, **kwargs)
        kind, api_params = args
        call = _start(recorder, kind, instance, api_params, capture)
        if call is None:
            return wrapped(*args, **kwargs)
        guard = admission.current_guard()
        if guard is not None:
            try:
                api_params = _admit(guard, call, kind, api_params)
            except BudgetExceededError as refusal:
                end_failed(call, refusal, api_params)
                raise
        call.leaving()
        try:
            result = wrapped(kind, api_params, **kwargs)
        except BaseException as error:
            end_failed(call, error, api_params)
            raise
        return _finish(call, kind, result, api_params, capture)

    return traced
