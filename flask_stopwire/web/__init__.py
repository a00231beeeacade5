"""Thin blueprints: the chat/stop API, conversations, the OpenAI-compatible /v1, metrics,
and the OpenAPI document that describes them all."""
