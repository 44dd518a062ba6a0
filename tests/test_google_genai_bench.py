"""bench.google_genai: its mock transport serves the real SDK, and its report divides by the lightest peer."""

from __future__ import annotations

from bench import google_genai


def outcome(chat: float, stream: float, spans: float = 1.0) -> dict:
    return {
        "ok": True,
        "version": "1.0",
        "kinds": ["chat", "stream"],
        "instructions": {"chat": chat, "stream": stream},
        "spans_per_call": {"chat": spans, "stream": spans},
    }


def test_the_mock_transport_answers_the_real_sdk_with_usage_on_the_last_chunk():
    client = google_genai.make_client()

    whole = client.models.generate_content(model=google_genai.MODEL, contents="Say this is a test")
    chunks = list(client.models.generate_content_stream(model=google_genai.MODEL, contents="Say this is a test"))

    assert whole.usage_metadata.candidates_token_count == 24
    assert len(chunks) == 24 and chunks[-1].usage_metadata.prompt_token_count == 12
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])


def test_the_report_divides_spendwatch_by_the_lightest_peer():
    outcomes = {
        "bare": outcome(1_000_000, 2_000_000, spans=0),
        "official": outcome(1_300_000, 2_600_000),
        "openllmetry": outcome(1_200_000, 2_500_000),
        "spendwatch": outcome(1_050_000, 2_100_000),
        "missing": {"ok": False, "error": "ImportError: nope"},
    }

    report = google_genai.markdown(outcomes, "python -m bench.google_genai", 10)

    chat = next(line for line in report.splitlines() if line.startswith("| generate_content |"))
    assert chat.split(" | ")[2:] == ["300.0 k", "200.0 k", "50.0 k", "0.25 |"]
    assert "- missing: ImportError: nope" in report
