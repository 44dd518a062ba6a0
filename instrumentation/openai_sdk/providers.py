"""Which provider an OpenAI SDK client talks to, and whose price list prices its calls.

The provider is read from the client's base URL: Azure OpenAI's hosts (or an Azure client class) are
``azure.ai.openai``; a host genai-prices knows by its API URL pattern is that provider (``deepseek``, ``groq``,
``openrouter``, ``gcp.gemini``, ...); ``api.openai.com`` is ``openai``. Any other host (a corporate gateway, a proxy,
a local test server, a self-hosted model) is ``openai`` priced as ``openai-compatible``: OpenAI's price when OpenAI
lists the model, else that of the one provider that lists it. Asked on every call, so the answer is kept per client
base URL object, with the ``server.address`` / ``server.port`` span attributes of the endpoint.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from spendwatch.instrumentation.pricing.bundled import provider_at

__all__ = ["OPENAI_COMPATIBLE", "Endpoint", "endpoint_of"]

OPENAI_COMPATIBLE = "openai-compatible"  # the price provider of a host no provider claims (see PriceTable)
# Azure OpenAI's hosts: Microsoft's v1 API is reached with the plain OpenAI client, base_url ".../openai/v1/".
_AZURE_OPENAI_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_AZURE_CLIENTS = ("AzureOpenAI", "AsyncAzureOpenAI")
# Google's OpenAI-compatible endpoints: Vertex AI's; genai-prices' google pattern (any googleapis.com) is Gemini's.
_VERTEX_AI_HOST = "aiplatform.googleapis.com"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_CACHED_ENDPOINTS = 1024


class Endpoint(NamedTuple):
    """What a call learns from its client: the provider (``gen_ai.provider.name``), whose price list prices it
    (None: the provider's own) and the span attributes naming the server (never to be modified: shared)."""

    provider: str
    price_provider: str | None
    attributes: dict


_UNKNOWN = Endpoint("openai", None, {})
# The endpoint by id() of a client's base URL object, with that object and the client's type: a client keeps its URL
# object until its base_url is set again, and the entry holds the object, so the id cannot be reused meanwhile.
_endpoint_by_url_id: dict[int, tuple[Any, type, Endpoint]] = {}


# The field an OpenAI client keeps its base URL in (openai 2.x on; older releases keep it in ``_base_url`` itself).
_URL_FIELD = "_configured_base_url"
# Client types whose base URL is read from that field (True) or through the ``_base_url`` property (False). The
# property runs two more getters, one of them with an import statement inside: ~12 k instructions on every call.
_plain_url_types: dict[type, bool] = {}


def _sdk_url_getters() -> frozenset:
    """The SDK's own base-URL getters, each of which returns the client's ``_configured_base_url`` field."""
    try:
        import openai
        from openai._base_client import BaseClient
    except ImportError:
        return frozenset()
    properties = [
        getattr(owner, name, None)
        for owner in (BaseClient, openai.OpenAI, openai.AsyncOpenAI)
        for name in ("_base_url", "base_url")
    ]
    return frozenset(prop.fget for prop in properties if isinstance(prop, property))


_SDK_URL_GETTERS = _sdk_url_getters()


def _learn_url_type(client: Any) -> bool:
    """Whether a client of this type keeps its base URL where the SDK's getters read it: no subclass on the way
    overrides them (the module-level client reads ``openai.base_url``), and they return the field for this client."""
    client_type = type(client)
    getters = (getattr(client_type, "_base_url", None), getattr(client_type, "base_url", None))
    try:
        plain = (
            all(isinstance(getter, property) and getter.fget in _SDK_URL_GETTERS for getter in getters)
            and client.__dict__.get(_URL_FIELD) is getattr(client, "_base_url", None) is not None
        )
    except Exception:  # noqa: BLE001 - a client of an unexpected shape: read it the slow way
        plain = False
    _plain_url_types[client_type] = plain
    return plain


def endpoint_of(resource: Any) -> Endpoint:
    """The endpoint of the client behind an SDK resource (``client.chat.completions``, say)."""
    client = getattr(resource, "_client", None)
    client_type = type(client)
    plain = _plain_url_types.get(client_type)
    if plain is None:
        plain = _learn_url_type(client)
    url = client.__dict__.get(_URL_FIELD) if plain else None
    if url is None:
        url = getattr(client, "_base_url", None)
    known = _endpoint_by_url_id.get(id(url))
    if known is not None and known[0] is url and known[1] is client_type:
        return known[2]
    return _remember_endpoint(client, url)


def _remember_endpoint(client: Any, url: Any) -> Endpoint:
    client_type = type(client)
    try:
        endpoint = _endpoint(client_type, url)
    except Exception:  # noqa: BLE001 - a URL of an unexpected shape: the call is still counted, as OpenAI's
        endpoint = _UNKNOWN
    if len(_endpoint_by_url_id) >= _MAX_CACHED_ENDPOINTS:  # clients made per request: keep it bounded
        _endpoint_by_url_id.clear()
    _endpoint_by_url_id[id(url)] = (url, client_type, endpoint)
    return endpoint


def _endpoint(client_type: type, url: Any) -> Endpoint:
    host = getattr(url, "host", None)
    host = host.lower() if isinstance(host, str) else ""
    attributes = _server_attributes(url, host)
    if any(base.__name__ in _AZURE_CLIENTS for base in client_type.__mro__) or host.endswith(_AZURE_OPENAI_HOSTS):
        return Endpoint("azure.ai.openai", None, attributes)
    if host.endswith(_VERTEX_AI_HOST):
        return Endpoint("gcp.vertex_ai", None, attributes)
    provider = provider_at(str(url)) if host else None
    if provider is None:
        return Endpoint("openai", OPENAI_COMPATIBLE, attributes)
    return Endpoint(provider, None, attributes)


def _server_attributes(url: Any, host: str) -> dict:
    if not host:
        return {}
    port = getattr(url, "port", None)
    if type(port) is not int:
        port = _DEFAULT_PORTS.get(getattr(url, "scheme", None))
    return {"server.address": host} if port is None else {"server.address": host, "server.port": port}
