"""The OTLP intake's workers: ``spendwatch serve`` hands bodies to processes of its own to read and price, stores what
they return exactly as it stores what it reads itself, replaces a worker that dies without losing an export, and
leaves no worker behind when it stops or is killed."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.otlp_intake import JSON, PROTOBUF, Serve, chat_span, json_body, ledger_calls, post, protobuf_body
from tests.servers import wait_until
from tests.test_otlp_intake import dialect_spans


@pytest.fixture
def started():
    servers: list[Serve] = []
    yield servers
    for server in servers:
        server.kill()


def serve_with(started: list[Serve], ledger: Path, workers: int) -> Serve:
    server = Serve(str(ledger), SPENDWATCH_INTAKE_WORKERS=str(workers))
    started.append(server)
    return server


def intake_workers(serve_pid: int) -> set[int]:
    """The live worker processes of a serve: its children started by multiprocessing's spawn (not its resource
    tracker, nor a worker that has exited and not been reaped)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == serve_pid and fields[0] != "Z" and b"spawn_main" in command:
            found.add(int(stat.parent.name))
    return found


def is_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def exports() -> list[tuple[bytes, str]]:
    """Every dialect in both encodings; a batch with spans rejected for their ids; a retry of the first."""
    no_span_id = chat_span(8)
    no_span_id.span_bytes = b"\x01\x02\x03"
    return [
        (protobuf_body(dialect_spans()), PROTOBUF),
        (json_body([chat_span(11, "gpt-4o", 70, 9), chat_span(12, "no-such-model-xyz")], service="search"), JSON),
        (protobuf_body([chat_span(13), no_span_id], service=None), PROTOBUF),
        (protobuf_body(dialect_spans()), PROTOBUF),
    ]


def test_spans_a_worker_reads_are_recorded_exactly_as_serve_records_the_spans_it_reads_itself(started, tmp_path):
    by_worker = serve_with(started, tmp_path / "by-worker.db", 1)
    by_serve = serve_with(started, tmp_path / "by-serve.db", 0)
    answers = {}
    for server in (by_worker, by_serve):
        answers[server] = [post(server.url, body, content_type) for body, content_type in exports()]
        answers[server].append(post(server.url, b"{not json", JSON))
        answers[server].append(post(server.url, b"\xff\xff\xff\xff garbage", PROTOBUF))
    (worker,) = intake_workers(by_worker.process.pid)
    assert intake_workers(by_serve.process.pid) == set()
    logged = by_worker.stop()
    by_serve.stop()

    assert "read in serve's process" not in logged  # the worker read every export
    assert is_gone(worker)  # a clean stop takes its workers with it
    read_by_worker, read_by_serve = answers[by_worker], answers[by_serve]
    assert [(a.status, a.body) for a in read_by_worker] == [(a.status, a.body) for a in read_by_serve]
    assert [a.status for a in read_by_worker] == [200, 200, 200, 200, 400, 400]
    assert ExportTraceServiceResponse.FromString(read_by_worker[2].body).partial_success.rejected_spans == 1
    assert "not JSON" in json.loads(read_by_worker[4].body)["message"]
    calls = ledger_calls(str(tmp_path / "by-worker.db"))
    assert len(calls) == 6  # three dialects, two JSON calls (one unpriced), one of the third batch; the retry adds none
    assert calls == ledger_calls(str(tmp_path / "by-serve.db"))


def test_a_killed_worker_is_replaced_and_no_export_is_lost(started, tmp_path):
    server = serve_with(started, tmp_path / "ledger.db", 1)
    assert post(server.url, protobuf_body([chat_span(1)])).status == 200
    (first,) = intake_workers(server.process.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: is_gone(first), 10, "the killed worker gone")

    # Read in serve's own process while the dead worker is found out, then by a new worker.
    assert post(server.url, protobuf_body([chat_span(2)])).status == 200
    assert post(server.url, protobuf_body([chat_span(3)])).status == 200
    (second,) = intake_workers(server.process.pid)
    assert post(server.url, protobuf_body([chat_span(4)])).status == 200
    logged = server.stop()

    assert second != first
    assert "an OTLP intake worker stopped; this export is read in serve's process" in logged
    assert [call["span_id"] for call in ledger_calls(server.ledger)] == [f"{n:016x}" for n in (1, 2, 3, 4)]


def test_a_killed_serve_leaves_no_worker_behind(started, tmp_path):
    server = serve_with(started, tmp_path / "ledger.db", 1)
    assert post(server.url, protobuf_body([chat_span(1)])).status == 200
    (worker,) = intake_workers(server.process.pid)
    server.process.kill()
    server.process.wait()

    wait_until(lambda: is_gone(worker), 15, "the worker of a killed serve gone")


def test_a_serve_that_takes_no_spans_starts_no_worker(started, tmp_path):
    server = serve_with(started, tmp_path / "ledger.db", 1)
    metrics = server.url.removesuffix("/v1/traces") + "/metrics"
    with urllib.request.urlopen(metrics, timeout=30) as response:
        assert response.status == 200
    assert intake_workers(server.process.pid) == set()
    server.stop()


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_a_bad_worker_count_fails_at_start_up_naming_the_setting(tmp_path, value):
    with pytest.raises(AssertionError, match=f"SPENDWATCH_INTAKE_WORKERS='{value}'"):
        Serve(str(tmp_path / "ledger.db"), SPENDWATCH_INTAKE_WORKERS=value)


def test_a_worker_prices_with_serves_prices_file_and_serve_reads_itself_when_no_worker_can_start(started, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."house-model"]\ninput_per_mtok = 2\noutput_per_mtok = 10\n')
    with_file = Serve(
        str(tmp_path / "read-by-worker.db"), SPENDWATCH_INTAKE_WORKERS="1", SPENDWATCH_PRICES_FILE=str(prices)
    )
    started.append(with_file)
    assert post(with_file.url, protobuf_body([chat_span(1, "house-model", 1000, 100)])).status == 200
    assert len(intake_workers(with_file.process.pid)) == 1
    assert "read in serve's process" not in with_file.stop()

    # The file is gone when the first export comes: no worker can load the prices serve started with.
    later = Serve(str(tmp_path / "read-by-serve.db"), SPENDWATCH_INTAKE_WORKERS="1", SPENDWATCH_PRICES_FILE=str(prices))
    started.append(later)
    prices.unlink()
    assert post(later.url, protobuf_body([chat_span(1, "house-model", 1000, 100)])).status == 200
    # The next export finds the failed start out, however long the worker took to fail.
    wait_until(lambda: not intake_workers(later.process.pid), 30, "the worker that could not start gone")
    assert post(later.url, protobuf_body([chat_span(2, "house-model", 1000, 100)])).status == 200
    assert "OTLP intake workers could not start" in later.stop()

    expected = 1000 * 2e-6 + 100 * 10e-6
    (call,) = ledger_calls(str(tmp_path / "read-by-worker.db"))
    assert call["cost_usd"] == pytest.approx(expected, rel=1e-12)
    calls = ledger_calls(str(tmp_path / "read-by-serve.db"))
    assert [call["cost_usd"] for call in calls] == pytest.approx([expected, expected], rel=1e-12)
