"""The HTTP plumbing the local stubs share: a server on a daemon thread, a quiet handler, and a foreground ``main``.

Each stub (OpenAI, Anthropic, Gemini, Bedrock, Ollama) and the tests' cassette replay server subclasses
:class:`LocalHTTPServer` and names its handler, a :class:`StubHandler` that only decides what to answer. The handler
reaches the server object as ``self.server.owner``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LocalHTTPServer", "RecordingServer", "StubHandler", "argument_parser", "serve_in_foreground"]

_POLL_SECONDS = 0.02  # stop() waits up to this long; serve_forever's default 0.5 s slows test suites


class LocalHTTPServer:
    """An HTTP server serving ``handler`` from a daemon thread (127.0.0.1 and an ephemeral port by default); the
    handler reaches this object as ``self.server.owner``."""

    thread_name = "spendwatch-local-http"

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._httpd: _HTTPServer | None = None

    def start(self) -> str:
        """Bind and serve; returns ``base_url``."""
        if self._httpd is None:
            self._httpd = _HTTPServer((self.host, self.port), self.handler_class())
            self._httpd.owner = self
            self.port = self._httpd.server_address[1]
            serve = functools.partial(self._httpd.serve_forever, poll_interval=_POLL_SECONDS)
            threading.Thread(target=serve, name=self.thread_name, daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``: the ``azure_endpoint`` of ``openai.AzureOpenAI``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"


class RecordingServer(LocalHTTPServer):
    """A :class:`LocalHTTPServer` that keeps the requests it was sent, without credentials, and the usage it reported.

    Its handler calls ``_record_request`` and ``_record_usage``; ``secret_headers`` names the credentials left out.
    """

    secret_headers: tuple[str, ...] = ("authorization",)

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._usage: list[Any] = []

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Requests, oldest first: where each was sent (``path``, with ``method`` on some stubs), its ``headers``
        (lower-case, no credentials) and ``body``."""
        with self._lock:
            return list(self._requests)

    @property
    def usage_log(self) -> list[Any]:
        """The usage each response reported, oldest first (none for errors or usage-less replies)."""
        with self._lock:
            return list(self._usage)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._usage.clear()

    def _record_request(self, headers: Mapping[str, str], body: Any, **where: str) -> None:
        kept = {k.lower(): v for k, v in headers.items() if k.lower() not in self.secret_headers}
        with self._lock:
            self._requests.append({**where, "headers": kept, "body": body})

    def _record_usage(self, usage: Any) -> None:
        with self._lock:
            self._usage.append(usage)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up stop()
    owner: LocalHTTPServer


class StubHandler(BaseHTTPRequestHandler):
    """A keep-alive handler that logs nothing and sends whole or chunked bodies."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up, e.g. mid-stream
            super().handle()

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_body(self, status: int, content_type: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_chunked(
        self, content_type: str, events: list[bytes], cut: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        """A 200 of ``events``, a chunk each; when ``cut``, only the first half, then the connection closes."""
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events[: len(events) // 2] if cut else events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if cut:
            self.close_connection = True  # the client sees the body end without its last chunk
        else:
            self.wfile.write(b"0\r\n\r\n")


def argument_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of ``python -m <module>``: ``--host`` and ``--port``, and the stub's own options after."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the default)")
    return parser


def serve_in_foreground(server: LocalHTTPServer, *, print_origin: bool = False) -> None:
    """Start ``server``, print its ``base_url`` (its origin with ``print_origin``), and serve until interrupted."""
    base_url = server.start()
    print(server.origin if print_origin else base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
