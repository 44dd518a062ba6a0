"""Regenerate ``instrumentation/pricing/max_output_tokens.json`` from LiteLLM's MIT-licensed model table.

    pip download --no-deps litellm==X -d /tmp/litellm && unzip -o /tmp/litellm/*.whl \\
        'litellm/model_prices_and_context_window_backup.json' -d /tmp/litellm
    python scripts/vendor_max_output_tokens.py /tmp/litellm/litellm/model_prices_and_context_window_backup.json X

Keeps the text-generating models' maximum output tokens, keyed by the lower-case model name without any provider
prefix ("azure/gpt-4o" → "gpt-4o"): under "models" the largest value any provider lists for the name (a bound
whichever provider serves it), under "providers" a provider's own value where it is smaller (by the semantic
conventions' provider names: deepseek's own deepseek-chat stops at 8192 tokens, a reseller's copy of it does not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_MODES = ("chat", "completion", "responses")
# LiteLLM provider → the semantic conventions' name, for the providers spendwatch names.
_PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex_ai-language-models": "gcp.vertex_ai",
    "vertex_ai-anthropic_models": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "cohere_chat": "cohere",
    "perplexity": "perplexity",
}
_TARGET = Path(__file__).resolve().parent.parent / "instrumentation" / "pricing" / "max_output_tokens.json"


def trimmed(table: dict) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The largest maximum per name, and each named provider's own where it is below that."""
    models: dict[str, int] = {}
    own: dict[str, dict[str, int]] = {}
    for key, entry in table.items():
        if not isinstance(entry, dict) or entry.get("mode") not in _MODES:
            continue
        limit = entry.get("max_output_tokens") or entry.get("max_tokens")
        if type(limit) is not int or limit <= 0:
            continue
        name = key.rsplit("/", 1)[-1].lower()
        models[name] = max(models.get(name, 0), limit)
        provider = _PROVIDERS.get(entry.get("litellm_provider"))
        if provider is not None:
            listed = own.setdefault(provider, {})
            listed[name] = max(listed.get(name, 0), limit)
    providers = {
        provider: dict(sorted((name, limit) for name, limit in listed.items() if limit < models[name]))
        for provider, listed in sorted(own.items())
    }
    return dict(sorted(models.items())), {provider: listed for provider, listed in providers.items() if listed}


def main(source: str, version: str) -> None:
    models, providers = trimmed(json.loads(Path(source).read_text(encoding="utf-8")))
    document = {
        "source": f"litellm {version}, model_prices_and_context_window.json (max_output_tokens)",
        "license": "MIT, Copyright (c) 2023 Berri AI; see max_output_tokens.LICENSE",
        "models": models,
        "providers": providers,
    }
    _TARGET.write_text(json.dumps(document, indent=0, sort_keys=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
