"""ASGI and WSGI middleware: each request's LLM calls carry the route's (or the caller's baggage) category."""

from __future__ import annotations

import io
import wsgiref.util

import openai
import pytest

from spendwatch.middleware import RouteCategories, SpendwatchASGIMiddleware, SpendwatchWSGIMiddleware
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")
ROUTES = {"/annotate": "metabolite_identification", "/annotate/batch": "batch_annotation", "/": "other_pages"}


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/annotate", None, "metabolite_identification"),
        ("/annotate/123", None, "metabolite_identification"),
        ("/annotate/batch/7", None, "batch_annotation"),
        ("/annotated", None, "other_pages"),
        ("/", None, "other_pages"),
    ],
)
def test_longest_route_prefix_wins(path, header, expected):
    assert RouteCategories(ROUTES).category(path, header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("spendwatch.category=literature_review", "literature_review"),
        ("other=1,spendwatch.category=genomics", "genomics"),
        ("spendwatch.category=bad%20value%3B", "other"),
        ("garbage;;;", None),
        (None, None),
    ],
)
def test_incoming_baggage_names_the_category_when_no_route_does(header, expected):
    assert RouteCategories({}).category("/anything", header) == expected


async def test_asgi_requests_attribute_their_llm_calls(stub, sink):
    client = openai.AsyncOpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)

    async def app(scope, receive, send):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = SpendwatchASGIMiddleware(app, routes={"/annotate": "metabolite_identification"})
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    async def serve(path: str, headers: list):
        await wrapped({"type": "http", "path": path, "headers": headers}, receive, send)

    await serve("/annotate/42", [])
    await serve("/search", [(b"baggage", b"spendwatch.category=literature_review")])
    await serve("/search", [])

    assert [record.category for record in sink.records] == ["metabolite_identification", "literature_review", None]
    assert sent[0]["status"] == 200


def test_wsgi_requests_attribute_their_llm_calls(stub, sink):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)

    def app(environ, start_response):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = SpendwatchWSGIMiddleware(app, routes={"/search": "literature_review"})

    def request(path: str, **headers) -> bytes:
        environ = {"PATH_INFO": path, "wsgi.input": io.BytesIO(), **headers}
        wsgiref.util.setup_testing_defaults(environ)
        return b"".join(wrapped(environ, lambda status, headers: None))

    assert request("/search/papers") == b"ok"
    request("/other", HTTP_BAGGAGE="spendwatch.category=genomics")

    assert [record.category for record in sink.records] == ["literature_review", "genomics"]
