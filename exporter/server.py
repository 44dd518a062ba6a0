"""The ``/metrics`` HTTP server: prometheus_client's WSGI app on a threaded server, with optional basic auth and TLS.

Usage::

    server = start_metrics_server(registry, ("127.0.0.1", 9464), basic_auth=("prometheus", "secret"))
    print(server.url)
    ...
    server.stop()

This is prometheus_client's ``start_wsgi_server`` with two changes it has no hook for: the app can be wrapped
(basic auth), and the TLS handshake runs on the request's own thread with a timeout, so one stalled client cannot
block every other scrape. Binding problems (port in use, unknown host) raise :class:`ConfigError` naming
``SPENDWATCH_METRICS_ADDRESS``: right for ``spendwatch serve``, whose only job is to serve. An app shares the address
with its other processes instead (:mod:`spendwatch.exporter.metrics_endpoint`), through :func:`try_start`.

Given the ledger's location, every answer carries ``X-Spendwatch-Ledger`` (a digest of where the ledger is) and
``X-Spendwatch-Pid``, so another process or ``spendwatch doctor`` can tell who serves which ledger.

Fork-aware: a forked child closes its copy of the listening socket (the parent keeps serving), and ``stop()`` in a
child never waits for a serving loop that only runs in the parent.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import logging
import os
import socket
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from spendwatch.exporter.ledger import is_postgres_location
from spendwatch.instrumentation.errors import ConfigError

__all__ = [
    "DEFAULT_ADDRESS",
    "LEDGER_HEADER",
    "PID_HEADER",
    "AddressInUseError",
    "MetricsServer",
    "ledger_fingerprint",
    "metrics_url",
    "serve_as_configured",
    "server_options",
    "start_metrics_server",
    "try_start",
]

_logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = ("127.0.0.1", 9464)
ADDRESS_ENV = "SPENDWATCH_METRICS_ADDRESS"
# A scrape answers in milliseconds; a client silent this long is gone or hostile, and holds a thread until then.
CLIENT_TIMEOUT_S = 30.0
# How often the serving loop looks for stop(); stop() waits up to this long (the default of 0.5 s slows shutdown).
_POLL_INTERVAL_S = 0.1
LEDGER_HEADER = "X-Spendwatch-Ledger"
PID_HEADER = "X-Spendwatch-Pid"


class AddressInUseError(Exception):
    """Another socket listens on the address; its message names the setting and the value."""


class MetricsServer:
    """A running ``/metrics`` server on a daemon thread."""

    def __init__(self, httpd: ThreadingWSGIServer, scheme: str) -> None:
        self._httpd = httpd
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(_POLL_INTERVAL_S,), name="spendwatch-metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = httpd.server_address[:2]
        self.url = metrics_url((self.host, self.port), tls=scheme == "https")
        _servers.add(self)

    @property
    def serves_here(self) -> bool:
        """False in a forked child: the serving loop runs in the process that started it."""
        return self._pid == os.getpid()

    def stop(self) -> None:
        """Stop serving and close the listening socket (requests in flight finish on their own threads)."""
        if self.serves_here:
            self._httpd.shutdown()
        # In a forked child shutdown() would wait for ever for the parent's loop; closing its copy is all there is.
        self._httpd.server_close()
        if self.serves_here:
            self._thread.join()

    def _close_inherited_socket(self) -> None:
        # The child's copy would keep the port bound, unanswered, after the parent exits; the parent's stays open.
        if not self.serves_here:
            self._httpd.socket.close()


_servers: weakref.WeakSet[MetricsServer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server._close_inherited_socket()


os.register_at_fork(after_in_child=_after_fork_in_child)


def serve_as_configured(registry, settings, routes: Mapping[str, Callable] | None = None) -> MetricsServer:
    """Serve ``registry`` (and ``routes``, see :func:`try_start`) where and how ``settings`` say: address, basic
    auth, TLS; answers name the ledger."""
    return start_metrics_server(registry, settings.metrics_address, routes=routes, **server_options(settings))


def server_options(settings) -> dict:
    """The keyword arguments of :func:`try_start` that ``settings`` give: credentials, TLS files, the ledger."""
    return {
        "basic_auth": settings.metrics_basic_auth,
        "certfile": settings.metrics_tls_certfile,
        "keyfile": settings.metrics_tls_keyfile,
        "ledger_location": settings.ledger,
    }


def start_metrics_server(
    registry,
    address: tuple[str, int] = DEFAULT_ADDRESS,
    **options,
) -> MetricsServer:
    """Serve ``registry`` at ``http(s)://host:port/metrics``; port 0 picks a free port (see ``.port``). Options as
    for :func:`try_start`; a port in use is a :class:`ConfigError` here."""
    try:
        return try_start(registry, address, **options)
    except AddressInUseError as busy:
        raise ConfigError(str(busy)) from None


def try_start(
    registry,
    address: tuple[str, int] = DEFAULT_ADDRESS,
    *,
    basic_auth: tuple[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    ledger_location: str | None = None,
    routes: Mapping[str, Callable] | None = None,
) -> MetricsServer:
    """As :func:`start_metrics_server`, but a port in use raises :class:`AddressInUseError`, for the caller to wait
    for the address; an unresolvable host or unusable TLS files are still a :class:`ConfigError`.

    ``routes`` serves more WSGI apps on the same address, behind the same auth and TLS: a path equal to a key, or
    under a key ending in ``/`` (``"/api/v1/"``), goes to that key's app; every other path is ``/metrics``."""
    app = make_wsgi_app(registry)
    if routes:
        app = _routed(app, dict(routes))
    if ledger_location is not None:
        app = _identified(app, ledger_fingerprint(ledger_location))
    if basic_auth is not None:
        app = require_basic_auth(app, *basic_auth)  # outermost: a refused client learns nothing, not even the ledger
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


def _routed(metrics_app: Callable, routes: dict[str, Callable]) -> Callable:
    """WSGI middleware: a request goes to the app of its route (see :func:`try_start`), else to ``metrics_app``."""
    prefixes = [(key, app) for key, app in routes.items() if key.endswith("/") and key != "/"]

    def routed(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        app = routes.get(path) or next((app for key, app in prefixes if path.startswith(key)), metrics_app)
        return app(environ, start_response)

    return routed


def ledger_fingerprint(location: str) -> str:
    """The same for every process over one ledger, and naming neither path nor credentials: a digest of a SQLite
    file's real path, or of a PostgreSQL URL's host, port and database."""
    key = os.path.realpath(location)
    if is_postgres_location(location):
        parts = urllib.parse.urlsplit(location)
        try:
            port = parts.port or 5432
        except ValueError:  # a malformed port: the URL's database part still tells ledgers apart
            port = None
        key = f"postgresql://{parts.hostname or ''}:{port}{parts.path}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _identified(app: Callable, fingerprint: str) -> Callable:
    """WSGI middleware: every answer says which ledger it shows and which process serves it."""

    def identified(environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list, exc_info=None):
            ours = [(LEDGER_HEADER, fingerprint), (PID_HEADER, str(os.getpid()))]
            return start_response(status, [*headers, *ours], exc_info)

        return app(environ, start)

    return identified


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
        if error.errno == errno.EADDRINUSE:
            raise AddressInUseError(f"{shown} cannot be served: the port is already in use") from None
        raise ConfigError(f"{shown} cannot be served: {error.strerror or error}") from None


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


def metrics_url(address: tuple[str, int], *, tls: bool) -> str:
    host, port = address
    return f"{'https' if tls else 'http'}://{_url_host(host)}:{port}/metrics"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
