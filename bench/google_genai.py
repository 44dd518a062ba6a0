"""``python -m bench.google_genai [--quick] [--calls N]``: the CPU instructions each google-genai instrumentation adds
to a ``generate_content`` call and to a stream, side by side with the peers that install.

The same measure as :mod:`bench.instructions` (valgrind's callgrind, the caller's thread, the garbage collector
paused, bare subtracted), over the real SDK served by an in-process mock transport: canned Gemini API bodies with
usage, built once, so each call costs the SDK's parsing and the instrumentation's work, never a socket. Peers: the
official ``opentelemetry-instrumentation-google-genai`` and OpenLLMetry's ``-google-generativeai`` (which also covers
google-genai). OpenLIT is left out, as for OpenAI (see ``bench/variants.py``). The report goes to
``bench/results/google-genai-instructions.md``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import fill_defaults, publish, report
from bench.instructions import _CALLGRIND, _no_address_randomisation, _thousands, _total

__all__ = ["main"]

_FULL = {"calls": 100, "warmup": 30}
_QUICK = {"calls": 20, "warmup": 10}
MODEL = "gemini-2.0-flash"
_WORDS = [f"word{index}" for index in range(24)]  # one streamed chunk each
_USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 24,
    "totalTokenCount": 36,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 24}],
}
# (name, module, instrumentor class, distribution); bare and spendwatch first.
_VARIANTS = (
    ("bare", None, None, "google-genai"),
    ("official", "opentelemetry.instrumentation.google_genai", "GoogleGenAiSdkInstrumentor",
     "opentelemetry-instrumentation-google-genai"),
    ("openllmetry", "opentelemetry.instrumentation.google_generativeai", "GoogleGenerativeAiInstrumentor",
     "opentelemetry-instrumentation-google-generativeai"),
    ("spendwatch", "spendwatch.instrumentation.google_genai_sdk", "GoogleGenAIInstrumentor", "spendwatch"),
)  # fmt: skip
_PEERS = ("official", "openllmetry")


def _response(text: str, usage: dict | None) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0, "finishReason": "STOP"}
    body = {"candidates": [candidate], "modelVersion": MODEL, "responseId": "bench"}
    if usage:
        body["usageMetadata"] = usage
    return body


def _bodies() -> tuple[bytes, bytes]:
    whole = json.dumps(_response(" ".join(_WORDS), _USAGE)).encode()
    events = [_response(word, _USAGE if index == len(_WORDS) - 1 else None) for index, word in enumerate(_WORDS)]
    return whole, b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in events)


def make_client():
    """A Gemini API client whose HTTP requests are answered in process by canned bodies."""
    import httpx
    from google import genai

    whole, stream = _bodies()

    def answer(request: httpx.Request) -> httpx.Response:
        if b"streamGenerateContent" in request.url.raw_path:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=whole)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    options = {"base_url": "https://generativelanguage.googleapis.com/", "httpx_client": http}
    return genai.Client(api_key="bench-key", http_options=options)


def _kinds(client) -> dict:
    def generate():
        return client.models.generate_content(model=MODEL, contents="Say this is a test")

    def stream():
        for _ in client.models.generate_content_stream(model=MODEL, contents="Say this is a test"):
            pass

    return {"chat": generate, "stream": stream}


def _setup(name: str):
    from bench.variants import setup as otel_setup

    exporter, _ = otel_setup("bare")  # the same OpenTelemetry SDK for every variant; the instrumentor comes next
    _, module, class_name, distribution = next(variant for variant in _VARIANTS if variant[0] == name)
    if module is not None:
        instrumentor = getattr(importlib.import_module(module), class_name)()
        instrumentor.instrument()
    from importlib.metadata import version

    return exporter, version(distribution)


def _serve(name: str, calls: int, warmup: int, result: Path) -> None:
    try:
        exporter, version = _setup(name)
    except Exception as exc:  # noqa: BLE001 - not installed, or broken against this SDK
        result.write_text(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return
    kinds, spans = _kinds(make_client()), {}
    for kind, call in kinds.items():
        for _ in range(warmup):
            call()
        gc.collect()
        gc.disable()
        before = exporter.spans
        os.sched_yield()  # callgrind zeroes its counters here
        for _ in range(calls):
            call()
        os.getppid()  # and dumps them here
        gc.enable()
        spans[kind] = (exporter.spans - before) / calls
    result.write_text(json.dumps({"ok": True, "version": version, "kinds": list(kinds), "spans_per_call": spans}))


def _count(name: str, calls: int, warmup: int, prefix: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="spendwatch-bench-google-") as tmp:
        out, result = Path(tmp, "callgrind.out"), Path(tmp, "result.json")
        command = [sys.executable, "-m", "bench.google_genai", "--worker", name, "--result", str(result)]
        command += ["--calls", str(calls), "--warmup", str(warmup)]
        environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        finished = subprocess.run(
            [*prefix, *_CALLGRIND, f"--callgrind-out-file={out}", *command],
            env={**environment, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if not result.exists():
            raise RuntimeError(f"{name} under callgrind exited with {finished.returncode}: {finished.stderr[-2000:]}")
        outcome = json.loads(result.read_text())
        if outcome["ok"]:
            dumps = sorted(Path(tmp).glob("callgrind.out.*-01"), key=lambda dump: int(dump.name.split(".")[2][:-3]))
            totals = [_total(dump) for dump in dumps]
            outcome["instructions"] = {kind: t / calls for kind, t in zip(outcome["kinds"], totals, strict=True)}
        return outcome


def markdown(outcomes: dict[str, dict], command: str, calls: int) -> str:
    bare = outcomes["bare"]["instructions"]
    present = [name for name, outcome in outcomes.items() if outcome["ok"] and name != "bare"]

    def over_bare(name: str, kind: str) -> float | None:
        if outcomes[name]["spans_per_call"][kind] <= 0:
            return None  # the variant made no span for this kind
        return outcomes[name]["instructions"][kind] - bare[kind]

    header = ["kind", "bare per call", *[f"{name} over bare" for name in present], "spendwatch ÷ lightest peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, label in (("chat", "generate_content"), ("stream", "generate_content_stream (24 chunks)")):
        added = {name: over_bare(name, kind) for name in present}
        peers = [added[name] for name in _PEERS if added.get(name) is not None]
        lightest = min(peers) if peers else None
        cells = [label, _thousands(bare[kind]), *[_thousands(added[name]) for name in present]]
        lines.append("| " + " | ".join([*cells, report.ratio(added.get("spendwatch"), lightest)]) + " |")
    versions = ", ".join(f"{name} {outcome['version']}" for name, outcome in outcomes.items() if outcome["ok"])
    missing = [f"- {name}: {outcome['error']}" for name, outcome in outcomes.items() if not outcome["ok"]]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# spendwatch: instructions per call over the bare google-genai SDK",
            "",
            f"`{command}` — {when}; {calls} counted calls per kind, caller's thread, garbage collector paused.",
            "",
            "Instructions the caller's thread executes per call (valgrind's callgrind), minus the bare call's; "
            "thousands. Not a time: see `bench/instructions.py` for what the count does and does not show.",
            "",
            *lines,
            "",
            f"Versions: {versions}",
            *(["", "Not available:", *missing] if missing else []),
            "",
        ]
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.google_genai", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per kind")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = fill_defaults(parser.parse_args(argv), _FULL, _QUICK)
    if args.worker:
        _serve(args.worker, args.calls, args.warmup, args.result)
        return
    prefix = _no_address_randomisation()
    outcomes = {name: _count(name, args.calls, args.warmup, prefix) for name, *_ in _VARIANTS}
    if not outcomes["bare"]["ok"]:
        sys.exit(f"the bare SDK does not run: {outcomes['bare']['error']}")
    text = markdown(outcomes, " ".join(["python -m bench.google_genai", *argv]), args.calls)
    publish("google-genai-instructions.md", text)


if __name__ == "__main__":
    main(sys.argv[1:])
