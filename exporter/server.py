"""The ``/metrics`` HTTP server: prometheus_client's WSGI app on a threaded server, with optional basic auth and TLS.

Usage::

    server = start_metrics_server(registry, ("127.0.0.1", 9464), basic_auth=("prometheus", "secret"))
    print(server.url)
    ...
    server.stop()

This is prometheus_client's ``start_wsgi_server`` with two changes it has no hook for: the app can be wrapped
(basic auth), and the TLS handshake runs on the request's own thread with a timeout, so one stalled client cannot
block every other scrape. Binding problems (port in use, unknown host) raise :class:`ConfigError` naming
``SPENDWATCH_METRICS_ADDRESS``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from spendwatch.instrumentation.errors import ConfigError

__all__ = ["DEFAULT_ADDRESS", "MetricsServer", "serve_as_configured", "start_metrics_server"]

_logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = ("127.0.0.1", 9464)
ADDRESS_ENV = "SPENDWATCH_METRICS_ADDRESS"
# A scrape answers in milliseconds; a client silent this long is gone or hostile, and holds a thread until then.
CLIENT_TIMEOUT_S = 30.0
# How often the serving loop looks for stop(); stop() waits up to this long (the default of 0.5 s slows shutdown).
_POLL_INTERVAL_S = 0.1


class MetricsServer:
    """A running ``/metrics`` server on a daemon thread."""

    def __init__(self, httpd: ThreadingWSGIServer, scheme: str) -> None:
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(_POLL_INTERVAL_S,), name="spendwatch-metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = httpd.server_address[:2]
        self.url = f"{scheme}://{_url_host(self.host)}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the listening socket (requests in flight finish on their own threads)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve_as_configured(registry, settings) -> MetricsServer:
    """Serve ``registry`` where and how ``settings`` say: address, basic auth, TLS."""
    return start_metrics_server(
        registry,
        settings.metrics_address,
        basic_auth=settings.metrics_basic_auth,
        certfile=settings.metrics_tls_certfile,
        keyfile=settings.metrics_tls_keyfile,
    )


def start_metrics_server(
    registry,
    address: tuple[str, int] = DEFAULT_ADDRESS,
    *,
    basic_auth: tuple[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``http(s)://host:port/metrics``; port 0 picks a free port (see ``.port``)."""
    app = make_wsgi_app(registry)
    if basic_auth is not None:
        app = require_basic_auth(app, *basic_auth)
    tls = _tls_context(certfile, keyfile) if certfile or keyfile else None
    httpd = _bind(address, app)
    if tls is not None:
        # No handshake in accept(): it happens on the request's thread, under the handler's timeout.
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    return MetricsServer(httpd, "https" if tls is not None else "http")


def require_basic_auth(app: Callable, user: str, password: str) -> Callable:
    """WSGI middleware: ``app`` for requests with these credentials, 401 with a challenge for any other."""
    expected_user, expected_password = user.encode(), password.encode()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        given_user, given_password = _basic_credentials(environ.get("HTTP_AUTHORIZATION", ""))
        # Both compared in constant time, and both always compared, so timing tells nothing about either.
        user_ok = hmac.compare_digest(given_user, expected_user)
        password_ok = hmac.compare_digest(given_password, expected_password)
        if user_ok & password_ok:
            return app(environ, start_response)
        headers = [
            ("WWW-Authenticate", 'Basic realm="spendwatch metrics", charset="UTF-8"'),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
        start_response("401 Unauthorized", headers)
        return [b"401 Unauthorized: this /metrics endpoint needs basic auth credentials\n"]

    return guarded


def _basic_credentials(header: str) -> tuple[bytes, bytes]:
    """(user, password) from an ``Authorization: Basic`` header; empty ones when it is missing or malformed."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, _, password = decoded.partition(b":")
    return user, password


class _Handler(WSGIRequestHandler):
    """Quiet (a scrape every few seconds is not news) and bounded in how long a client may stall."""

    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's parameter name
        pass


def _server_class(family: socket.AddressFamily) -> type[ThreadingWSGIServer]:
    class _Server(ThreadingWSGIServer):
        address_family = family

        def handle_error(self, request, client_address) -> None:
            # A failed TLS handshake or a dropped connection; the default prints a traceback to stderr.
            _logger.debug("spendwatch: /metrics request from %s failed", client_address, exc_info=True)

    return _Server


def _bind(address: tuple[str, int], app: Callable) -> ThreadingWSGIServer:
    host, port = address
    shown = f"{ADDRESS_ENV}={_url_host(host)}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"{shown} names a host that cannot be resolved ({error.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    try:
        return make_server(sockaddr[0], port, app, _server_class(family), handler_class=_Handler)
    except OSError as error:
        problem = "the port is already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        raise ConfigError(f"{shown} cannot be served: {problem}") from None


def _tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    if not certfile or not keyfile:
        raise ConfigError(
            "SPENDWATCH_METRICS_TLS_CERTFILE and SPENDWATCH_METRICS_TLS_KEYFILE must be set together "
            f"(got certfile={certfile!r}, keyfile={keyfile!r})"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"SPENDWATCH_METRICS_TLS_CERTFILE={certfile!r} with SPENDWATCH_METRICS_TLS_KEYFILE={keyfile!r} "
            f"cannot be loaded as a certificate and its key: {error}"
        ) from None
    return context


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
