"""Per-route categories in real web apps served over HTTP: FastAPI, Starlette, Flask and Django, with and without
their OpenTelemetry instrumentation, the spendwatch middleware outside it or inside it.

Those instrumentations attach a context extracted from the request headers, which starts empty: a category kept
only in the context's baggage by a middleware around them was lost. Each handler makes a real openai SDK call to
the local stub; the category of each recorded call is checked.
"""

from __future__ import annotations

import threading
import urllib.request
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import django
import fastapi
import flask
import openai
import pytest
import uvicorn
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path as url
from opentelemetry.instrumentation import asgi as otel_asgi
from opentelemetry.instrumentation import wsgi as otel_wsgi
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import spendwatch
from spendwatch.middleware import SpendwatchASGIMiddleware, SpendwatchWSGIMiddleware
from tests.conftest import FAKE_API_KEY
from tests.servers import wait_until

pytestmark = pytest.mark.usefixtures("instrument_openai")

ROUTES = {"/annotate": "metabolite_identification", "/explicit": "route_category"}
MESSAGES = [{"role": "user", "content": "hi"}]
SERVER_TIMEOUT = 60.0

# (path, the client's baggage header, the category its LLM call is recorded with), asked in this order.
REQUESTS = [
    ("/annotate", None, "metabolite_identification"),
    ("/annotate", "spendwatch.category=client_says", "metabolite_identification"),  # the route beats the client
    ("/search", "spendwatch.category=literature_review", "literature_review"),  # no route: the client's baggage
    ("/search", "other=1,spendwatch.category=bad%20value", "other"),  # cleaned like spendwatch.category()
    ("/explicit", None, "handler_choice"),  # spendwatch.category() in the handler beats the route
    ("/annotate/stream", None, "metabolite_identification"),  # a call made while the body streams
    ("/annotate/sync", None, "metabolite_identification"),  # a sync handler, which ASGI frameworks run in a thread
    ("/search", None, None),  # nothing set, nothing left over from the requests before
]


# --- the apps ------------------------------------------------------------------------------------------------------


def _starlette_routes(stub_url: str) -> list:
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=stub_url, max_retries=0)
    sync_client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub_url, max_retries=0)

    async def plain(request):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return PlainTextResponse("ok")

    async def explicit(request):
        with spendwatch.category("handler_choice"):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return PlainTextResponse("ok")

    async def body():  # the call comes after the first chunk is sent
        yield b"o"
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        yield b"k"

    async def stream(request):
        return StreamingResponse(body())

    def in_a_thread(request):
        sync_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return PlainTextResponse("ok")

    return [
        Route("/annotate", plain),
        Route("/search", plain),
        Route("/explicit", explicit),
        Route("/annotate/stream", stream),
        Route("/annotate/sync", in_a_thread),
    ]


def fastapi_app(stub_url: str, instrumentation: str, placement: str, tracer_provider):
    off = {"tracing": False, "metrics": False, "logs": False}
    native = {"tracer_provider": tracer_provider, "metrics": False, "logs": False}
    app = fastapi.FastAPI(telemetry=native if instrumentation == "fastapi-native" else off)
    app.router.routes.extend(_starlette_routes(stub_url))
    if instrumentation == "opentelemetry-instrumentation-fastapi":
        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    if instrumentation == "opentelemetry-instrumentation-asgi":
        return _wrap_asgi(app, placement, tracer_provider)
    if placement == "inner":  # in the app's own middleware stack, inside its telemetry or instrumentation
        app.add_middleware(SpendwatchASGIMiddleware, routes=ROUTES)
        return app
    return SpendwatchASGIMiddleware(app, routes=ROUTES)


def starlette_app(stub_url: str, instrumentation: str, placement: str, tracer_provider):
    app = Starlette(routes=_starlette_routes(stub_url))
    if instrumentation == "opentelemetry-instrumentation-asgi":
        return _wrap_asgi(app, placement, tracer_provider)
    if placement == "inner":
        app.add_middleware(SpendwatchASGIMiddleware, routes=ROUTES)
        return app
    return SpendwatchASGIMiddleware(app, routes=ROUTES)


