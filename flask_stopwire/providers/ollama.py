"""Ollama's native chat API (`POST {url}/api/chat`), which streams NDJSON lines."""

from collections.abc import Iterable, Iterator
from typing import Any

from flask_stopwire.providers.base import (
    Delta,
    Endpoint,
    Message,
    ProviderCall,
    ProviderStreamError,
    Usage,
    json_object,
)

# OpenAI's option names in Ollama's `options`; `user` (an end-user tag) has no
# counterpart and changes nothing in the answer, so it is dropped.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}


class OllamaProvider(Endpoint):
    """Speaks `/api/chat`; the final line (`done: true`) carries the token counts."""

    name = "ollama"
    prefill = False
    pauses = True

    def build_call(
        self, messages: list[Message], options: dict[str, Any] | None = None
    ) -> ProviderCall:
        """The streaming request; a key, if set, goes as a bearer token (for proxies)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }
        sampling = {_OPTIONS[k]: v for k, v in (options or {}).items() if k in _OPTIONS}
        if sampling:
            body["options"] = sampling
        return ProviderCall(f"{self.url}/api/chat", body, headers)

    def parse(self, chunks: Iterable[bytes | None]) -> Iterator[Delta | None]:
        """Deltas from each complete line; the `done` line ends the answer; None passed on."""
        for line in _lines(chunks):
            if line is None:
                yield None
                continue
            data = json_object(line)
            if "error" in data:
                raise ProviderStreamError(str(data["error"]))
            text = (data.get("message") or {}).get("content")
            if isinstance(text, str) and text:
                yield Delta(text=text)
            if data.get("done"):
                yield Delta(usage=_usage(data))
                yield Delta(finished=True)
                return


def _lines(chunks: Iterable[bytes | None]) -> Iterator[bytes | None]:
    """Whole non-empty lines, however the chunks split them; None passed on.

    Ollama ends every line with a newline, so a last line without one was cut
    off mid-way: dropped, so the relay reports a disconnect, not a malformed line.
    """
    pending = b""
    for chunk in chunks:
        if chunk is None:
            yield None
            continue
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())


def _usage(data: dict) -> Usage:
    try:
        return Usage(int(data.get("prompt_eval_count", 0)), int(data.get("eval_count", 0)))
    except (TypeError, ValueError) as exc:
        raise ProviderStreamError("unexpected token counts in the final line") from exc
