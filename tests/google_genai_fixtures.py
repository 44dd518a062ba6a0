"""Fixtures for the google-genai tests: the Gemini stub as a process of its own, clients of both APIs, the instrumentor.

Import them into a test module with ``from tests.google_genai_fixtures import *  # noqa: F403``.
"""

from __future__ import annotations

import sys

import pytest
from google import genai
from google.oauth2.credentials import Credentials

from spendwatch.demo.processes import http_get, start_on_free_port, start_process
from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor

__all__ = ["GEMINI_API_KEY", "gemini", "gemini_stub", "instrument_google_genai", "make_gemini", "make_vertex", "vertex"]

GEMINI_API_KEY = "AIzaSy-spendwatch-test-key-5e1d07"
VERTEX_TOKEN = "ya29.spendwatch-test-token-b7c2"
_READY_TIMEOUT = 60.0  # seconds; generous for a loaded two-core machine


@pytest.fixture(scope="session")
def gemini_stub(tmp_path_factory):
    """``python -m spendwatch.demo.gemini_stub`` on a free port; yields its origin, stopped by PID at the end."""
    log = tmp_path_factory.mktemp("gemini-stub") / "stub.log"

    def launch(port: int):
        return start_process([sys.executable, "-m", "spendwatch.demo.gemini_stub", "--port", str(port)], log_path=log)

    def answers(port: int):
        return lambda: http_get(f"http://127.0.0.1:{port}/", timeout=2)[0] == 404

    process, port = start_on_free_port(launch, answers, "the Gemini stub", _READY_TIMEOUT)
    yield f"http://127.0.0.1:{port}/"
    process.stop()


def make_gemini(base_url: str) -> genai.Client:
    """A Gemini API client (an API key) that never retries."""
    options = {"base_url": base_url, "retry_options": {"attempts": 1}}
    return genai.Client(api_key=GEMINI_API_KEY, http_options=options)


def make_vertex(base_url: str) -> genai.Client:
    """A Vertex AI client with a project, a location and a fixed OAuth token (nothing is refreshed)."""
    options = {"base_url": base_url, "retry_options": {"attempts": 1}}
    credentials = Credentials(token=VERTEX_TOKEN)
    return genai.Client(
        vertexai=True, project="test-project", location="us-central1", credentials=credentials, http_options=options
    )


@pytest.fixture
def gemini(gemini_stub):
    return make_gemini(gemini_stub)


@pytest.fixture
def vertex(gemini_stub):
    return make_vertex(gemini_stub)


@pytest.fixture
def instrument_google_genai(tracer_provider, meter_provider, sink):
    instrumentor = GoogleGenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield instrumentor
    instrumentor.uninstrument()
