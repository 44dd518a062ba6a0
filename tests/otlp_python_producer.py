"""A Python service instrumented by the official OpenTelemetry OpenAI instrumentation (not spendwatch), sending its
spans with the OTLP/HTTP exporter (endpoint, headers and gzip from the standard OTEL_EXPORTER_OTLP_* variables).

Usage: python tests/otlp_python_producer.py <openai base url> <calls>. Prints the GenAI spans it ended, as JSON.
"""

from __future__ import annotations

import json
import sys

import openai
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def main(base_url: str, calls: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "py-producer"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), max_export_batch_size=5))
    sent = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(sent))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    client = openai.OpenAI(api_key="sk-test-not-a-key", base_url=base_url, max_retries=0)
    with provider.get_tracer("py-producer").start_as_current_span("POST /answer"):  # not an LLM call
        for _ in range(calls):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    provider.force_flush()
    finished = sent.get_finished_spans()
    provider.shutdown()
    spans = [
        {
            "trace_id": f"{span.context.trace_id:032x}",
            "span_id": f"{span.context.span_id:016x}",
            "input_tokens": span.attributes["gen_ai.usage.input_tokens"],
            "output_tokens": span.attributes["gen_ai.usage.output_tokens"],
            "model": span.attributes.get("gen_ai.response.model") or span.attributes["gen_ai.request.model"],
        }
        for span in finished
        if "gen_ai.request.model" in (span.attributes or {})
    ]
    print(json.dumps(spans))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
