"""The provider behind an OpenAI SDK client, read from its base URL, names the call and picks the price list.

Each provider is reached by its real base URL (the SDK and spendwatch see it) while the local stub answers; the cost
is checked against genai-prices' own ``calc_price`` for that provider."""

from __future__ import annotations

import openai
import pytest
from openai import _base_client

from tests.charges import client_at, genai_cost_of
from tests.conftest import FAKE_API_KEY

pytestmark = pytest.mark.usefixtures("instrument_openai")

MESSAGES = [{"role": "user", "content": "Which provider answers this?"}]


def one_call(span_exporter, sink):
    (span,) = span_exporter.get_finished_spans()
    (record,) = sink.records
    return span, record


@pytest.mark.parametrize(
    ("base_url", "model", "provider", "genai_provider", "host"),
    [
        ("https://api.deepseek.com", "deepseek-chat", "deepseek", "deepseek", "api.deepseek.com"),
        ("https://api.groq.com/openai/v1", "llama-3.3-70b-versatile", "groq", "groq", "api.groq.com"),
        ("https://api.mistral.ai/v1", "mistral-large-latest", "mistral_ai", "mistral", "api.mistral.ai"),
        ("https://api.x.ai/v1", "grok-4", "x_ai", "x-ai", "api.x.ai"),
        ("https://api.perplexity.ai", "sonar", "perplexity", "perplexity", "api.perplexity.ai"),
        ("https://openrouter.ai/api/v1", "openai/gpt-4o-mini", "openrouter", "openrouter", "openrouter.ai"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "gemini-2.5-flash",
            "gcp.gemini",
            "google",
            "generativelanguage.googleapis.com",
        ),
    ],
)
def test_a_provider_reached_by_its_real_base_url_names_the_call_and_prices_it_by_its_own_list(
    base_url, model, provider, genai_provider, host, stub, span_exporter, sink
):
    client_at(base_url, stub).chat.completions.create(model=model, messages=MESSAGES)

    span, record = one_call(span_exporter, sink)
    assert span.attributes["gen_ai.provider.name"] == record.provider == provider
    assert (span.attributes["server.address"], span.attributes["server.port"]) == (host, 443)
    expected = genai_cost_of(stub.usage_log[0], genai_provider)
    assert expected is not None and expected > 0
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)


def test_a_provider_host_prices_a_model_only_another_provider_lists_as_unpriced(stub, span_exporter, sink):
    # DeepSeek's API serves DeepSeek's models: a model only OpenAI lists is not priced at OpenAI's rate there.
    client_at("https://api.deepseek.com", stub).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span, record = one_call(span_exporter, sink)
    assert record.provider == "deepseek"
    assert span.attributes["spendwatch.pricing"] == "unpriced"
    assert record.cost_usd is None


def test_an_unknown_host_prices_a_model_only_one_provider_lists_by_that_provider(client, stub, span_exporter, sink):
    # The stub on 127.0.0.1 is no provider genai-prices knows: a gateway, a proxy or a local server.
    client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)

    span, record = one_call(span_exporter, sink)
    assert span.attributes["gen_ai.provider.name"] == record.provider == "openai"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", stub.port)
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0], "deepseek"), rel=1e-9)


def test_an_unknown_host_prices_a_model_openai_lists_as_openai(client, stub, span_exporter, sink):
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span, record = one_call(span_exporter, sink)
    assert (span.attributes["server.address"], record.provider) == ("127.0.0.1", "openai")
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0], "openai"), rel=1e-9)


def test_an_unknown_host_leaves_a_model_no_provider_lists_unpriced(client, stub, span_exporter, sink):
    client.chat.completions.create(model="my-local-llama-7b", messages=MESSAGES)

    span, record = one_call(span_exporter, sink)
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["spendwatch.pricing"] == "unpriced"
    assert record.cost_usd is None


