"""OpenAI-compatible chat completions streaming (OpenAI, vLLM, llama.cpp, LM Studio,
OpenRouter, Ollama's /v1, and the built-in demo)."""

from collections.abc import Iterable, Iterator
from typing import Any

from flask_stopwire.formats.sse import event_data
from flask_stopwire.providers.base import (
    Delta,
    Endpoint,
    Message,
    ProviderCall,
    ProviderStreamError,
    Usage,
    json_object,
)


class OpenAIProvider(Endpoint):
    """Speaks `POST {url}/chat/completions` with `stream: true`."""

    name = "openai"
    prefill = False
    pauses = True

    def build_call(
        self, messages: list[Message], options: dict[str, Any] | None = None
    ) -> ProviderCall:
        """The streaming request, asking for usage in the last chunk; options as they are."""
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **(options or {}),
        }
        return ProviderCall(f"{self.url}/chat/completions", body, headers)

    def parse(self, chunks: Iterable[bytes | None]) -> Iterator[Delta | None]:
        """Deltas from `data:` chunks; `[DONE]` ends the answer; None passed on.

        Its events are told apart by their data alone, so the lighter `event_data`
        reads them (sseclient-py still reads the protocols that name their events).
        """
        saw_finish_reason = False
        for data in event_data(chunks):
            if data is None:
                yield None
                continue
            if data[:1] != "{" and data.strip() == "[DONE]":
                yield Delta(finished=True)
                return
            chunk = json_object(data)
            if "error" in chunk:
                raise ProviderStreamError(_error_text(chunk["error"]))
            text, usage, finish_reason = _chunk_parts(chunk)
            saw_finish_reason = saw_finish_reason or finish_reason
            if text or usage:
                yield Delta(text=text, usage=usage)
        if saw_finish_reason:
            # Some servers end after a finish_reason without sending [DONE].
            yield Delta(finished=True)


def _chunk_parts(chunk: dict) -> tuple[str, Usage | None, bool]:
    try:
        choices = chunk.get("choices") or []
        if len(choices) == 1:  # what every token is: no generators to build
            choice = choices[0]
            text = (choice.get("delta") or {}).get("content") or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            finish_reason = bool(choice.get("finish_reason"))
        else:
            text = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
            finish_reason = any(c.get("finish_reason") for c in choices)
        usage = chunk.get("usage")
        parsed_usage = (
            Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if usage else None
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProviderStreamError(f"unexpected chunk shape: {str(chunk)[:120]}") from exc
    return text, parsed_usage, finish_reason


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
