// A Node.js service that made LLM calls and traces them with the OpenTelemetry JS SDK, sending its spans to
// spendwatch serve with the SDK's OTLP/HTTP exporter. Usage: node app.js <url> <proto|json> <calls> [user:password]
// Prints the GenAI spans it ended, as JSON, for the test to compare with the ledger.
"use strict";
const { TracerProvider, BatchSpanProcessor, SimpleSpanProcessor, InMemorySpanExporter } = require("@opentelemetry/sdk-trace");
const { resourceFromAttributes } = require("@opentelemetry/resources");

const [url, encoding, calls, credentials] = process.argv.slice(2);
const { OTLPTraceExporter } =
  encoding === "proto" ? require("@opentelemetry/exporter-trace-otlp-proto") : require("@opentelemetry/exporter-trace-otlp-http");
const headers = credentials ? { Authorization: "Basic " + Buffer.from(credentials).toString("base64") } : {};
const exporter = new OTLPTraceExporter({ url, headers, compression: "gzip" });
const sent = new InMemorySpanExporter();
const provider = new TracerProvider({
  resource: resourceFromAttributes({ "service.name": "node-producer" }),
  spanProcessors: [
    new BatchSpanProcessor({ exporter, maxExportBatchSize: 7 }),
    new SimpleSpanProcessor({ exporter: sent }),
  ],
});
const tracer = provider.getTracer("node-producer");

async function main() {
  const request = tracer.startSpan("POST /checkout", { attributes: { "http.request.method": "POST" } });
  for (let i = 0; i < Number(calls); i++) {
    const span = tracer.startSpan("chat gpt-4o-mini", { kind: 2 });
    span.setAttributes({
      "gen_ai.operation.name": "chat",
      "gen_ai.provider.name": "openai",
      "gen_ai.request.model": "gpt-4o-mini",
      "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
      "gen_ai.usage.input_tokens": 100 + i,
      "gen_ai.usage.output_tokens": 10 + (i % 7),
    });
    span.end();
    const db = tracer.startSpan("SELECT orders", { attributes: { "db.system.name": "postgresql" } });
    db.end();
  }
  request.end();
  await provider.forceFlush();
  const finished = sent.getFinishedSpans();
  await provider.shutdown();
  const genai = finished.filter((span) => span.attributes["gen_ai.request.model"]);
  const out = genai.map((span) => ({
    trace_id: span.spanContext().traceId,
    span_id: span.spanContext().spanId,
    input_tokens: span.attributes["gen_ai.usage.input_tokens"],
    output_tokens: span.attributes["gen_ai.usage.output_tokens"],
  }));
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
