"""ASGI, WSGI and Django middleware that attribute every LLM call made while serving a request to a category.

The category comes from a route map (longest path prefix wins), else from an incoming OpenTelemetry baggage entry
``spendwatch.category`` (so a front end can say which feature a request belongs to). Either way it is cleaned like
``spendwatch.category(...)``: a bad value becomes ``other`` and never breaks the request. A
``spendwatch.category(...)`` block inside the handler still wins for the calls inside it.

    app = SpendwatchASGIMiddleware(app, routes={"/annotate": "metabolite_identification"})   # FastAPI/Starlette
    app = SpendwatchWSGIMiddleware(app, routes={"/search": "literature_review"})              # Flask/Django
    MIDDLEWARE = ["spendwatch.middleware.SpendwatchDjangoMiddleware", ...]   # Django; SPENDWATCH_ROUTES = {...}

Without ``routes=`` (or Django's ``SPENDWATCH_ROUTES`` setting), the ``[routes]`` table of the ``SPENDWATCH_CONFIG``
file of the attached process is used. Any placement works, outside or inside the framework's OpenTelemetry
instrumentation: the category is kept where a context that instrumentation attaches does not replace it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from spendwatch.attribution import clean_category
from spendwatch.instrumentation.calls import (
    CATEGORY_BAGGAGE_KEY,
    CategoryTokens,
    attach_category,
    detach_category,
    reset_category_variable,
    set_category_variable,
)

__all__ = ["SpendwatchASGIMiddleware", "SpendwatchWSGIMiddleware", "SpendwatchDjangoMiddleware", "RouteCategories"]

_propagator = W3CBaggagePropagator()


class RouteCategories:
    """Path → category by longest matching prefix; then the request's own baggage; else no category."""

    def __init__(self, routes: Mapping[str, str] | None = None) -> None:
        if routes is None:
            routes = _configured_routes()
        self._prefixes = sorted(((prefix, clean_category(name)) for prefix, name in routes.items()), reverse=True)

    def category(self, path: str, baggage_header: str | None) -> str | None:
        for prefix, name in self._prefixes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return name
        if baggage_header:
            incoming = baggage.get_baggage(CATEGORY_BAGGAGE_KEY, _propagator.extract({"baggage": baggage_header}))
            if incoming is not None:
                return clean_category(incoming)
        return None


def _configured_routes() -> Mapping[str, str]:
    from spendwatch import runtime

    attached = runtime.current()
    routes = attached.settings.raw.get("routes") if attached is not None else None
    return routes if isinstance(routes, dict) else {}


def _attach(category: str | None) -> CategoryTokens | None:
    return None if category is None else attach_category(category)


def _detach(tokens: CategoryTokens | None) -> None:
    if tokens is not None:
        detach_category(tokens)


class _CategorisedChunks:
    """A streaming response's chunks, each produced with the request's category in force.

    Django iterates a streaming response after the middleware has returned (over ASGI, in a worker thread), and LLM
    calls made while a generator yields would otherwise go uncategorised. Each step (and ``close``, which may run
    the generator's cleanup) sets the category and resets it at once, so nothing stays set between chunks. Only
    spendwatch's context variable is set: an OpenTelemetry WSGI middleware around keeps its own context (its
    request span) attached across chunks, and LLM call spans made while streaming stay its children.
    """

    def __init__(self, chunks: Iterable, category: str) -> None:
        self._body = chunks
        self._chunks = iter(chunks)
        self._category = category

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        token = set_category_variable(self._category)
        try:
            return next(self._chunks)
        finally:
            reset_category_variable(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is None:
            return
        token = set_category_variable(self._category)
        try:
            close()
        finally:
            reset_category_variable(token)


class _AttachedUntilClosed:
    """A WSGI body the server produces as it sends it, with the request's category attached until it is closed.

    LLM calls made while a generator yields belong to the request too. And an OpenTelemetry WSGI middleware inside
    this one keeps its own context attached the same way, until its body is closed: detaching ours first would
    leave its context, restored over ours, in the server's thread after the response. So ours goes last.
    """

    def __init__(self, body: Iterable, tokens: CategoryTokens) -> None:
        self._body = body
        self._chunks = iter(body)
        self._tokens: CategoryTokens | None = tokens

    def __iter__(self) -> Iterator:
        return self._chunks

    def __next__(self):
        return next(self._chunks)

    def close(self) -> None:
        tokens, self._tokens = self._tokens, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _detach(tokens)


class SpendwatchASGIMiddleware:
    def __init__(self, app, routes: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.routes = RouteCategories(routes)

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((value.decode("latin-1") for key, value in scope.get("headers", ()) if key == b"baggage"), None)
        # A streamed body is sent from inside this call (or from tasks that inherit its context), so it is covered.
        tokens = _attach(self.routes.category(scope.get("path", ""), header))
        try:
            return await self.app(scope, receive, send)
        finally:
            _detach(tokens)


class SpendwatchWSGIMiddleware:
    def __init__(self, app, routes: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.routes = RouteCategories(routes)

    def __call__(self, environ, start_response):
        tokens = _attach(self.routes.category(environ.get("PATH_INFO", ""), environ.get("HTTP_BAGGAGE")))
        try:
            body = self.app(environ, start_response)
            if tokens is not None and _is_streamed(body, environ):
                body, tokens = _AttachedUntilClosed(body, tokens), None
            return body
        finally:
            _detach(tokens)


def _is_streamed(body, environ) -> bool:
    """Whether the server will produce ``body`` as it sends it. A list or tuple is made already (and the server may
    take its length for Content-Length); a file wrapper must reach the server as it is, for its sendfile path."""
    if isinstance(body, list | tuple):
        return False
    file_wrapper = environ.get("wsgi.file_wrapper")
    return not (isinstance(file_wrapper, type) and isinstance(body, file_wrapper))


class SpendwatchDjangoMiddleware:
    """Django middleware (``settings.MIDDLEWARE``), for sync and async stacks; routes from ``SPENDWATCH_ROUTES``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction
        from django.conf import settings

        self.get_response = get_response
        self.routes = RouteCategories(getattr(settings, "SPENDWATCH_ROUTES", None))
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._async:
            return self._serve_async(request)
        category = self._category(request)
        tokens = _attach(category)
        try:
            response = self.get_response(request)
        finally:
            _detach(tokens)
        return _categorise_stream(response, category)

    async def _serve_async(self, request):
        category = self._category(request)
        tokens = _attach(category)
        try:
            response = await self.get_response(request)
        finally:
            _detach(tokens)
        return _categorise_stream(response, category)

    def _category(self, request) -> str | None:
        return self.routes.category(request.path_info, request.META.get("HTTP_BAGGAGE"))


def _categorise_stream(response, category: str | None):
    # Django iterates a streaming response's content after the middleware returned (over ASGI, a sync one in a
    # worker thread). Async content is iterated in the handler's own task and is left as it is.
    if category is not None and getattr(response, "streaming", False) and not getattr(response, "is_async", False):
        response.streaming_content = _CategorisedChunks(response.streaming_content, category)
    return response
