"""Anthropic Messages streaming (`POST {url}/messages` with `stream: true`)."""

from collections.abc import Iterable, Iterator
from typing import Any

from flask_stopwire.formats.sse import events
from flask_stopwire.providers.base import (
    Delta,
    Endpoint,
    Message,
    ProviderCall,
    ProviderStreamError,
    UnsupportedOption,
    Usage,
    json_object,
)

API_VERSION = "2023-06-01"
MAX_TOKENS = 4096


class AnthropicProvider(Endpoint):
    """Speaks the Messages API; system turns become its top-level `system` field."""

    name = "anthropic"
    prefill = True  # a final assistant turn is continued natively
    pauses = False  # its named events go through sseclient-py, which cannot pause

    def build_call(
        self, messages: list[Message], options: dict[str, Any] | None = None
    ) -> ProviderCall:
        """The streaming request with the key in `x-api-key`."""
        headers = {"anthropic-version": API_VERSION, "Accept": "text/event-stream"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        body: dict = {
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "messages": [
                {"role": m.role, "content": m.content} for m in messages if m.role != "system"
            ],
        }
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        if system:
            body["system"] = system
        for name, value in (options or {}).items():
            body.update(_option(name, value))
        return ProviderCall(f"{self.url}/messages", body, headers)

    def parse(self, chunks: Iterable[bytes]) -> Iterator[Delta]:
        """Deltas from the typed events; `message_stop` ends the answer."""
        prompt_tokens = completion_tokens = 0
        for event in events(chunks):
            data = json_object(event.data)
            kind = data.get("type") or event.event
            if kind == "message_start":
                usage = (data.get("message") or {}).get("usage") or {}
                prompt_tokens = _count(usage, "input_tokens", prompt_tokens)
            elif kind == "content_block_delta":
                text = (data.get("delta") or {}).get("text")
                if isinstance(text, str) and text:
                    yield Delta(text=text)
            elif kind == "message_delta":
                completion_tokens = _count(data.get("usage") or {}, "output_tokens", 0)
                yield Delta(usage=Usage(prompt_tokens, completion_tokens))
            elif kind == "message_stop":
                yield Delta(finished=True)
                return
            elif kind == "error":
                error = data.get("error") or {}
                raise ProviderStreamError(str(error.get("message") or error or "error event"))
            # ping, content_block_start/stop and future event types carry no text.


def _option(name: str, value: Any) -> dict[str, Any]:
    """One OpenAI-named option in the Messages API's terms."""
    if name in ("temperature", "top_p", "max_tokens"):
        return {name: value}
    if name == "max_completion_tokens":
        return {"max_tokens": value}
    if name == "stop":
        return {"stop_sequences": value}
    if name == "user":
        return {"metadata": {"user_id": value}}
    raise UnsupportedOption("anthropic", name)


def _count(usage: dict, key: str, default: int) -> int:
    try:
        return int(usage.get(key, default))
    except (TypeError, ValueError) as exc:
        raise ProviderStreamError(f"unexpected usage shape: {usage!r:.120}") from exc
