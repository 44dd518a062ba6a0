"""google-genai with spendwatch attached: the budget guard, the ledger, and ``opentelemetry-instrument``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from zoneinfo import ZoneInfo

import pytest
from google.genai import errors

import spendwatch
from spendwatch import runtime
from spendwatch.demo.gemini_stub import GeminiStubServer
from spendwatch.instrumentation.google_genai_sdk import GoogleGenAIInstrumentor
from tests.google_genai_fixtures import GEMINI_API_KEY, make_gemini

PROMPT = "Write one line about OpenTelemetry"


@pytest.fixture
def stub():
    """The stub in this process, so a test can see which requests reached it."""
    with GeminiStubServer() as server:
        yield server


@pytest.fixture
def attach(tmp_path, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_CONFIG", raising=False)

    def configure(**settings):
        defaults = {"ledger": str(tmp_path / "ledger.db"), "metrics_address": "off", "enforce": "block"}
        return spendwatch.configure(**{**defaults, **settings})

    yield configure
    runtime.detach()
    GoogleGenAIInstrumentor().uninstrument()


def test_a_call_that_would_break_the_budget_is_refused_as_an_sdk_error_before_anything_is_sent(attach, stub):
    attached = attach(daily_budget_usd=0.0001)
    gemini = make_gemini(stub.base_url)

    with pytest.raises(errors.APIError) as refused:
        gemini.models.generate_content(model="gemini-2.5-pro", contents=PROMPT, config={"max_output_tokens": 10_000})

    error = refused.value
    assert isinstance(error, spendwatch.BudgetExceededError)
    assert (error.code, error.status, error.budget) == (429, "RESOURCE_EXHAUSTED", "global")
    assert "budget 'global'" in str(error) and error.message == str(error)
    assert stub.requests == []
    attached.sink.flush()
    (total,) = attached.ledger.totals()
    assert (total["blocked"], total["cost_usd"]) == (1, 0)


def test_a_refused_stream_raises_where_the_sdk_would_raise_its_own_error(attach, stub):
    attach(daily_budget_usd=0.0001)
    stream = make_gemini(stub.base_url).models.generate_content_stream(
        model="gemini-2.5-pro", contents=PROMPT, config={"max_output_tokens": 10_000}
    )

    with pytest.raises(spendwatch.BudgetExceededError):
        next(stream)
    assert stub.requests == []


def test_the_guard_bounds_a_call_by_its_max_output_tokens(attach, stub):
    attached = attach(daily_budget_usd=0.001)
    gemini = make_gemini(stub.base_url)

    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT, config={"max_output_tokens": 20})
    with pytest.raises(spendwatch.BudgetExceededError):  # 100k output tokens at $0.40 a million: $0.04
        gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT, config={"max_output_tokens": 100_000})
    gemini.models.count_tokens(model="gemini-2.0-flash", contents=PROMPT)  # free: not a guard decision

    attached.sink.flush()
    assert len(stub.requests) == 2
    assert attached.ledger.guard_decisions() == {("global", "allow"): 1, ("global", "block"): 1}


def test_a_refusal_crosses_processes_whole(attach, stub):
    attach(daily_budget_usd=0.0001)
    with pytest.raises(errors.APIError) as refused:
        make_gemini(stub.base_url).models.generate_content(
            model="gemini-2.5-pro", contents=PROMPT, config={"max_output_tokens": 10_000}
        )

    copy = pickle.loads(pickle.dumps(refused.value))
    assert isinstance(copy, errors.APIError) and isinstance(copy, spendwatch.BudgetExceededError)
    assert (copy.code, str(copy)) == (429, str(refused.value))


APP = textwrap.dedent(
    """
    import os
    from google import genai
    client = genai.Client(http_options={"base_url": os.environ["STUB"], "retry_options": {"attempts": 1}})
    reply = client.models.generate_content(model="gemini-2.0-flash", contents="hello there")
    print("APP-RESULT", reply.text)
    """
)


def test_opentelemetry_instrument_counts_a_gemini_call_in_the_ledger(tmp_path, stub):
    from tests.test_auto_instrumentation import console_spans

    (tmp_path / "app.py").write_text(APP)
    environment = {
        **os.environ,
        "GEMINI_API_KEY": GEMINI_API_KEY,
        "STUB": stub.base_url,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "SPENDWATCH_LEDGER": str(tmp_path / "ledger.db"),
        "SPENDWATCH_METRICS_ADDRESS": "off",
    }
    command = [os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument"), sys.executable, "app.py"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "APP-RESULT This is a test reply" in result.stdout
    (span,) = [span for span in console_spans(result.stdout) if span["name"] == "generate_content gemini-2.0-flash"]
    assert span["attributes"]["gen_ai.provider.name"] == "gcp.gemini"
    assert span["attributes"]["gen_ai.usage.cost"] > 0
    assert GEMINI_API_KEY not in result.stdout + result.stderr
    from spendwatch.exporter import Ledger
    from spendwatch.exporter.ledger import open_backend

    ledger = Ledger(open_backend(str(tmp_path / "ledger.db")), ZoneInfo("UTC"))
    try:
        assert [(row["provider"], row["success"]) for row in ledger.totals()] == [("gcp.gemini", 1)]
    finally:
        ledger.close()
