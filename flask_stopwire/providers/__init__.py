"""Providers behind one interface, chosen by name from a plain registry."""

from flask_stopwire.providers.anthropic import AnthropicProvider
from flask_stopwire.providers.base import Provider
from flask_stopwire.providers.ollama import OllamaProvider
from flask_stopwire.providers.openai import OpenAIProvider

# The demo provider is a simulated model that speaks the OpenAI protocol (flask_stopwire/demo).
PROVIDERS: dict[str, type] = {
    "demo": OpenAIProvider,
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
}

DEFAULT_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "ollama": "http://127.0.0.1:11434",
}

DEFAULT_MODELS = {
    "demo": "stopwire-demo",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "ollama": "llama3.2",
}


def make_provider(name: str, url: str, api_key: str, model: str) -> Provider:
    """Build the named provider; unknown names raise ValueError."""
    try:
        cls = PROVIDERS[name]
    except KeyError:
        choices = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; choose one of {choices}") from None
    return cls(url or DEFAULT_URLS.get(name, ""), api_key, model or DEFAULT_MODELS[name])
