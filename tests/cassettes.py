"""Replay the real OpenAI API recordings (vcrpy cassettes) through the real ``openai`` SDK.

The 71 cassettes live outside the repository, in ``<repo>/../shared/fixtures/openai-cassettes``
(CI clones ``shared/`` beside the repository). A test that needs them calls
``require_cassettes()`` first: it skips when the folder is absent, but fails when ``CI=true``.

    @pytest.mark.parametrize("path", cassette_params())
    def test_something(path):
        require_cassettes()
        interactions = load_cassette(path)
        with ReplayServer(interactions) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
            results = [call_sync(client, interaction) for interaction in interactions]
        interactions[0].response.json()["usage"]  # what the instrumentation should have recorded

``Interaction.recorded_usage()`` is the usage the API reported, to compare with what was recorded.
``sdk_call`` turns a recorded request back into the SDK call that sends it; the one body field
openai 3.x adds on its own is listed in ``SDK_DEFAULTS`` (see ``expected_sent_body``).
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import yaml
from openai.resources.chat.completions import Completions as ChatCompletions
from openai.resources.completions import Completions
from openai.resources.embeddings import Embeddings
from openai.resources.responses import Responses

from spendwatch.demo.local_http import LocalHTTPServer, StubHandler

__all__ = [
    "CASSETTE_DIR",
    "SDK_DEFAULTS",
    "Interaction",
    "RecordedRequest",
    "RecordedResponse",
    "ReplayServer",
    "call_async",
    "call_sync",
    "cassette_params",
    "cassette_paths",
    "cassettes_available",
    "expected_sent_body",
    "load_cassette",
    "require_cassettes",
    "sdk_call",
]

CASSETTE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "openai-cassettes"

# Recorded path → SDK method, and the sync resource class whose signature says which keys are parameters.
_RESOURCES: dict[str, tuple[str, type]] = {
    "/v1/chat/completions": ("chat.completions.create", ChatCompletions),
    "/v1/completions": ("completions.create", Completions),
    "/v1/embeddings": ("embeddings.create", Embeddings),
    "/v1/responses": ("responses.create", Responses),
}
# Body fields openai 3.x sends although the call did not give them (older SDKs made the recordings).
SDK_DEFAULTS: dict[str, dict[str, Any]] = {"/v1/embeddings": {"encoding_format": "base64"}}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's is ~10x faster on the embedding bodies
_NOT_REPLAYED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    uri: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes  # decoded (never gzip)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/json")

    @property
    def is_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        """The JSON body (not for streams: use ``events()``)."""
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The JSON payloads of a recorded SSE stream, ``[DONE]`` left out."""
        lines = (line.removeprefix("data:").strip() for line in self.text.splitlines() if line.startswith("data:"))
        return [json.loads(data) for data in lines if data != "[DONE]"]


@dataclass(frozen=True)
class Interaction:
    request: RecordedRequest
    response: RecordedResponse
    cassette: str = ""  # the file's stem, for messages

    @property
    def is_error(self) -> bool:
        return self.response.status >= 400

    def recorded_usage(self) -> dict[str, Any] | None:
        """The ``usage`` the API reported: the body's, a stream's usage chunk, or ``response.completed``'s."""
        if self.is_error:
            return None
        payloads = self.response.events() if self.response.is_stream else [self.response.json()]
        usages = [(payload.get("response") or payload).get("usage") for payload in payloads]
        return next((usage for usage in reversed(usages) if usage), None)


# --- locating and loading ----------------------------------------------------------------------


def cassettes_available() -> bool:
    return CASSETTE_DIR.is_dir() and any(CASSETTE_DIR.glob("*.yaml"))


def require_cassettes() -> None:
    """Skip the calling test when the recordings are absent; fail instead when ``CI=true``."""
    if cassettes_available():
        return
    reason = f"the OpenAI recordings are not at {CASSETTE_DIR} (clone the shared/ folder beside the repository)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def cassette_paths() -> list[Path]:
    return sorted(CASSETTE_DIR.glob("*.yaml")) if CASSETTE_DIR.is_dir() else []


def cassette_params() -> list[Any]:
    """``pytest.param`` per cassette (id: the file's stem), or one placeholder that ``require_cassettes`` skips."""
    paths = cassette_paths()
    if not paths:
        return [pytest.param(None, id="cassettes-missing")]
    return [pytest.param(path, id=path.stem) for path in paths]


def load_cassette(path: str | Path) -> list[Interaction]:
    path = Path(path)
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    return [_interaction(item, path.stem) for item in data["interactions"]]


def _interaction(item: dict[str, Any], cassette: str) -> Interaction:
    request, response = item["request"], item["response"]
    raw = _body_bytes(request.get("body"))
    recorded_request = RecordedRequest(
        method=request["method"].upper(),
        uri=request["uri"],
        headers=_headers(request.get("headers")),
        body=json.loads(raw) if raw else None,
    )
    headers = _headers(response.get("headers"))
    body = _decompress(_body_bytes(response.get("body")), headers.pop("content-encoding", ""))
    status = response["status"]
    return Interaction(
        recorded_request, RecordedResponse(status["code"], status.get("message", ""), headers, body), cassette
    )