def test_a_host_that_only_starts_like_a_providers_is_unknown(stub, span_exporter, sink):
    # genai-prices' URL patterns are unanchored at their end: api.deepseek.com.example.org must not match.
    client_at("https://api.deepseek.com.example.org/v1", stub).chat.completions.create(
        model="deepseek-chat", messages=MESSAGES
    )

    span, record = one_call(span_exporter, sink)
    assert record.provider == "openai"
    assert span.attributes["server.address"] == "api.deepseek.com.example.org"


def test_api_openai_com_is_openai_and_an_azure_host_stays_azure(stub, span_exporter, sink):
    client_at("https://api.openai.com/v1", stub).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    azure = client_at("https://my-resource.openai.azure.com/openai/v1/", stub)
    azure.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    openai_span, azure_span = span_exporter.get_finished_spans()
    assert [record.provider for record in sink.records] == ["openai", "azure.ai.openai"]
    assert openai_span.attributes["server.address"] == "api.openai.com"
    assert azure_span.attributes["server.address"] == "my-resource.openai.azure.com"
    assert all(record.cost_usd > 0 for record in sink.records)


def test_a_provider_prices_embeddings_by_its_own_list_too(stub, span_exporter, sink):
    client = client_at("https://api.mistral.ai/v1", stub)
    client.embeddings.create(model="mistral-embed", input="Which provider embeds this?")

    span, record = one_call(span_exporter, sink)
    assert record.provider == "mistral_ai"
    assert record.cost_usd == pytest.approx(genai_cost_of(stub.usage_log[0], "mistral"), rel=1e-9)


def test_a_port_in_the_base_url_is_the_server_port(stub, span_exporter, sink):
    client = openai.OpenAI(api_key=FAKE_API_KEY, base_url=f"http://localhost:{stub.port}/v1", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    span, _ = one_call(span_exporter, sink)
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("localhost", stub.port)


def test_a_client_whose_base_url_is_set_again_is_named_by_its_new_url(stub, span_exporter, sink):
    client = client_at("https://api.openai.com/v1", stub)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.base_url = "https://api.deepseek.com"
    client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)

    spans = span_exporter.get_finished_spans()
    assert [record.provider for record in sink.records] == ["openai", "deepseek"]
    assert [span.attributes["server.address"] for span in spans] == ["api.openai.com", "api.deepseek.com"]


def test_a_client_class_with_a_base_url_of_its_own_is_named_by_it(stub, span_exporter, sink):
    class RoutedClient(openai.OpenAI):  # a subclass that decides its URL itself, as openai's module-level client does
        route = "https://api.groq.com/openai/v1/"

        @property
        def base_url(self):
            return _base_client.URL(self.route)

        @base_url.setter
        def base_url(self, url) -> None:
            self.route = str(url)

    client = client_at("https://api.openai.com/v1", stub, RoutedClient)
    client.chat.completions.create(model="llama-3.3-70b-versatile", messages=MESSAGES)
    client.route = "https://api.mistral.ai/v1/"
    client.chat.completions.create(model="mistral-large-latest", messages=MESSAGES)

    assert [record.provider for record in sink.records] == ["groq", "mistral_ai"]
    assert all(record.cost_usd > 0 for record in sink.records)


def test_the_module_level_client_is_named_by_openai_base_url(stub, span_exporter, sink, monkeypatch):
    monkeypatch.setattr(openai, "api_key", FAKE_API_KEY)
    monkeypatch.setattr(openai, "max_retries", 0)
    monkeypatch.setattr(openai, "http_client", client_at("https://api.openai.com/v1", stub)._client)
    monkeypatch.setattr(openai, "_client", None)  # built afresh from the settings above, dropped after the test
    monkeypatch.setattr(openai, "base_url", "https://api.deepseek.com")
    openai.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
    monkeypatch.setattr(openai, "base_url", "https://api.x.ai/v1")
    openai.chat.completions.create(model="grok-4", messages=MESSAGES)

    assert [record.provider for record in sink.records] == ["deepseek", "x_ai"]
