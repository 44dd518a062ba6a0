"""Bedrock test helpers: the Bedrock stub as a real process, real boto3 clients pointed at a local endpoint, and the
instrumentor wired to the tests' OpenTelemetry pipeline.

    from tests.bedrock import *  # noqa: F403  (fixtures: bedrock_stub, bedrock, instrument_bedrock)
"""

from __future__ import annotations

import sys

import boto3
import pytest
from botocore.config import Config

from spendwatch.instrumentation.bedrock_sdk import BedrockInstrumentor
from tests.servers import LocalServer, http_get, start_on_free_port, start_process

__all__ = [
    "ACCESS_KEY",
    "CACHE_READ",
    "CACHE_WRITE",
    "SECRET_KEY",
    "SESSION_TOKEN",
    "bedrock",
    "bedrock_client",
    "bedrock_stub",
    "instrument_bedrock",
]

# Dummy credentials, distinctive so a test can look for them anywhere they must not be.
ACCESS_KEY = "AKIASPENDWATCHTEST42"
SECRET_KEY = "spendwatch-secret-key-7d1e0c9b4a"
SESSION_TOKEN = "spendwatch-session-token-5f3a8e21"
CACHE_READ, CACHE_WRITE = 3, 2  # what the stub reports for a request that marks a cache point


def bedrock_client(endpoint_url: str, service: str = "bedrock-runtime"):
    """A real boto3 client on ``endpoint_url``: dummy credentials, no retries (a failure is seen at once)."""
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=SESSION_TOKEN,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def bedrock_stub():
    """``python -m spendwatch.demo.bedrock_stub`` as a process of its own, stopped by PID after the module."""

    def start(port: int):
        argv = [sys.executable, "-m", "spendwatch.demo.bedrock_stub", "--port", str(port)]
        argv += ["--cache-read-tokens", str(CACHE_READ), "--cache-write-tokens", str(CACHE_WRITE)]
        return start_process(argv)

    def answers(port: int):
        return lambda: http_get(f"http://127.0.0.1:{port}/", timeout=2)[0] > 0

    process, port = start_on_free_port(start, answers, "the Bedrock stub", timeout=60)
    server = LocalServer(process, port)
    yield server
    server.stop()


@pytest.fixture
def bedrock(bedrock_stub):
    return bedrock_client(bedrock_stub.url)


@pytest.fixture
def instrument_bedrock(tracer_provider, meter_provider, sink):
    instrumentor = BedrockInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
