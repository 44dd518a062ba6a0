"""Which provider an OpenAI SDK client talks to: ``azure.ai.openai`` for Azure OpenAI, else ``openai``.

Asked on every call, so the answer is kept per client base URL object.
"""

from __future__ import annotations

from typing import Any

__all__ = ["provider_of"]

# Azure OpenAI's hosts: Microsoft's v1 API is reached with the plain OpenAI client, base_url ".../openai/v1/".
_AZURE_OPENAI_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_MAX_CACHED_PROVIDERS = 1024
# The provider by id() of a client's base URL object, with that object and the client's type: a client keeps its URL
# object until its base_url is set again, and the entry holds the object, so the id cannot be reused meanwhile.
_provider_by_url_id: dict[int, tuple[Any, type, str]] = {}


def provider_of(resource: Any) -> str:
    """The GenAI provider name of the client behind an SDK resource (``client.chat.completions``, say)."""
    client = getattr(resource, "_client", None)
    url = getattr(client, "_base_url", None)
    known = _provider_by_url_id.get(id(url))
    if known is not None and known[0] is url and known[1] is type(client):
        return known[2]
    return _remember_provider(client, url)


def _remember_provider(client: Any, url: Any) -> str:
    """``azure.ai.openai`` for an Azure client class, or any client whose base URL is an Azure OpenAI host."""
    client_type = type(client)
    host = getattr(url, "host", None)
    is_azure = any(base.__name__ in ("AzureOpenAI", "AsyncAzureOpenAI") for base in client_type.__mro__) or (
        isinstance(host, str) and host.lower().endswith(_AZURE_OPENAI_HOSTS)
    )
    provider = "azure.ai.openai" if is_azure else "openai"
    if len(_provider_by_url_id) >= _MAX_CACHED_PROVIDERS:  # clients made per request: keep it bounded
        _provider_by_url_id.clear()
    _provider_by_url_id[id(url)] = (url, client_type, provider)
    return provider