def _body_bytes(body: Any) -> bytes:
    """vcrpy stores a body as ``{string: str}``, ``{string: !!binary}``, a bare string, or null."""
    if isinstance(body, dict):
        body = body.get("string")
    if body is None:
        return b""
    return body if isinstance(body, bytes) else body.encode()


def _headers(headers: dict[str, Any] | None) -> dict[str, str]:
    """vcrpy keeps each header as a list of values (sometimes as a bare scalar)."""
    result = {}
    for name, value in (headers or {}).items():
        values = value if isinstance(value, list) else [value]
        result[name.lower()] = ", ".join(str(item) for item in values)
    return result


def _decompress(body: bytes, encoding: str) -> bytes:
    if "gzip" in encoding:
        return gzip.decompress(body)
    if "deflate" in encoding:
        return zlib.decompress(body)
    return body


# --- replay server -----------------------------------------------------------------------------


class ReplayServer(LocalHTTPServer):
    """Serves the recorded responses, in order, to requests with the same method and path.

    ``received`` lists ``(method, path, parsed body)`` of every request; a request with no recorded
    interaction left gets a 501 whose message says so.
    """

    thread_name = "cassette-replay"

    def __init__(self, interactions: list[Interaction]) -> None:
        super().__init__()
        self.interactions = list(interactions)
        self.received: list[tuple[str, str, Any]] = []
        self._pending = list(interactions)
        self._lock = threading.Lock()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _ReplayHandler

    @property
    def unused(self) -> list[Interaction]:
        with self._lock:
            return list(self._pending)

    def _take(self, method: str, path: str, body: Any) -> Interaction | None:
        with self._lock:
            self.received.append((method, path, body))
            for index, interaction in enumerate(self._pending):
                if interaction.request.method == method and interaction.request.path == path:
                    return self._pending.pop(index)
        return None


class _ReplayHandler(StubHandler):
    def _answer(self) -> None:
        raw = self.read_body()
        path = urlsplit(self.path).path
        interaction = self.server.owner._take(self.command, path, json.loads(raw) if raw else None)
        if interaction is None:
            error = {"message": f"no recorded interaction left for {self.command} {path}", "type": "replay_error"}
            self._respond(501, "Not Implemented", {"content-type": "application/json"}, json.dumps({"error": error}))
            return
        response = interaction.response
        self._respond(response.status, response.reason, response.headers, response.body)

    do_GET = do_POST = do_DELETE = _answer

    def _respond(self, status: int, reason: str, headers: dict[str, str], body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status, reason or None)
        for name, value in headers.items():
            if name not in _NOT_REPLAYED_HEADERS:
                self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- recorded request → SDK call ---------------------------------------------------------------


def sdk_call(interaction: Interaction) -> tuple[str, dict[str, Any]]:
    """The SDK method (dotted, from the client) and keyword arguments that send the recorded request.

    Body keys the method does not take as parameters travel in ``extra_body``.
    """
    path = interaction.request.path
    if path not in _RESOURCES:
        raise ValueError(f"{interaction.cassette}: no SDK call known for {interaction.request.method} {path}")
    resource_path, resource_class = _RESOURCES[path]
    parameters = inspect.signature(resource_class.create).parameters
    body = dict(interaction.request.body or {})
    kwargs = {key: value for key, value in body.items() if key in parameters}
    extra = {key: value for key, value in body.items() if key not in parameters}
    if extra:
        kwargs["extra_body"] = extra
    return resource_path, kwargs


def expected_sent_body(interaction: Interaction) -> dict[str, Any]:
    """The body openai 3.x sends for ``sdk_call(interaction)``: the recorded one plus ``SDK_DEFAULTS``."""
    return SDK_DEFAULTS.get(interaction.request.path, {}) | (interaction.request.body or {})


def call_sync(client: openai.OpenAI, interaction: Interaction) -> Any:
    """Make the recorded call; returns the result, a stream's chunks (all consumed), or the API error."""
    resource_path, kwargs = sdk_call(interaction)
    try:
        result = attrgetter(resource_path)(client)(**kwargs)
        return list(result) if kwargs.get("stream") else result
    except openai.APIError as error:
        return error


async def call_async(client: openai.AsyncOpenAI, interaction: Interaction) -> Any:
    """``call_sync`` for ``openai.AsyncOpenAI``."""
    resource_path, kwargs = sdk_call(interaction)
    try:
        result = await attrgetter(resource_path)(client)(**kwargs)
        return [chunk async for chunk in result] if kwargs.get("stream") else result
    except openai.APIError as error:
        return error
