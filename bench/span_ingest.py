"""In-process span ingestion (SPENDWATCH_INGEST_SPANS=on): what spendwatch's span processor adds per span over the
OpenTelemetry SDK's own span work, for a GenAI span another instrumentation made (read, priced, journaled by the real
ledger sink) and for a span that is not a GenAI call (passed over).

Each round times a batch of spans made and ended on a TracerProvider with a no-op exporter behind a
SimpleSpanProcessor (the SDK's own cost), with and without the ingest processor; the rounds alternate, and the
report gives medians and quartiles in µs per span and the ratio. The table goes to stdout and to
``bench/results/span_ingest.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from bench import fill_defaults, publish, spread
from spendwatch.exporter.ledger import open_backend
from spendwatch.exporter.ledger.ledger import Ledger
from spendwatch.exporter.sink import LedgerSink
from spendwatch.exporter.spans.processor import SpanIngestProcessor
from spendwatch.instrumentation.pricing import PriceTable

_FULL = {"rounds": 15, "spans": 5000}
_QUICK = {"rounds": 5, "spans": 1000}
# What the official OpenAI instrumentation puts on a chat span (opentelemetry-instrumentation-openai-v2).
GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-1",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 24,
}
HTTP = {"http.request.method": "GET", "url.full": "http://127.0.0.1/orders", "http.response.status_code": 200}


class _Discard(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def _provider(processor=None) -> TracerProvider:
    provider = TracerProvider()
    if processor is not None:
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    return provider


def _per_span_us(provider: TracerProvider, attributes: dict, spans: int) -> float:
    tracer = provider.get_tracer("bench.other_instrumentation")
    started = time.perf_counter()
    for _ in range(spans):
        tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=attributes).end()
    return (time.perf_counter() - started) / spans * 1e6


def _measure(rounds: int, spans: int) -> dict[str, list[float]]:
    directory = tempfile.mkdtemp(prefix="spendwatch-bench-span-ingest-")
    ledger = Ledger(open_backend(os.path.join(directory, "ledger.db")), ZoneInfo("UTC"))
    sink = LedgerSink(ledger, os.path.join(directory, "journal"))
    sdk, ingesting = _provider(), _provider(SpanIngestProcessor(sink, PriceTable()))
    results: dict[str, list[float]] = {key: [] for key in ("sdk genai", "ingest genai", "sdk other", "ingest other")}
    for provider, attributes in ((sdk, GENAI), (ingesting, GENAI), (sdk, HTTP), (ingesting, HTTP)):
        _per_span_us(provider, attributes, spans // 10)  # warm-up: prices cached, journal file created
    for _ in range(rounds):
        for kind, attributes in (("genai", GENAI), ("other", HTTP)):
            results[f"sdk {kind}"].append(_per_span_us(sdk, attributes, spans))
            results[f"ingest {kind}"].append(_per_span_us(ingesting, attributes, spans))
    sink.close()
    ledger.close()
    return results


def _markdown(meta: str, results: dict[str, list[float]]) -> str:
    lines = [
        "# In-process span ingestion: cost per span over the SDK's own",
        "",
        meta,
        "",
        "| span | SDK alone (µs/span) | with the ingest processor (µs/span) | added (µs/span) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, label in (("genai", "GenAI chat span (priced, journaled)"), ("other", "non-GenAI span (passed over)")):
        base, q1, q3 = spread(results[f"sdk {kind}"])
        with_ingest, w1, w3 = spread(results[f"ingest {kind}"])
        lines.append(
            f"| {label} | {base:.2f} ({q1:.2f}–{q3:.2f}) | {with_ingest:.2f} ({w1:.2f}–{w3:.2f}) "
            f"| {with_ingest - base:.2f} | {with_ingest / base:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace, argv: list[str]) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    command = " ".join(["python -m bench.span_ingest", *argv])
    return f"`{command}` — {date}, {machine}; medians (quartiles) of {args.rounds} rounds of {args.spans} spans."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.span_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{_QUICK['rounds']} rounds of {_QUICK['spans']} spans")
    parser.add_argument("--rounds", type=int, help=f"default {_FULL['rounds']}")
    parser.add_argument("--spans", type=int, help=f"spans per round, default {_FULL['spans']}")
    args = fill_defaults(parser.parse_args(argv), _FULL, _QUICK)
    path = publish("span_ingest.md", _markdown(_meta(args, argv), _measure(args.rounds, args.spans)))
    print(f"(written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
