"""Hostile input never breaks a call, is stored safely and is exported as valid Prometheus exposition.

Three sources of hostile text: what the caller passes (model names, categories, baggage from an incoming request),
what the provider answers (any JSON at all, property-tested with hypothesis through the real SDK), and what the
price file holds.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import spendwatch
import spendwatch.instrumentation
from spendwatch import runtime
from spendwatch.exporter.mapping import MAX_LABEL_LENGTH
from spendwatch.instrumentation import register_sink, unregister_sink
from spendwatch.instrumentation.calls import CATEGORY_BAGGAGE_KEY
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.instrumentation.lightrag_hku import LightRAGInstrumentor
from spendwatch.instrumentation.openai_sdk import OpenAIInstrumentor
from spendwatch.instrumentation.pricing import PriceTable, load_overrides
from tests.conftest import FAKE_API_KEY, CollectingSink

SPENDWATCH = Path(sys.executable).parent / "spendwatch"
# Where spendwatch's instrumentation code really is (the package is mapped from the top-level instrumentation/).
INSTRUMENTATION_DIR = str(Path(spendwatch.instrumentation.__file__).parent) + os.sep
MESSAGES = [{"role": "user", "content": "hello"}]

HOSTILE_MODELS = {
    "label-breaking": 'gpt"} evil{model="x\\y\nz',
    "sql": "gpt-4o'); DROP TABLE calls; --",
    "control": "m\x00o\x07d\x1b[2Je\x7fl\x9b",
    "huge": "g" * 200_000,
    "unicode": "模型-🙂-ünï\u202eRTL",
}


# --- hostile names through the whole pipeline ---------------------------------------------------------------------


@pytest.fixture
def attached(ledger_location, monkeypatch):
    for name in list(os.environ):
        if name.startswith("SPENDWATCH_"):
            monkeypatch.delenv(name)
    instrumented_before = instrumentors_in_use()
    yield spendwatch.configure(ledger=ledger_location, metrics_address="127.0.0.1:0", categories="ok,other-team")
    runtime.detach()
    undo_instrumentation(instrumented_before)


def instrumentors_in_use() -> set[type]:
    return {kind for kind in (OpenAIInstrumentor, LightRAGInstrumentor) if kind().is_instrumented_by_opentelemetry}


def undo_instrumentation(instrumented_before: set[type]) -> None:
    """Uninstrument what configure() instrumented (it instruments every supported library installed)."""
    for kind in {OpenAIInstrumentor, LightRAGInstrumentor} - instrumented_before:
        kind().uninstrument()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def stored_as(text: str) -> str:
    """What the ledger keeps: the text itself, with NUL (which PostgreSQL refuses) as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def make_hostile_calls(client) -> int:
    calls = 0
    for model in HOSTILE_MODELS.values():
        for category in ("ok", 'x"}\n\\', "c" * 10_000):
            with spendwatch.category(category):
                reply = client.chat.completions.create(model=model, messages=MESSAGES)
            assert reply.model == model  # the stub echoes the model: the caller's reply is untouched
            calls += 1
        # Baggage arrives from the outside (a W3C `baggage` header on the app's own incoming request) unvalidated.
        token = context.attach(baggage.set_baggage(CATEGORY_BAGGAGE_KEY, "x'); DELETE FROM totals; --\x00\ud800"))
        try:
            client.embeddings.create(model=model, input="a hostile day")
        finally:
            context.detach(token)
        with spendwatch.track("llm_call", model=model + "\ud800", provider="openai") as op:
            op.set_tokens(input=3, output=4)
        calls += 2
    return calls


def test_hostile_names_never_break_a_call_and_are_stored_exactly(attached, stub):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0)

    calls = make_hostile_calls(client)
    attached.sink.flush()

    assert attached.sink.ledger_errors == 0
    assert attached.ledger.call_count() == calls
    models = {row["model"] for row in attached.ledger.totals()}
    assert {stored_as(model) for model in HOSTILE_MODELS.values()} <= models
    assert stored_as(HOSTILE_MODELS["control"]) + "\ufffd" in models  # the lone surrogate, replaced
    categories = {row["category"] for row in attached.ledger.totals()}
    assert "x'); DELETE FROM totals; --\ufffd\ufffd" in categories