def _wrap_asgi(app, placement: str, tracer_provider):
    instrumented = otel_asgi.OpenTelemetryMiddleware
    if placement == "inner":
        return instrumented(SpendwatchASGIMiddleware(app, routes=ROUTES), tracer_provider=tracer_provider)
    return SpendwatchASGIMiddleware(instrumented(app, tracer_provider=tracer_provider), routes=ROUTES)


def flask_app(stub_url: str, instrumentation: str, placement: str, tracer_provider):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub_url, max_retries=0)
    app = flask.Flask(__name__)

    @app.route("/annotate")
    @app.route("/annotate/sync")
    @app.route("/search")
    def plain():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return "ok"

    @app.route("/explicit")
    def explicit():
        with spendwatch.category("handler_choice"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return "ok"

    @app.route("/annotate/stream")
    def stream():
        def body():  # the call comes after the first chunk is sent
            yield "o"
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            yield "k"

        return flask.Response(body())

    return _wrap_wsgi(app.wsgi_app, instrumentation, placement, tracer_provider)


def _wrap_wsgi(app, instrumentation: str, placement: str, tracer_provider):
    instrumented = otel_wsgi.OpenTelemetryMiddleware
    if instrumentation != "opentelemetry-instrumentation-wsgi":
        return SpendwatchWSGIMiddleware(app, routes=ROUTES)
    if placement == "inner":
        return instrumented(SpendwatchWSGIMiddleware(app, routes=ROUTES), tracer_provider=tracer_provider)
    return SpendwatchWSGIMiddleware(instrumented(app, tracer_provider=tracer_provider), routes=ROUTES)


# Django reads its URLs from a module (ROOT_URLCONF): this one. Its views use the client of the app being served.
_django_client: list[openai.OpenAI] = []


def _django_plain(request):
    _django_client[0].chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return HttpResponse("ok")


def _django_explicit(request):
    with spendwatch.category("handler_choice"):
        _django_client[0].chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return HttpResponse("ok")


def _django_stream(request):
    def body():  # the call comes after the first chunk is sent
        yield b"o"
        _django_client[0].chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        yield b"k"

    return StreamingHttpResponse(body())


urlpatterns = [
    url("annotate", _django_plain),
    url("annotate/sync", _django_plain),
    url("search", _django_plain),
    url("explicit", _django_explicit),
    url("annotate/stream", _django_stream),
]


@pytest.fixture
def django_settings() -> Iterator[None]:
    if not settings.configured:
        settings.configure(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["127.0.0.1"],
            MIDDLEWARE=[],
            SECRET_KEY="spendwatch-tests-only",
            SPENDWATCH_ROUTES=ROUTES,
        )
        django.setup()
    yield
    settings.MIDDLEWARE = []


def _django_handler(get_application, stub_url: str, instrumentation: str, placement: str, tracer_provider):
    _django_client[:] = [openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub_url, max_retries=0)]
    if placement == "inner":  # as a Django middleware, after the one DjangoInstrumentor puts first
        settings.MIDDLEWARE = ["spendwatch.middleware.SpendwatchDjangoMiddleware"]
    if instrumentation != "opentelemetry-instrumentation-django":
        return get_application()
    DjangoInstrumentor().instrument(tracer_provider=tracer_provider)
    try:
        return get_application()  # reads MIDDLEWARE now, with the instrumentation's in it
    finally:
        DjangoInstrumentor().uninstrument()


def django_app(stub_url: str, instrumentation: str, placement: str, tracer_provider):
    handler = _django_handler(get_wsgi_application, stub_url, instrumentation, placement, tracer_provider)
    if placement == "inner":
        if instrumentation == "opentelemetry-instrumentation-wsgi":
            return otel_wsgi.OpenTelemetryMiddleware(handler, tracer_provider=tracer_provider)
        return handler
    return _wrap_wsgi(handler, instrumentation, "outer", tracer_provider)


