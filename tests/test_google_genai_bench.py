"""bench.google_genai: its mock transport serves the real SDK, and each variant makes one span per call."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import ROOT, google_genai


def test_the_mock_transport_answers_the_real_sdk_with_usage_on_the_last_chunk():
    client = google_genai.make_client()

    whole = client.models.generate_content(model=google_genai.MODEL, contents="Say this is a test")
    chunks = list(client.models.generate_content_stream(model=google_genai.MODEL, contents="Say this is a test"))

    assert whole.usage_metadata.candidates_token_count == google_genai.CHUNKS
    assert len(chunks) == google_genai.CHUNKS and chunks[-1].usage_metadata.prompt_token_count == 12
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])


def test_spendwatch_makes_one_span_per_kind_of_call(tmp_path):
    result = tmp_path / "result.json"
    worker = ["-m", "bench.google_genai", "--worker", "spendwatch", "--result", str(result), "--calls", "2"]

    subprocess.run([sys.executable, *worker, "--warmup", "1"], check=True, timeout=120, cwd=ROOT)

    outcome = json.loads(result.read_text())
    assert outcome["spans_per_call"] == {"generate_content": 1.0, "generate_content_stream": 1.0}