@pytest.mark.parametrize("ledger_location", ["sqlite"], indirect=True)
def test_hostile_names_leave_the_sqlite_ledger_intact(attached, stub, ledger_location):
    make_hostile_calls(openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0))
    attached.sink.flush()

    with sqlite3.connect(ledger_location) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"calls", "totals", "daily_totals"} <= tables


def test_hostile_names_scrape_as_valid_exposition_that_promtool_accepts(attached, stub, promtool_binary):
    make_hostile_calls(openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0))

    exposition = scrape(attached.metrics_server.url)

    checked = subprocess.run([promtool_binary, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]
    labels = [sample.labels for sample in samples if sample.name == "llm_requests_total"]
    assert all(len(value) <= MAX_LABEL_LENGTH for label_set in labels for value in label_set.values())
    assert {label_set["category"] for label_set in labels} <= {"ok", "other"}
    assert 'gpt"} evil{model="x\\y_z' in {label_set["model"] for label_set in labels}
    series = [(sample.name, tuple(sorted(sample.labels.items()))) for sample in samples]
    assert len(series) == len(set(series))


def test_doctor_and_report_survive_hostile_names_and_doctor_prints_no_control_characters(attached, stub):
    make_hostile_calls(openai.OpenAI(api_key=FAKE_API_KEY, base_url=stub.base_url, max_retries=0))
    attached.sink.flush()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPENDWATCH_")}
    environ |= {"SPENDWATCH_LEDGER": attached.settings.ledger, "SPENDWATCH_METRICS_ADDRESS": "off"}

    doctor = subprocess.run([str(SPENDWATCH), "doctor"], env=environ, capture_output=True, text=True, timeout=60)
    report = subprocess.run([str(SPENDWATCH), "report", "--by", "model", "--format", "json"], env=environ,
                            capture_output=True, text=True, timeout=60)  # fmt: skip

    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "warn  unpriced_models" in doctor.stdout
    assert not [char for char in doctor.stdout if ord(char) < 32 and char != "\n" or 0x7F <= ord(char) <= 0x9F]
    assert report.returncode == 0, report.stderr
    assert stored_as(HOSTILE_MODELS["sql"]) in {row["model"] for row in json.loads(report.stdout)["rows"]}


# --- hostile price files ------------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_a_huge_price_file_loads_and_prices_every_model(tmp_path):
    models = {f"model-{index}": {"input_per_mtok": index % 7, "output_per_mtok": 1.5} for index in range(20_000)}
    path = write(tmp_path, "prices.json", json.dumps({"models": models}))

    table = PriceTable(load_overrides(path))

    assert table.lookup("model-19998").input == 6 / 1_000_000
    assert table.lookup("MODEL-12345-2025-01-01").output == 1.5 / 1_000_000


@pytest.mark.parametrize("name", ['a"b\\c', "x'); DROP TABLE calls; --", "tab\there\u0007bell", "}{=,", "模型"])
def test_odd_model_names_in_a_price_file_are_priced_as_written(tmp_path, name):
    path = write(tmp_path, "prices.json", json.dumps({"models": {name: {"input_per_mtok": 2, "output_per_mtok": 4}}}))

    price = PriceTable(load_overrides(path)).lookup(name)

    assert price.cost(input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("prices.toml", '[models."m"]\ninput_per_mtok = nan\noutput_per_mtok = 1\n'),
        ("prices.toml", '[models."m"]\ninput_per_mtok = inf\noutput_per_mtok = 1\n'),
        ("prices.toml", '[models."m"]\ninput_per_mtok = -1\noutput_per_mtok = 1\n'),
        ("prices.toml", '[models."m"]\ninput_per_mtok = "1; DROP TABLE"\noutput_per_mtok = 1\n'),
        ("prices.json", '{"models": {"m": {"input_per_mtok": 1e400, "output_per_mtok": 1}}}'),
        ("prices.toml", '[models."m"]\ninput_per_mtok = 1' + "0" * 4000 + "\noutput_per_mtok = 1\n"),
        ("prices.json", '{"models": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("prices.toml", "x = " + "[" * 100_000 + "]" * 100_000),
        ("prices.toml", b"\xff\xfe\x00garbage\x00" * 1000),
        ("prices.toml", ""),
        ("prices.json", '{"models": {"": {"input_per_mtok": 1, "output_per_mtok": 1}}}'),
    ],
    ids=[
        "nan",
        "inf",
        "negative",
        "text",
        "overflow",
        "int-overflow",
        "deep-json",
        "deep-toml",
        "binary",
        "empty",
        "empty-name",
    ],
)
def test_a_malformed_price_file_is_one_config_error_naming_the_setting(tmp_path, file_name, content):
    path = write(tmp_path, file_name, content)

    with pytest.raises(ConfigError) as error:
        load_overrides(path)

    message = str(error.value)
    assert message.startswith(f"spendwatch: SPENDWATCH_PRICES_FILE={str(path)!r}") and "\n" not in message
    assert len(message) < 1000


# --- inconsistent usage: a part above its whole -------------------------------------------------------------------

PARTS_ABOVE_WHOLE = [
    # (usage the provider reports, (input, output, cached, reasoning) counted)
    pytest.param(
        {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5000}},
        (5000, 10, 5000, 0),
        id="cached-above-prompt",
    ),
    pytest.param(
        {"prompt_tokens": None, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4096}},
        (4096, 10, 4096, 0),
        id="prompt-missing-cached-present",
    ),
    pytest.param(
        {"prompt_tokens": 100, "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 500}},
        (100, 500, 0, 500),
        id="reasoning-above-completion",
    ),
]