def django_asgi_app(stub_url: str, instrumentation: str, placement: str, tracer_provider):
    handler = _django_handler(get_asgi_application, stub_url, instrumentation, placement, tracer_provider)
    return handler if placement == "inner" else SpendwatchASGIMiddleware(handler, routes=ROUTES)


# --- serving them over HTTP ----------------------------------------------------------------------------------------


@contextmanager
def served_asgi(app) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), SERVER_TIMEOUT, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SERVER_TIMEOUT)


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the standard library's name
        pass


@contextmanager
def served_wsgi(app) -> Iterator[str]:
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SERVER_TIMEOUT)


def ask(base_url: str, path: str, baggage: str | None) -> None:
    headers = {"baggage": baggage} if baggage else {}
    with urllib.request.urlopen(urllib.request.Request(base_url + path, headers=headers), timeout=30) as response:
        assert (response.status, response.read()) == (200, b"ok")


# --- the matrix ----------------------------------------------------------------------------------------------------

ASGI_SETUPS = [
    ("fastapi", "none"),
    ("fastapi", "fastapi-native"),  # FastAPI's own telemetry (0.165+), given a tracer provider
    ("fastapi", "opentelemetry-instrumentation-fastapi"),
    ("fastapi", "opentelemetry-instrumentation-asgi"),
    ("starlette", "none"),
    ("starlette", "opentelemetry-instrumentation-asgi"),
    ("django", "none"),  # Django served over ASGI, its middleware chain async
    ("django", "opentelemetry-instrumentation-django"),
]
WSGI_SETUPS = [
    ("flask", "none"),
    ("flask", "opentelemetry-instrumentation-wsgi"),
    ("django", "none"),
    ("django", "opentelemetry-instrumentation-django"),
    ("django", "opentelemetry-instrumentation-wsgi"),
]
PLACEMENTS = ["outer", "inner"]


# Django over ASGI warns that it reads a sync streaming body in a thread: that is the case tested here.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(("framework", "instrumentation"), ASGI_SETUPS)
def test_asgi_apps_keep_each_requests_category(
    framework, instrumentation, placement, stub, sink, tracer_provider, request
):
    build = {"fastapi": fastapi_app, "starlette": starlette_app, "django": django_asgi_app}[framework]
    if framework == "django":
        request.getfixturevalue("django_settings")
    with served_asgi(build(stub.base_url, instrumentation, placement, tracer_provider)) as base_url:
        _ask_all(base_url, sink)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(("framework", "instrumentation"), WSGI_SETUPS)
def test_wsgi_apps_keep_each_requests_category(
    framework, instrumentation, placement, stub, sink, tracer_provider, request
):
    build: Callable = flask_app
    if framework == "django":
        request.getfixturevalue("django_settings")
        build = django_app
    with served_wsgi(build(stub.base_url, instrumentation, placement, tracer_provider)) as base_url:
        _ask_all(base_url, sink)


def _ask_all(base_url: str, sink) -> None:
    for path, baggage, _ in REQUESTS:
        ask(base_url, path, baggage)
    wait_until(lambda: len(sink.records) >= len(REQUESTS), SERVER_TIMEOUT, "every call's record")
    assert [(path, record.category) for (path, _, _), record in zip(REQUESTS, sink.records, strict=True)] == [
        (path, expected) for path, _, expected in REQUESTS
    ]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_call_made_while_a_body_streams_stays_a_child_of_the_request_span(
    placement, stub, sink, tracer_provider, span_exporter
):
    app = flask_app(stub.base_url, "opentelemetry-instrumentation-wsgi", placement, tracer_provider)
    with served_wsgi(app) as base_url:
        ask(base_url, "/annotate/stream", None)
    wait_until(lambda: len(span_exporter.get_finished_spans()) >= 2, SERVER_TIMEOUT, "the request's spans")

    spans = {span.kind: span for span in span_exporter.get_finished_spans()}
    assert spans[SpanKind.CLIENT].parent.span_id == spans[SpanKind.SERVER].context.span_id
    assert sink.records[0].category == "metabolite_identification"
