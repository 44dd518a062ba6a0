"""Which provider an Anthropic SDK client talks to: ``aws.bedrock`` for ``AnthropicBedrock``, ``gcp.vertex_ai`` for
``AnthropicVertex``, else ``anthropic``. Asked on every call, so the answer is kept per client class."""

from __future__ import annotations

from typing import Any

__all__ = ["provider_of"]

_PROVIDER_BY_CLIENT_NAME = {
    "AnthropicBedrock": "aws.bedrock",
    "AsyncAnthropicBedrock": "aws.bedrock",
    "AnthropicVertex": "gcp.vertex_ai",
    "AsyncAnthropicVertex": "gcp.vertex_ai",
}
_provider_by_client_type: dict[type, str] = {}


def provider_of(resource: Any) -> str:
    """The GenAI provider name of the client behind an SDK resource (``client.messages``, say)."""
    client_type = type(getattr(resource, "_client", None))
    provider = _provider_by_client_type.get(client_type)
    if provider is None:
        names = (base.__name__ for base in client_type.__mro__)
        provider = next((_PROVIDER_BY_CLIENT_NAME[n] for n in names if n in _PROVIDER_BY_CLIENT_NAME), "anthropic")
        _provider_by_client_type[client_type] = provider
    return provider