def chat_body(usage: dict, stream: bool) -> bytes:
    model = "gpt-4o-mini-2024-07-18"
    if not stream:
        message = {"role": "assistant", "content": "Hello there friend"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": model, "choices": [choice],
                           "usage": usage}).encode()  # fmt: skip
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
    delta = {"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
    events = [chunk | {"choices": [delta]}, chunk | {"choices": [], "usage": usage}]
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events).encode() + b"data: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True], ids=["response", "stream"])
@pytest.mark.parametrize(("usage", "counted"), PARTS_ABOVE_WHOLE)
def test_a_usage_part_above_its_whole_counts_the_whole_as_the_part_estimated_and_never_below_zero(
    usage, counted, stream
):
    client = client_answering(200, chat_body(usage, stream), "text/event-stream" if stream else "application/json")

    with instrumented() as (sink, errors):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
        if stream:
            list(reply)

    (record,) = sink.records
    input_tokens, output_tokens, cached, reasoning = counted
    assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
    assert (record.cache_read_tokens, record.reasoning_tokens) == (cached, reasoning)
    assert record.estimated is True
    assert _spans.get_finished_spans()[0].attributes["spendwatch.cost.estimated"] is True
    price = PriceTable().lookup("gpt-4o-mini-2024-07-18")
    assert record.cost_usd == pytest.approx(price.cost(input_tokens, output_tokens, cached)) and record.cost_usd > 0


# --- malformed provider responses, property-tested ----------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
COUNTS = st.one_of(st.integers(min_value=-3, max_value=10**15), JSON_SCALARS)
USAGE = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"prompt_tokens": COUNTS, "completion_tokens": COUNTS, "total_tokens": COUNTS},
        optional={
            "prompt_tokens_details": st.one_of(JSON, st.fixed_dictionaries({"cached_tokens": COUNTS})),
            "completion_tokens_details": st.one_of(JSON, st.fixed_dictionaries({"reasoning_tokens": COUNTS})),
            "input_tokens": COUNTS,
            "output_tokens": COUNTS,
        },
    ),
)
MESSAGE = st.one_of(JSON, st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(JSON_SCALARS)}))
CHOICE = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"index": COUNTS, "finish_reason": JSON_SCALARS, "message": MESSAGE},
        optional={"delta": st.one_of(JSON, st.fixed_dictionaries({"content": JSON_SCALARS})), "text": JSON_SCALARS},
    ),
)
COMPLETION = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON_SCALARS,
        "object": st.sampled_from(["chat.completion", "chat.completion.chunk", "response", "list"]),
        "created": COUNTS,
        "model": st.one_of(st.text(max_size=30), JSON),
        "choices": st.one_of(st.lists(CHOICE, max_size=3), JSON),
        "usage": USAGE,
        "service_tier": JSON_SCALARS,
        "output": JSON,
        "data": JSON,
        "status": JSON_SCALARS,
    },
)
BODY = st.one_of(
    COMPLETION.map(json.dumps).map(str.encode),
    JSON.map(json.dumps).map(str.encode),
    st.binary(max_size=40),
)
STATUS = st.sampled_from([200, 200, 200, 200, 400, 401, 404, 429, 500])
EVENTS = st.lists(st.one_of(COMPLETION.map(json.dumps), st.text(max_size=20)), max_size=4)

