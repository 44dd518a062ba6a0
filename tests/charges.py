"""What a call should cost, as genai-prices itself computes it (``genai_prices.calc_price``: never numbers from
spendwatch's own pricing code), and an OpenAI client that keeps a provider's real base URL while the local stub
answers it.

    client = client_at("https://api.deepseek.com", stub)  # the SDK, and so spendwatch, sees api.deepseek.com
    client.chat.completions.create(model="deepseek-chat", messages=...)
    genai_cost_of(stub.usage_log[0], "deepseek")  # USD, or None when genai-prices has no price
"""

from __future__ import annotations

import re

import openai
from genai_prices import Usage, calc_price
from openai import _base_client

from spendwatch.demo.stub import ReportedUsage, StubServer
from tests.conftest import FAKE_API_KEY

__all__ = ["UNIT_KEYS", "client_at", "genai_cost", "genai_cost_of", "recorded_tokens"]

# openai 3.x sends through httpx2, older releases through httpx.
_httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx

# spendwatch's unit names (calls.Usage.units) → genai-prices' usage keys, for the units genai-prices prices.
UNIT_KEYS = {
    "web_search_calls": "web_searches",
    "file_search_calls": "storage_searches",
    "code_interpreter_sessions": "code_executions",
}
_ENDPOINT = re.compile(r"/(?:chat/completions|completions|embeddings|responses)/?$")


def genai_cost(model: str, provider_id: str, *, units: dict | None = None, **tokens: int) -> float | None:
    """USD genai-prices charges for ``tokens`` (its usage keys: input_tokens, cache_write_tokens, ...) and
    ``units`` (spendwatch's names) of ``model`` at ``provider_id``; None when it has no price for the model."""
    values = {key: value for key, value in tokens.items() if value}
    values |= {UNIT_KEYS[name]: count for name, count in (units or {}).items() if name in UNIT_KEYS}
    try:
        return float(calc_price(Usage(**values), model, provider_id=provider_id).total_price)
    except LookupError:
        return None


def genai_cost_of(
    reported: ReportedUsage, provider_id: str = "openai", *, model: str | None = None, units: dict | None = None
) -> float | None:
    """The genai-prices cost of what the stub reported for one call."""
    return genai_cost(
        model or reported.model,
        provider_id,
        units=units,
        input_tokens=reported.input_tokens,
        output_tokens=reported.output_tokens,
        cache_read_tokens=reported.cached_tokens,
        cache_write_tokens=reported.cache_write_tokens,
        input_audio_tokens=reported.input_audio_tokens,
        output_audio_tokens=reported.output_audio_tokens,
        input_image_tokens=reported.input_image_tokens,
    )


def recorded_tokens(usage: dict) -> dict[str, int]:
    """genai-prices' usage keys from a ``usage`` object as the API sent it (chat, embeddings or Responses naming)."""
    responses = "input_tokens" in usage
    input_details = usage.get("input_tokens_details" if responses else "prompt_tokens_details") or {}
    output_details = usage.get("output_tokens_details" if responses else "completion_tokens_details") or {}
    return {
        "input_tokens": usage["input_tokens" if responses else "prompt_tokens"],
        "output_tokens": usage.get("output_tokens" if responses else "completion_tokens") or 0,
        "cache_read_tokens": input_details.get("cached_tokens") or 0,
        "cache_write_tokens": input_details.get("cache_write_tokens") or 0,
        "input_audio_tokens": input_details.get("audio_tokens") or 0,
        "input_image_tokens": input_details.get("image_tokens") or 0,
        "output_audio_tokens": output_details.get("audio_tokens") or 0,
        "output_image_tokens": output_details.get("image_tokens") or 0,
    }


class _ToStub(_httpx.HTTPTransport):
    """Delivers every request to the local stub's endpoint of the same name, whatever URL the SDK addressed."""

    def __init__(self, stub: StubServer) -> None:
        super().__init__()
        self._stub_base = stub.base_url

    def handle_request(self, request):
        request.url = _httpx.URL(self._stub_base + _ENDPOINT.search(request.url.path).group())
        return super().handle_request(request)


def client_at(base_url: str, stub: StubServer, client_class: type = openai.OpenAI) -> openai.OpenAI:
    """A real SDK client on ``base_url`` (the URL it and spendwatch see) whose requests the stub answers."""
    return client_class(
        api_key=FAKE_API_KEY, base_url=base_url, max_retries=0, http_client=_httpx.Client(transport=_ToStub(stub))
    )
