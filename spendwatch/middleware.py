"""ASGI and WSGI middleware that attribute every LLM call made while serving a request to a category.

The category comes from a route map (longest path prefix wins), else from an incoming OpenTelemetry baggage entry
``spendwatch.category`` (so a front end can say which feature a request belongs to). Either way it is cleaned like
``spendwatch.category(...)``: a bad value becomes ``other`` and never breaks the request.

    app = SpendwatchASGIMiddleware(app, routes={"/annotate": "metabolite_identification"})   # FastAPI/Starlette
    app = SpendwatchWSGIMiddleware(app, routes={"/search": "literature_review"})              # Flask/Django

Without ``routes=``, the ``[routes]`` table of the ``SPENDWATCH_CONFIG`` file of the attached process is used.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage, context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from spendwatch.attribution import clean_category
from spendwatch.instrumentation.calls import CATEGORY_BAGGAGE_KEY

__all__ = ["SpendwatchASGIMiddleware", "SpendwatchWSGIMiddleware", "RouteCategories"]

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


def _attach(category: str | None):
    return None if category is None else context.attach(baggage.set_baggage(CATEGORY_BAGGAGE_KEY, category))


class SpendwatchASGIMiddleware:
    def __init__(self, app, routes: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.routes = RouteCategories(routes)

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((value.decode("latin-1") for key, value in scope.get("headers", ()) if key == b"baggage"), None)
        token = _attach(self.routes.category(scope.get("path", ""), header))
        try:
            return await self.app(scope, receive, send)
        finally:
            if token is not None:
                context.detach(token)


class SpendwatchWSGIMiddleware:
    def __init__(self, app, routes: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.routes = RouteCategories(routes)

    def __call__(self, environ, start_response):
        token = _attach(self.routes.category(environ.get("PATH_INFO", ""), environ.get("HTTP_BAGGAGE")))
        try:
            # The LLM calls happen while the app builds its response; a streamed body may make more later,
            # outside this context: they count as uncategorised.
            return self.app(environ, start_response)
        finally:
            if token is not None:
                context.detach(token)