_spans = InMemorySpanExporter()
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(_spans))


def client_answering(status: int, body: bytes, content_type: str = "application/json") -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type, "x-should-retry": "false"})

    transport = httpx2.MockTransport(answer)
    return openai.OpenAI(api_key=FAKE_API_KEY, base_url="http://provider.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=transport))  # fmt: skip


def outcome(call) -> tuple:
    """What the caller sees: ("returned", type, dump) or ("raised", type, message, the exception)."""
    try:
        result = call()
    except Exception as error:  # noqa: BLE001 - any exception is an outcome to compare
        return ("raised", type(error), str(error), error)
    if isinstance(result, openai.Stream):
        return ("streamed", type(result), outcome(lambda: [dump(chunk) for chunk in result])[:3])
    return ("returned", type(result), dump(result))


def dump(value):
    """A comparable form of what the SDK handed back: its fields for a model, else the value itself (``null`` in
    the body comes back as ``None``, a JSON list as a list)."""
    return value.model_dump(warnings=False) if hasattr(value, "model_dump") else value


class _Errors(logging.Handler):
    """Keeps spendwatch's own contained failures (logged at debug), to show that none happened."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def instrumented():
    """The real instrumentation around one call: a sink and a log handler to see what it did, undone afterwards."""
    sink, errors, logger = CollectingSink(), _Errors(), logging.getLogger("spendwatch")
    previous_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(errors)
    register_sink(sink)
    _spans.clear()
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=_tracer_provider, skip_dep_check=True)
    try:
        yield sink, errors
    finally:
        instrumentor.uninstrument()
        unregister_sink(sink)
        logger.removeHandler(errors)
        logger.setLevel(previous_level)


def assert_same_for_the_caller(plain: tuple, traced: tuple) -> None:
    assert traced[:3] == plain[:3]
    if traced[0] == "raised":
        frame = traced[3].__traceback__
        while frame.tb_next is not None:
            frame = frame.tb_next
        assert INSTRUMENTATION_DIR not in frame.tb_frame.f_code.co_filename, "the exception was raised by spendwatch"


def assert_recorded_once(sink: CollectingSink, errors: _Errors) -> None:
    assert len(sink.records) == 1, sink.records
    assert len(_spans.get_finished_spans()) == 1
    assert errors.messages == []


HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(status=STATUS, body=BODY)
def test_a_chat_completion_returns_exactly_what_the_sdk_returns_whatever_the_provider_sends(status, body):
    def call():
        return client_answering(status, body).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    plain = outcome(call)
    with instrumented() as (sink, errors):
        traced = outcome(call)

    assert_same_for_the_caller(plain, traced)
    assert_recorded_once(sink, errors)


@settings(HYPOTHESIS, max_examples=75)
@given(status=STATUS, body=BODY, operation=st.sampled_from(["responses", "embeddings", "completions"]))
def test_other_operations_return_exactly_what_the_sdk_returns(status, body, operation):
    def call():
        client = client_answering(status, body)
        if operation == "responses":
            return client.responses.create(model="gpt-4o-mini", input="hello")
        if operation == "embeddings":
            return client.embeddings.create(model="text-embedding-3-small", input="hello")
        return client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello")

    plain = outcome(call)
    with instrumented() as (sink, errors):
        traced = outcome(call)

    assert_same_for_the_caller(plain, traced)
    assert_recorded_once(sink, errors)


@settings(HYPOTHESIS, max_examples=75)
@given(events=EVENTS, done=st.booleans(), responses=st.booleans())
def test_a_stream_yields_exactly_the_chunks_the_sdk_yields_whatever_the_provider_sends(events, done, responses):
    body = "".join(f"data: {event}\n\n" for event in events) + ("data: [DONE]\n\n" if done else "")

    def call():
        client = client_answering(200, body.encode(), "text/event-stream")
        if responses:
            return client.responses.create(model="gpt-4o-mini", input="hello", stream=True)
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    plain = outcome(call)
    with instrumented() as (sink, errors):
        traced = outcome(call)

    assert traced[0] == plain[0] == "streamed"
    assert traced[2] == plain[2]  # the same chunks, or the same exception (type and message) while reading them
    assert_recorded_once(sink, errors)
